"""Physics: peptides from sequence, force fields, exact batched energies, MD and parallel tempering.

Units throughout: coordinates in nm, energies in kJ/mol, temperatures in K, time in ps.
"""
