"""Transport-flow speed: training-step throughput and the sequential direction with/without cache.

    python benchmarks/bench_flow.py [--batch 256] [--repeats 3] [--threads 1] [--flow CKPT]

Prints, for AA (23 atoms): samples per second of one full training step (both directions,
float64 energies, backward) for the baseline and the TarFlow of the ``aa_300_450`` preset, and
the time of the inverse direction with the key/value cache, without it, and by fixed-point
sweeps. The sweeps needed depend on how far the map is from the identity: ``--flow`` times a
trained flow's directions too (``--batch 2`` is what one flow-PT swap event asks for). The
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
    ap.add_argument("--flow", help="a trained flow (run folder or checkpoint) to time as well")
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
        fixed = _time(lambda: flow.inverse(x, 300.0, 450.0, method="fixed_point"), args.repeats)
    print(f"tarflow parallel direction (T):          {par * 1e3:8.1f} ms")
    print(f"tarflow sequential (T^-1) with KV cache: {cached * 1e3:8.1f} ms")
    print(f"tarflow T^-1 by fixed-point sweeps:      {fixed * 1e3:8.1f} ms "
          f"({cached / fixed:.1f}x faster than the cache)")
    print(
        f"tarflow sequential (T^-1) without cache: {plain * 1e3:8.1f} ms "
        f"({plain / cached:.1f}x slower)"
    )


    if args.flow:
        from moltune.flow.rebuild import load_sampler_flow

        trained, _ = load_sampler_flow(args.flow)
        t_s, t_t = torch.full((args.batch,), 300.0), torch.full((args.batch,), 450.0)
        with torch.no_grad():
            times = {m: _time(lambda m=m: trained.inverse(y, t_s, t_t, method=m), args.repeats)
                     for m in ("cached", "fixed_point")}  # fmt: skip
            par = _time(lambda: trained(x, t_s, t_t), args.repeats)
        print(f"trained flow {args.flow}: T {par * 1e3:.1f} ms, T^-1 cached "
              f"{times['cached'] * 1e3:.1f} ms, fixed point {times['fixed_point'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
