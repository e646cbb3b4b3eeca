"""Element vocabulary of the published DiffSBDD CrossDocked full-atom checkpoint.

Ten columns, the same for ligand and pocket atoms, with **no** "other" column (the original
full-atom preprocessing writes eleven, which the released checkpoint cannot take).
"""

from __future__ import annotations

ELEMENTS: tuple[str, ...] = ("C", "N", "O", "S", "B", "Br", "Cl", "P", "I", "F")
ELEMENT_INDEX: dict[str, int] = {e: i for i, e in enumerate(ELEMENTS)}
N_ELEMENTS = len(ELEMENTS)
