"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest


def _rank_main(fn, rank: int, size: int, port: int, queue) -> None:
    import torch
    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=size)  # fmt: skip
        queue.put((rank, fn(rank), None))
    except BaseException as exc:  # noqa: BLE001 - reported to the test process
        queue.put((rank, None, repr(exc)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture
def gloo_ranks():
    """``run(fn, size=2)``: ``fn(rank)`` in ``size`` forked processes joined by a real gloo
    process group (what DDP on a CPU uses); their results in rank order."""

    def run(fn, size: int = 2) -> list:
        import multiprocessing as mp
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_rank_main, args=(fn, r, size, port, queue))
                 for r in range(size)]  # fmt: skip
        for p in procs:
            p.start()
        try:
            got = sorted(queue.get(timeout=300) for _ in procs)
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
        errors = [f"rank {r}: {e}" for r, _, e in got if e]
        assert not errors, errors
        return [res for _, res, _ in got]

    return run
