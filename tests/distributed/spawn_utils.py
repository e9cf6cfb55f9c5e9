"""Start N gloo CPU processes on loopback, run a function on each, collect every rank's result or error.

Bounded: the process group and fastad.distributed get a timeout, and the parent kills the children if
they have not all finished within ``deadline`` seconds (a hang fails the test instead of the suite).
"""
from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, outdir, fn, args, pg_timeout, fastad_timeout, env, backend="gloo"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(env or {})
    torch.set_num_threads(1)
    import torch.distributed as dist

    import fastad.distributed as fd

    out = {}
    try:
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=pg_timeout))
        fd.set_timeout(fastad_timeout)
        out["ok"] = fn(rank, world, *args)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out["err"] = f"{type(e).__name__}: {e}"
        out["type"] = type(e).__name__
        out["tb"] = traceback.format_exc()
    torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    try:
        if dist.is_initialized() and "err" not in out:
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass
    os._exit(0)  # do not wait on a broken group at interpreter exit


def run(fn, world: int, *args, deadline: float = 60.0, pg_timeout: float = 30.0, fastad_timeout: float = 15.0,
        env: dict | None = None, backend: str = "gloo") -> list[dict]:
    """Run ``fn(rank, world, *args)`` in ``world`` processes. Returns, per rank, ``{"ok": result}`` or
    ``{"err": "Type: message", "type": ..., "tb": ...}``, or ``{"missing": True}`` for a rank that wrote
    nothing (it died). Raises ``TimeoutError`` if the processes outlive ``deadline`` seconds."""
    with tempfile.TemporaryDirectory() as outdir:
        mpc = mp.get_context("spawn")
        port = free_port()
        procs = [mpc.Process(target=_worker, args=(r, world, port, outdir, fn, args, pg_timeout, fastad_timeout, env, backend),
                             daemon=True) for r in range(world)]
        for p in procs:
            p.start()
        t_end = time.monotonic() + deadline
        try:
            for p in procs:
                p.join(timeout=max(0.0, t_end - time.monotonic()))
            if any(p.is_alive() for p in procs):
                raise TimeoutError(f"{world} ranks did not finish within {deadline} s (hang)")
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
        res = []
        for r in range(world):
            f = os.path.join(outdir, f"rank{r}.pt")
            res.append(torch.load(f, weights_only=False) if os.path.exists(f) else {"missing": True})
        return res


def results(out: list[dict]) -> list:
    """The ``ok`` values of every rank; fails with every rank's traceback otherwise."""
    bad = [f"rank {r}: {o.get('tb') or o}" for r, o in enumerate(out) if "ok" not in o]
    assert not bad, "\n".join(bad)
    return [o["ok"] for o in out]
