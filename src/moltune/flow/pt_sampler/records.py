"""What a flow-PT run writes besides the ``moltune.physics.ptdata`` layout, and its one reader.

``sampler.json`` (flow, swap plan, CPU time of every call), ``chunks/flowswap_NNNNNN.npz`` (one
row per production swap attempt: event, time_ps, i, j, kind (``plan.KIND_*``), log_alpha D,
accepted, nonfinite; flow, energy and move CPU seconds and flow calls of the chunk) and
``sampler_stats.json`` (``analysis.sampler_statistics``). A record file belongs to the chunk of
the same number: records of chunks past the run's ``n_chunks`` are from an interrupted chunk and
are ignored, and removed on resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moltune.common.io import save_npz, write_json

SAMPLER_FILE = "sampler.json"
STATS_FILE = "sampler_stats.json"
RECORD_PREFIX = "flowswap_"
RECORD_KEYS = ("event", "time_ps", "i", "j", "kind", "log_alpha", "accepted", "nonfinite")
CPU_KEYS = ("flow_cpu_s", "energy_cpu_s", "move_cpu_s", "flow_calls")

__all__ = ["RECORD_KEYS", "SAMPLER_FILE", "STATS_FILE", "SwapRecords", "read_records"]


@dataclass
class SwapRecords:
    """The attempt records and CPU counters of the chunk being run (one file per chunk)."""

    rows: dict[str, list] = field(default_factory=lambda: {k: [] for k in RECORD_KEYS})
    flow_cpu_s: float = 0.0
    energy_cpu_s: float = 0.0
    move_cpu_s: float = 0.0
    flow_calls: int = 0

    def add(self, event, t_ps, i, j, kind, d, ok, bad) -> None:
        for key, v in zip(RECORD_KEYS, (event, t_ps, i, j, kind, d, int(ok), bool(bad))):
            self.rows[key].append(v)

    def save(self, out: str | Path, chunk_index: int) -> None:
        """Write the chunk's record file (atomic)."""
        rows = self.rows
        save_npz(
            _chunk_dir(out) / f"{RECORD_PREFIX}{chunk_index:06d}.npz",
            event=np.asarray(rows["event"], np.int64),
            time_ps=np.asarray(rows["time_ps"], np.float64),
            i=np.asarray(rows["i"], np.int16),
            j=np.asarray(rows["j"], np.int16),
            kind=np.asarray(rows["kind"], np.int8),
            log_alpha=np.asarray(rows["log_alpha"], np.float64),
            accepted=np.asarray(rows["accepted"], np.int8),
            nonfinite=np.asarray(rows["nonfinite"], bool),
            flow_cpu_s=np.float64(self.flow_cpu_s),
            energy_cpu_s=np.float64(self.energy_cpu_s),
            move_cpu_s=np.float64(self.move_cpu_s),
            flow_calls=np.int64(self.flow_calls),
        )


def _chunk_dir(out: str | Path) -> Path:
    return Path(out) / "chunks"


def _record_files(out: str | Path) -> list[tuple[int, Path]]:
    return [(int(p.stem[len(RECORD_PREFIX) :]), p)
            for p in sorted(_chunk_dir(out).glob(f"{RECORD_PREFIX}*.npz"))]  # fmt: skip


def _n_chunks(out: Path) -> int:
    from moltune.physics.ptdata import STATE_FILE

    return int(np.load(out / STATE_FILE)["n_chunks"]) if (out / STATE_FILE).is_file() else 0


def drop_stale_records(out: str | Path) -> None:
    """Remove the record files of chunks the run's state does not include (an interrupted one)."""
    n_chunks = _n_chunks(Path(out))
    for index, p in _record_files(out):
        if index >= n_chunks:
            p.unlink()


def read_records(out_dir: str | Path) -> dict[str, np.ndarray]:
    """All production swap-attempt records of a flow run (empty arrays for a plain run)."""
    out = Path(out_dir)
    n_chunks = _n_chunks(out)
    parts = []
    for index, p in _record_files(out):
        if index < n_chunks:
            with np.load(p) as z:
                parts.append({k: z[k] for k in z.files})
    if not parts:
        empty = {k: np.zeros(0) for k in RECORD_KEYS}
        return {**empty, "flow_cpu_s": 0.0, "energy_cpu_s": 0.0, "move_cpu_s": 0.0,
                "flow_calls": 0}  # fmt: skip
    rec = {k: np.concatenate([p[k] for p in parts]) for k in RECORD_KEYS}
    for k in CPU_KEYS:
        rec[k] = float(sum(float(p.get(k, 0.0)) for p in parts))
    return rec


def read_sampler_meta(out_dir: str | Path) -> dict | None:
    """``sampler.json`` of a run (None when the run has none: plain PT from ``pt simulate``)."""
    path = Path(out_dir) / SAMPLER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_sampler_meta(out_dir: str | Path, meta: dict) -> None:
    write_json(Path(out_dir) / SAMPLER_FILE, meta)


def annotate_metadata(out: Path, meta: dict) -> None:
    """Record the sampler in metadata.json (its swap_scheme describes the plain swap otherwise)."""
    from moltune.physics.ptdata import METADATA_FILE

    md = json.loads((out / METADATA_FILE).read_text())
    md["sampler"] = {k: meta.get(k) for k in ("format", "flow", "flow_name", "plan", "skip_every",
                                              "swap_scheme")}  # fmt: skip
    write_json(out / METADATA_FILE, md)
