"""moltune: train molecular generative models and check, with physics, chemistry and statistics,
whether they work.

Subpackages: ``physics`` (peptides, energies, MD / parallel tempering), ``flow`` (temperature
transport flows), ``sbdd`` (pocket-conditioned ligand diffusion), ``validation`` (monitors,
diagnosis, statistics), ``common`` (run folders, configs, atomic I/O) and ``cli``.
"""

__version__ = "0.1.0"
