"""Transport-flow speed: training-step throughput and the sequential direction with/without cache.

    python benchmarks/bench_flow.py [--batch 256] [--repeats 3] [--threads 1]

Prints, for AA (23 atoms): samples per second of one full training step (both directions,
float64 energies, backward) for the baseline and the TarFlow of the ``aa_300_450`` preset, and
the time of the sequential (inverse) direction with and without the key/value cache. The
machine is shared, so the load average is printed alongside.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from moltune.common.config import load_config
    from moltune.flow.losses import transport_terms
    from moltune.flow.train import TrainConfig, build_flow
    from moltune.physics.energy import TorchEnergy
    from moltune.physics.peptide import build_peptide

    pep = build_peptide("AA")
    x0 = torch.as_tensor(pep.positions_nm)
    g = torch.Generator().manual_seed(0)
    x = x0 + 0.005 * torch.randn(args.batch, *x0.shape, generator=g, dtype=torch.float64)
    y = x0 + 0.006 * torch.randn(args.batch, *x0.shape, generator=g, dtype=torch.float64)
    energy = TorchEnergy.from_topology(pep.topology).double()
    u = float(energy(x).mean())
    cfg = load_config(TrainConfig, "aa_300_450")
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; batch {args.batch}; "
        f"threads {args.threads}"
    )
    for name in ("baseline_ic", "tarflow"):
        flow_cfg = cfg.flow if name == "tarflow" else type(cfg.flow)(name="baseline_ic")
        flow = build_flow(flow_cfg, pep.topology)
        flow.representation.fit(torch.cat([x, y]))
        with torch.no_grad():  # leave the identity so every branch does real work
            for p in flow.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))

        def step(flow=flow):
            t = transport_terms(flow, energy, x, y, 300.0, 450.0, u, u)
            (t.loss_forward.mean() + t.loss_inverse.mean()).backward()

        dt = _time(step, args.repeats)
        print(
            f"{name:12s} training step: {dt * 1e3:8.1f} ms = {2 * args.batch / dt:8.0f} samples/s"
        )
    with torch.no_grad():
        par = _time(lambda: flow(x, 300.0, 450.0), args.repeats)
        cached = _time(lambda: flow.inverse(x, 300.0, 450.0, method="cached"), args.repeats)
        plain = _time(lambda: flow.inverse(x, 300.0, 450.0, method="recompute"), args.repeats)
    print(f"tarflow parallel direction (T):          {par * 1e3:8.1f} ms")
    print(f"tarflow sequential (T^-1) with KV cache: {cached * 1e3:8.1f} ms")
    print(
        f"tarflow sequential (T^-1) without cache: {plain * 1e3:8.1f} ms "
        f"({plain / cached:.1f}x slower)"
    )


if __name__ == "__main__":
    main()
