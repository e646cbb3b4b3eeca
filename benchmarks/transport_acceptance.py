"""Held-out swap acceptance of transport-flow presets, side by side on the same pairs.

    python benchmarks/transport_acceptance.py --data-root data --out runs/acceptance \\
        [--presets aa_300_450_spline aa_300_450 aa_ladder] [--pairs 0-1 1-2 2-3 0-3] \\
        [--max-minutes 15]

Each preset is trained with ``moltune pt train --preset NAME --data-root ROOT`` into
``OUT/NAME`` (a folder that already holds a run is kept as it is), then every pair is evaluated
on the preset's own test data with ``moltune pt evaluate`` (10,000 pairs; a pair already
evaluated is read back). Prints the flow and naive acceptance with 95% intervals and the Jeffreys
divergence (kT) per preset and pair; the rare-basin split of an evaluation is
``benchmarks/rare_basin_swaps.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moltune.cli.main import main as moltune


def _pair(text: str) -> tuple[int, int]:
    i, j = text.split("-")
    return int(i), int(j)


def _train(preset: str, root: str, run: Path, max_minutes: float | None) -> None:
    if (run / "checkpoints" / "last.ckpt").is_file():
        return
    argv = ["pt", "train", "--preset", preset, "--data-root", root, "--out", str(run)]
    if max_minutes is not None:
        argv += ["--max-minutes", str(max_minutes)]
    if moltune(argv) != 0:
        raise SystemExit(f"training {preset} failed")


def _evaluate(run: Path, test_dir: Path, pair: tuple[int, int]) -> dict:
    out = run / f"eval_{pair[0]}_{pair[1]}"
    if not (out / "metrics.json").is_file():
        argv = ["pt", "evaluate", str(run), "--data", str(test_dir), "--pair", *map(str, pair),
                "--out", str(out)]  # fmt: skip
        if moltune(argv) != 0:
            raise SystemExit(f"evaluating {run} on pair {pair} failed")
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, help="folder the presets' data folders are in")
    ap.add_argument("--out", required=True, help="one run folder per preset goes here")
    ap.add_argument("--presets", nargs="+", default=["aa_300_450_spline", "aa_300_450"])
    ap.add_argument("--pairs", nargs="+", type=_pair, default=[(0, 1)], help="I-J temperature indices")
    ap.add_argument("--max-minutes", type=float, help="training wall-clock limit per preset")
    args = ap.parse_args()

    from moltune.common.config import load_config
    from moltune.flow.train import TrainConfig

    print(f"{'preset':<22} {'pair':>5} {'flow':>7} {'95% interval':>16} {'naive':>7} {'J (kT)':>7}")
    for preset in args.presets:
        cfg = load_config(TrainConfig, preset)
        if not cfg.data.test_dir:
            raise SystemExit(f"{preset} names no held-out test data (data.test_dir)")
        run = Path(args.out) / preset
        _train(preset, args.data_root, run, args.max_minutes)
        for pair in args.pairs:
            m = _evaluate(run, Path(args.data_root) / cfg.data.test_dir, pair)
            lo, hi = m["acceptance_flow"]["ci95"]
            print(f"{preset:<22} {pair[0]}-{pair[1]:<3} {m['acceptance_flow']['mean']:>7.3f} "
                  f"[{lo:.3f}, {hi:.3f}] {m['acceptance_naive']['mean']:>7.3f} "
                  f"{m['jeffreys_kt']:>7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
