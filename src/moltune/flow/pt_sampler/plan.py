"""The swap plan of a flow-PT run: which temperature pairs swap through the flow, and how.

A neighbour pair the flow serves is tried as a flow swap, one it does not serve as the plain
swap; a skip pair (i, j > i + 1) must be served by the flow. The attempt kinds recorded on disk
(``records``) are the ``KIND_*`` codes.
"""

from __future__ import annotations

from numbers import Integral

from moltune.common.errors import InvalidInputError, UserError

KIND_PLAIN, KIND_FLOW, KIND_SKIP = 0, 1, 2
KIND_NAMES = {KIND_PLAIN: "plain", KIND_FLOW: "flow", KIND_SKIP: "skip"}
TEMP_TOL_K = 1e-6

__all__ = ["KIND_FLOW", "KIND_NAMES", "KIND_PLAIN", "KIND_SKIP", "check_skip_every", "plan_swaps"]


def _same(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= TEMP_TOL_K


def plan_swaps(
    temperatures_K: list[float],
    flow_info: dict | None,
    skip_pairs: list[tuple[int, int]] = (),
    has_flow: bool = True,
) -> dict[tuple[int, int], str]:
    """Which pairs go through the flow: {(i, j): "trained" | "conditional" | "any" | "plain"}.

    ``flow_info`` is ``load_flow``'s info (``temperatures_K`` and trained index ``pairs``); None
    means a flow meant for every pair (identity, a test flow): "any". A pair is "trained" when
    its temperatures are a trained pair's; "conditional" when the flow was trained on several
    pairs (temperature-conditioned) and both temperatures lie in its training range. Neighbour
    pairs the flow does not serve are "plain"; a skip pair it does not serve is an error.
    """
    k = len(temperatures_K)
    plan: dict[tuple[int, int], str] = {}
    trained: list[tuple[float, float]] = []
    lo = hi = None
    if flow_info is not None:
        t = [float(v) for v in flow_info.get("temperatures_K", [])]
        trained = [(t[a], t[b]) for a, b in flow_info.get("pairs", [])]
        lo, hi = (min(t), max(t)) if t else (None, None)

    def served(i: int, j: int) -> str:
        if not has_flow:
            return "plain"
        if flow_info is None:
            return "any"
        ti, tj = temperatures_K[i], temperatures_K[j]
        if any(_same(ti, a) and _same(tj, b) for a, b in trained):
            return "trained"
        if len(trained) > 1 and lo is not None and lo - TEMP_TOL_K <= ti and tj <= hi + TEMP_TOL_K:
            return "conditional"
        return "plain"

    for i in range(k - 1):
        plan[(i, i + 1)] = served(i, i + 1)
    for i, j in skip_pairs:
        i, j = int(i), int(j)
        if not 0 <= i < j < k or j == i + 1:
            raise InvalidInputError(
                f"skip pair ({i}, {j}) must be two temperature indices i < j - 1 of a ladder of {k}"
            )
        how = served(i, j)
        if how == "plain":
            raise UserError(
                f"the flow is not trained for the skip {temperatures_K[i]:g} <-> "
                f"{temperatures_K[j]:g} K (trained pairs: {trained or 'none'}); a plain swap there "
                "is almost never accepted"
            )
        plan[(i, j)] = how
    return plan


def check_skip_every(skip_every: int) -> int:
    """The skip period in swap events: a whole number >= 1."""
    if isinstance(skip_every, bool) or not isinstance(skip_every, Integral) or skip_every < 1:
        raise InvalidInputError(
            f"skip_every (--skip-every) must be a whole number of swap events >= 1, got {skip_every!r}"
        )
    return int(skip_every)
