"""YAML presets shipped with moltune (loaded by name through ``moltune.common.config``)."""
