"""RQ spline speed: moltune's spline against zuko's, and spline vs affine TarFlow inverses.

    python benchmarks/bench_splines.py [--repeats 200] [--threads 1] [--bins 8]

Prints (1) the time of one spline evaluation with its log-derivative, forward and inverse, for
moltune.flow.splines.rqs and zuko's MonotonicRQSTransform (built per call, as a network's
output would be), at the sizes of one flow-PT swap (1-2 configurations x 69 slots) and of a
training batch; (2) the time of the AA TarFlow inverse (4 blocks, d_model 32) with affine /
Moebius and with spline slot maps at batch 1, 2 and 64 for every inverse method. Weights are
small random ones (a near-identity map, as after transport training). Times are CPU time of
this process (the machine is shared; the load average is printed alongside).
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch


def _time(fn, repeats: int) -> float:
    """CPU seconds per call of this process (the shared machine's wall clock is not)."""
    fn()
    t = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - t) / repeats


def _zuko(cls, x, w, h, d, inverse: bool):
    t = cls(w, h, d)
    return (t.inv if inverse else t).call_and_ladj(x)


def _bench_elementwise(bins: int, repeats: int) -> None:
    from moltune.flow.splines import rqs

    try:
        from zuko.transforms import MonotonicRQSTransform
    except ImportError:  # zuko is in the test extra
        MonotonicRQSTransform = None
    print(f"\nelementwise spline ({bins} bins, float64): CPU microseconds per call")
    print(
        f"{'values':>8} {'moltune fwd':>12} {'zuko fwd':>10} {'moltune inv':>12} {'zuko inv':>10}"
    )
    g = torch.Generator().manual_seed(0)
    for n in (69, 138, 256 * 69):
        p = torch.randn(n, 3 * bins - 1, generator=g, dtype=torch.float64)
        w, h, d = p[:, :bins], p[:, bins : 2 * bins], p[:, 2 * bins :]
        x = 2 * torch.randn(n, generator=g, dtype=torch.float64)
        reps = max(3, repeats // (1 + n // 1000))
        row = [_time(partial(rqs, x, w, h, d), reps), None]
        row += [_time(partial(rqs, x, w, h, d, inverse=True), reps), None]
        if MonotonicRQSTransform is not None:
            row[1] = _time(partial(_zuko, MonotonicRQSTransform, x, w, h, d, False), reps)
            row[3] = _time(partial(_zuko, MonotonicRQSTransform, x, w, h, d, True), reps)
        cells = [f"{1e6 * v:10.0f}" if v is not None else f"{'-':>10}" for v in row]
        print(f"{n:>8} {cells[0]:>12} {cells[1]:>10} {cells[2]:>12} {cells[3]:>10}")


def _bench_tarflow(bins: int, repeats: int) -> None:
    from moltune.flow.models import make_flow
    from moltune.physics.peptide import build_peptide

    pep = build_peptide("AA")
    x0 = torch.as_tensor(pep.positions_nm, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    xs = x0 + 0.005 * torch.randn(64, *x0.shape, generator=g, dtype=torch.float64)
    print("\nAA TarFlow inverse (4 blocks, d_model 32, 1 layer), CPU milliseconds per call")
    print(f"{'slot maps':>10} {'batch':>6} {'cached':>8} {'recompute':>10} {'fixed_point':>12}")
    for label, b in (("affine", 0), (f"spline {bins}", bins)):
        torch.manual_seed(0)
        flow = make_flow("tarflow", pep.topology, n_blocks=4, d_model=32, n_layers=1,
                         mlp_ratio=2, per_coordinate=True, spline_bins=b)  # fmt: skip
        flow.representation.fit(xs)
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        for batch in (1, 2, 64):
            x = xs[:batch].float()
            reps = max(2, repeats // (10 if batch > 2 else 2))
            cells = []
            for method in ("cached", "recompute", "fixed_point"):
                with torch.no_grad():
                    fn = partial(flow.inverse, x, 300.0, 450.0, method=method)
                    cells.append(_time(fn, reps))
            print(f"{label:>10} {batch:>6} " + " ".join(f"{1e3 * c:>9.1f}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bins", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; threads {args.threads}"
    )
    _bench_elementwise(args.bins, args.repeats)
    _bench_tarflow(args.bins, max(4, args.repeats // 20))


if __name__ == "__main__":
    main()
