"""Shared infrastructure: atomic file writes, typed configs with YAML presets, run folders."""
