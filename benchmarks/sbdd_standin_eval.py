"""How often a stand-in checkpoint generates valid, connected molecules for its own pockets.

Generates N molecules per pocket (ligand size = the reference's, ligand centre of mass at the
pocket's, as the sampler does) and prints validity, connectivity (of valid molecules),
valid-and-connected with 95% Wilson intervals, QED and SA (normalised, 1 = easy) per pocket and
pooled. 20 samples give an interval of about +-0.2; use 100 to tell 0.4 from 0.5.

    python benchmarks/sbdd_standin_eval.py CKPT --data /path/processed --complexes 3rfm \
        --n-samples 100 --timesteps 500 --seed 7 [--out result.json]

Runs on one thread (set OMP_NUM_THREADS=1 as well on a shared machine).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def counts(rows: list[dict]) -> dict:
    n = len(rows)
    valid = [r for r in rows if r.get("valid")]
    vc = [r for r in valid if r.get("connected")]

    def mean(key: str) -> float | None:
        xs = [r[key] for r in vc if r.get(key) is not None]
        return round(sum(xs) / len(xs), 3) if xs else None

    out = {"n": n, "valid": len(valid), "valid_and_connected": len(vc),
           "validity": len(valid) / n if n else None,
           "validity_ci95": wilson(len(valid), n),
           "connectivity_of_valid": len(vc) / len(valid) if valid else None,
           "valid_and_connected_fraction": len(vc) / n if n else None,
           "valid_and_connected_ci95": wilson(len(vc), n),
           "qed_of_valid_connected": mean("qed"), "sa_of_valid_connected": mean("sa")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="processed folder (train.npz / val.npz)")
    ap.add_argument("--complexes", nargs="+", required=True, help="pocket ids")
    ap.add_argument("--n-samples", type=int, default=100)
    ap.add_argument("--timesteps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--crystal-position", action="store_true",
                    help="keep the crystal ligand position (default: centre on the pocket, as "
                    "the stand-in preset trains)")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args()

    import torch

    from moltune.sbdd.evaluation import evaluate_pockets
    from moltune.sbdd.model import LigandDiffusionModel
    from moltune.sbdd.standin import centre_ligand_on_pocket, load_items

    torch.set_num_threads(1)
    items = load_items(Path(args.data), ["train", "val", "test"], args.complexes)
    if not args.crystal_position:
        items = [centre_ligand_on_pocket(d) for d in items]
    model = LigandDiffusionModel.from_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    res = evaluate_pockets(model, items, args.n_samples, args.timesteps, seed=args.seed,
                           num_atoms="reference", batch_size=args.batch_size, progress=True)
    rows = res["rows"]
    result = {"checkpoint": args.checkpoint, "n_samples": args.n_samples,
              "timesteps": args.timesteps, "seed": args.seed,
              "pooled": counts(rows),
              "per_pocket": {c: counts([r for r in rows if r["pocket"] == c])
                             for c in args.complexes},
              "seconds": round(time.perf_counter() - t0, 1)}
    for name, c in [("pooled", result["pooled"]), *result["per_pocket"].items()]:
        lo, hi = c["valid_and_connected_ci95"]
        print(f"{name:8s} n={c['n']:4d} validity {c['validity']:.3f} "
              f"connectivity(valid) {c['connectivity_of_valid'] or 0:.3f} "
              f"valid+connected {c['valid_and_connected_fraction']:.3f} [{lo:.3f}, {hi:.3f}] "
              f"QED {c['qed_of_valid_connected']} SA {c['sa_of_valid_connected']}")
    print(f"{result['seconds']} s")
    if args.out:
        from moltune.common.io import write_json

        write_json(args.out, result)


if __name__ == "__main__":
    main()
