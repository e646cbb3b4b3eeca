"""Flow-enhanced parallel tempering of a peptide: OpenMM replicas, swaps through a transport flow.

Why in ``moltune.flow`` and not ``moltune.physics``: the sampler needs both the OpenMM replica
exchange (physics) and the flows, and flow already depends on physics; here that stays one
direction. The generic batched core ``moltune.flow.sampler.FlowPT`` serves toy systems with
torch propagators; this package drives OpenMM replicas and the on-disk PT layout, with the same
acceptance from ``moltune.flow.swaps``. One module per concern (as openmmtools separates its
multistate sampler, reporter and analyzer):

- ``plan``: which pairs swap through the flow (:func:`plan_swaps`), attempt kinds;
- ``move``: the swap move called at every swap event (:class:`FlowSwapMove`);
- ``run``: running and resuming a run (:func:`sample`, ``moltune pt sample``);
- ``records``: ``sampler.json`` and the per-chunk attempt records, and their one reader;
- ``analysis``: walker history, round trips, acceptance, ESS (:func:`sampler_statistics`);
- ``plots``: ``plots/sampler.png``;
- ``compare``: plain PT vs flow-PT for equal CPU (:func:`compare_samplers`).

The transfer table lives in ``moltune.flow.transfer``, flows from a ``--flow`` spec in
``moltune.flow.rebuild``; both are re-exported here under their former names.
"""

from __future__ import annotations

from moltune.flow.pt_sampler.analysis import (
    BATCH_PS,
    advance_round_trips,
    batch_means_rate,
    count_round_trips,
    observable_series,
    sampler_statistics,
    walker_history,
)
from moltune.flow.pt_sampler.compare import compare_samplers, render_comparison
from moltune.flow.pt_sampler.move import VELOCITY_MODES, FlowSwapMove
from moltune.flow.pt_sampler.plan import KIND_FLOW, KIND_NAMES, KIND_PLAIN, KIND_SKIP, plan_swaps
from moltune.flow.pt_sampler.records import RECORD_KEYS, SAMPLER_FILE, STATS_FILE, read_records
from moltune.flow.pt_sampler.run import flow_fingerprint, sample
from moltune.flow.rebuild import load_sampler_flow, run_flow_factory
from moltune.flow.transfer import render_transfer, transfer_table

_batch_means_rate = batch_means_rate  # its name before the split (tests import it)

__all__ = [
    "BATCH_PS",
    "KIND_FLOW",
    "KIND_NAMES",
    "KIND_PLAIN",
    "KIND_SKIP",
    "RECORD_KEYS",
    "SAMPLER_FILE",
    "STATS_FILE",
    "VELOCITY_MODES",
    "FlowSwapMove",
    "advance_round_trips",
    "compare_samplers",
    "count_round_trips",
    "flow_fingerprint",
    "load_sampler_flow",
    "observable_series",
    "plan_swaps",
    "read_records",
    "render_comparison",
    "render_transfer",
    "run_flow_factory",
    "sample",
    "sampler_statistics",
    "transfer_table",
    "walker_history",
]
