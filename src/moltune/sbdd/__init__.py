"""Pocket-conditioned ligand diffusion (DiffSBDD-compatible) with a FiLM adapter."""
