"""Process-group plumbing of :mod:`fastad.distributed`: bounded waits, the entry/exit roll call that
validates arguments across ranks and names a rank that failed, and the timeout setting.

Only ``torch.distributed`` primitives are used (point-to-point ``isend``/``irecv``, ``all_gather``,
``all_reduce``, ``broadcast``). The *control plane* (roll calls) runs on a gloo group: the caller's
group itself when it is gloo, otherwise a gloo group over the same ranks created once per group (so
NCCL jobs get the same error reporting while their data moves over NCCL).
"""
from __future__ import annotations

import datetime as _dt
import os
import threading
import time

import torch
import torch.distributed as dist

from . import _health

#: Seconds a rank waits for its peers in any one exchange before it gives up (environment variable
#: ``FASTAD_DISTRIBUTED_TIMEOUT`` at import, or :func:`set_timeout`). Local work between exchanges is
#: not bounded, so with shards of very unequal size keep this above the longest local step.
DEFAULT_TIMEOUT_S = float(os.environ.get("FASTAD_DISTRIBUTED_TIMEOUT", "1800"))

_state = {"timeout": DEFAULT_TIMEOUT_S}
_stats = {"bytes_sent": 0, "round_trips": 0, "calls": 0}
_control_groups: dict = {}
_lock = threading.Lock()

#: Bytes of the text a rank sends with its roll-call answer (its error message, if any).
MESSAGE_BYTES = 480
#: int64 fields of the roll-call metadata vector.
META_FIELDS = 16

_TAG_ENTRY, _TAG_EXIT = 17_001, 17_002


class DistributedError(RuntimeError):
    """A :mod:`fastad.distributed` call failed on one or more ranks. ``failed_ranks`` lists the ranks
    that raised or did not answer (empty when unknown)."""

    def __init__(self, message: str, failed_ranks=()):
        super().__init__(message)
        self.failed_ranks = tuple(failed_ranks)


def set_timeout(seconds: float) -> None:
    """Set how long every :mod:`fastad.distributed` exchange waits for the other ranks (seconds > 0)."""
    if not (isinstance(seconds, (int, float)) and seconds > 0):
        raise ValueError(f"fastad.distributed.set_timeout: seconds must be a number > 0, got {seconds!r}")
    _state["timeout"] = float(seconds)


def comm_stats(reset: bool = False) -> dict:
    """Payload bytes this rank sent and collective round trips it took part in (data plane only) since the
    last reset, by :mod:`fastad.distributed`'s own count (the benchmark also measures the socket bytes)."""
    out = dict(_stats)
    if reset:
        for k in _stats:
            _stats[k] = 0
    return out


def get_timeout() -> float:
    """Seconds every :mod:`fastad.distributed` exchange waits for the other ranks."""
    return _state["timeout"]


def _ms(seconds: float) -> _dt.timedelta:
    # timedelta(0) means "no timeout" to c10d: never pass less than a millisecond
    return _dt.timedelta(milliseconds=max(1.0, seconds * 1000.0))


class Ctx:
    """One fastad.distributed call on one rank: its group, rank, world size, timeout and op name."""

    def __init__(self, op: str, group=None, timeout: float | None = None):
        self.op = f"fastad.distributed.{op}"
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"{self.op}: no torch.distributed process group: call torch.distributed.init_process_group "
                "first (torchrun sets the environment for it), or use the single-process fastad.ops function"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group)).lower()
        self.timeout = float(timeout) if timeout is not None else get_timeout()
        # a failed exchange spends the end of the timeout watching the heartbeats (who died?)
        self.window = min(_health.WINDOW_S, self.timeout / 2)
        self.heartbeat = self.world > 1 and _health.ensure_heartbeat()
        _stats["calls"] += 1

    def liveness(self, ranks=None) -> tuple[list[int], str]:
        """``(dead group ranks, one sentence)`` after watching the heartbeats of ``ranks`` (default all)."""
        ranks = list(range(self.world)) if ranks is None else list(ranks)
        if not self.heartbeat:
            return [], "liveness unknown (no heartbeat: the process group has no c10d store)"
        g2l = {self.global_rank(r): r for r in ranks}
        res = _health.probe(list(g2l), self.window)
        if res["error"] and 0 in g2l and 0 not in res["alive"] and _health.store_host_is_rank0():
            res = {"dead": [0], "alive": res["alive"], "error": None, "store": res["error"]}  # died with its store
        res = dict(res, dead=[g2l[r] for r in res["dead"]], alive=[g2l[r] for r in res["alive"]])
        return res["dead"], _health.describe(res, self.rank, self.window)

    # ---- control plane -------------------------------------------------------------------------
    def control_group(self):
        if self.backend == "gloo":
            return self.group
        key = id(self.group)
        with _lock:
            if key not in _control_groups:
                ranks = None if self.group is None else dist.get_process_group_ranks(self.group)
                _control_groups[key] = dist.new_group(ranks=ranks, backend="gloo")
            return _control_groups[key]

    def global_rank(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def roll_call(self, meta, error: BaseException | None = None, *, stage: str) -> torch.Tensor:
        """Every rank sends ``meta`` (int64 ``[META_FIELDS]``) and its error text (if any) to every other
        rank and receives theirs, each receive bounded by the timeout. Returns ``[world, META_FIELDS]``.

        Raises :class:`DistributedError` on every rank that takes part when a rank reported an error
        (naming it and quoting its message) or did not answer in time (naming it).
        """
        meta = torch.as_tensor(list(meta) + [0] * (META_FIELDS - len(meta)), dtype=torch.int64)
        msg = b"" if error is None else f"{type(error).__name__}: {error}".encode("utf-8", "replace")[:MESSAGE_BYTES]
        mine = torch.zeros(META_FIELDS * 8 + 1 + MESSAGE_BYTES, dtype=torch.uint8)
        mine[: META_FIELDS * 8] = meta.view(torch.uint8)
        mine[META_FIELDS * 8] = 1 if error is not None else 0
        mine[META_FIELDS * 8 + 1 : META_FIELDS * 8 + 1 + len(msg)] = torch.frombuffer(bytearray(msg), dtype=torch.uint8) if msg else 0
        table = torch.zeros(self.world, mine.numel(), dtype=torch.uint8)
        table[self.rank] = mine
        tag = _TAG_ENTRY if stage == "entry" else _TAG_EXIT
        if self.world > 1:
            g = self.control_group()
            sends, recvs = [], {}
            missing, detail = [], ""
            # gloo raises at posting time, not only at wait, when the peer's connection is already closed
            # (the peer exited before this call: it failed on its own or died): that peer is missing
            for p in range(self.world):
                if p != self.rank:
                    try:
                        recvs[p] = dist.irecv(table[p], src=self.global_rank(p), group=g, tag=tag)
                    except RuntimeError as e:
                        missing.append(p)
                        detail = detail or str(e).splitlines()[0][:200]
            for p in range(self.world):
                if p != self.rank and p not in missing:
                    try:
                        sends.append(dist.isend(mine, dst=self.global_rank(p), group=g, tag=tag))
                    except RuntimeError:
                        pass  # the receive from p decides whether p answered
            deadline = time.monotonic() + self.timeout - (self.window if self.heartbeat else 0.0)
            for p, w in recvs.items():
                try:
                    w.wait(timeout=_ms(deadline - time.monotonic()))
                except RuntimeError as e:  # timed out, or the peer's connection closed (it died)
                    missing.append(p)
                    detail = detail or str(e).splitlines()[0][:200]
            missing.sort()
            if missing:
                dead, health = self.liveness(missing)
                raise DistributedError(
                    f"{self.op}: rank {self.rank} of {self.world}: rank(s) {missing} did not reach the {stage} "
                    f"of this call within {self.timeout:g} s: {health} (transport said: {detail}). "
                    "Timeout: fastad.distributed.set_timeout / FASTAD_DISTRIBUTED_TIMEOUT",
                    dead or missing,
                )
            for w in sends:
                try:
                    w.wait(timeout=_ms(max(deadline - time.monotonic(), 1.0)))
                except RuntimeError:
                    pass  # every peer answered us, so it is alive; a late send error changes nothing
        failed = [p for p in range(self.world) if table[p, META_FIELDS * 8] != 0]
        if failed:
            texts = []
            for p in failed:
                raw = bytes(table[p, META_FIELDS * 8 + 1 :].tolist()).rstrip(b"\0")
                texts.append(f"rank {p}: {raw.decode('utf-8', 'replace')}")
            err = DistributedError(f"{self.op}: failed on rank(s) {failed} of {self.world} ({stage}): " + "; ".join(texts), failed)
            if error is not None:
                raise err from error
            raise err
        return table[:, : META_FIELDS * 8].reshape(-1).clone().view(torch.int64).view(self.world, META_FIELDS)

    # ---- data plane (bounded waits) --------------------------------------------------------------
    def count(self, nbytes: int) -> None:
        _stats["bytes_sent"] += int(nbytes)
        _stats["round_trips"] += 1

    def wait(self, work, what: str):
        """Wait for ``work`` (a started collective, or a callable that starts one and returns its work or
        works) within the timeout. A transport error, at start (gloo raises there when a peer's connection
        is already closed) or while waiting, becomes a :class:`DistributedError` that names the dead ranks."""
        try:
            if callable(work):
                work = work()
            for w in work if isinstance(work, (list, tuple)) else [work]:
                w.wait(timeout=_ms(self.timeout - (self.window if self.heartbeat else 0.0)))
        except RuntimeError as e:
            dead, health = self.liveness()
            raise DistributedError(
                f"{self.op}: rank {self.rank} of {self.world}: {what} failed or did not finish within "
                f"{self.timeout:g} s: {health} (transport said: {str(e).splitlines()[0][:200]})",
                dead,
            ) from e

    def comm_device(self, t: torch.Tensor) -> torch.device:
        """Where ``t`` must be for this group's collectives: NCCL moves only CUDA tensors, so a CPU
        tensor (a count, a key) goes to this rank's current CUDA device; gloo (and a mixed
        ``cpu:gloo,cuda:nccl`` group) takes the tensor where it is."""
        return comm_device(self.backend, t.device)

    def all_gather(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """``[world, *t.shape]``: every rank's ``t`` (same shape on every rank), on ``t``'s device."""
        home = t.device
        t = t.to(self.comm_device(t)).contiguous()
        out = t.new_empty((self.world,) + tuple(t.shape))
        if self.world == 1:
            out[0] = t
            return out.to(home)
        _stats["bytes_sent"] += t.numel() * t.element_size() * (self.world - 1)
        _stats["round_trips"] += 1
        flat = out.view(-1)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self.wait(lambda: gather(flat, t.view(-1), group=self.group, async_op=True), what)
        return out.to(home)

    def all_reduce(self, t: torch.Tensor, op, what: str) -> torch.Tensor:
        """In place on ``t`` (which keeps its device)."""
        if self.world > 1:
            _stats["bytes_sent"] += 2 * t.numel() * t.element_size()
            _stats["round_trips"] += 1
            x = t.to(self.comm_device(t))
            self.wait(lambda: dist.all_reduce(x, op=op, group=self.group, async_op=True), what)
            if x is not t:
                t.copy_(x)
        return t

    def broadcast(self, t: torch.Tensor, src: int, what: str) -> torch.Tensor:
        """In place on ``t`` (which keeps its device)."""
        if self.world > 1:
            if self.rank == src:
                _stats["bytes_sent"] += t.numel() * t.element_size()
            _stats["round_trips"] += 1
            x = t.to(self.comm_device(t))
            self.wait(lambda: dist.broadcast(x, src=self.global_rank(src), group=self.group, async_op=True), what)
            if x is not t:
                t.copy_(x)
        return t

    def all_to_all(self, out: torch.Tensor, inp: torch.Tensor, what: str) -> torch.Tensor:
        """``all_to_all_single`` (equal splits along dim 0) into ``out`` (which keeps its device)."""
        dev = self.comm_device(inp)
        x, y = inp.to(dev).contiguous(), out.to(dev)
        self.wait(lambda: dist.all_to_all_single(y, x, group=self.group, async_op=True), what)
        if y is not out:
            out.copy_(y)
        return out

    def shift(self, send: torch.Tensor, recv: torch.Tensor, step: int, what: str) -> torch.Tensor:
        """Ring exchange: send ``send`` to rank ``(rank + step) % world`` and receive ``recv`` from
        ``(rank - step) % world`` (same shapes on every rank); ``recv`` keeps its device."""
        if self.world == 1 or step % self.world == 0:
            recv.copy_(send)
            return recv
        dst, src = (self.rank + step) % self.world, (self.rank - step) % self.world
        dev = self.comm_device(send)
        x, y = send.to(dev).contiguous(), recv.to(dev)
        ops = [dist.P2POp(dist.isend, x, self.global_rank(dst), self.group),
               dist.P2POp(dist.irecv, y, self.global_rank(src), self.group)]
        _stats["bytes_sent"] += send.numel() * send.element_size()
        _stats["round_trips"] += 1
        self.wait(lambda: dist.batch_isend_irecv(ops), what)
        if y is not recv:
            recv.copy_(y)
        return recv


def comm_device(backend: str, device: torch.device) -> torch.device:
    """The device a collective of ``backend`` needs for a tensor on ``device``: a pure ``nccl`` group
    moves CUDA tensors only (CPU ones go to the current CUDA device); others take it where it is."""
    if str(backend).lower() == "nccl" and device.type == "cpu":
        return torch.device("cuda", torch.cuda.current_device())
    return device


DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.float64: 4, torch.int64: 5, torch.int32: 6,
               torch.uint8: 7, torch.bool: 8}


def dtype_code(dtype) -> int:
    return DTYPE_CODES.get(dtype, 99)


def dtype_name(code: int) -> str:
    for k, v in DTYPE_CODES.items():
        if v == code:
            return str(k).replace("torch.", "")
    return f"unsupported({code})"


def disagreement(ctx: Ctx, table: torch.Tensor, field: int, name: str, render=str) -> None:
    """Raise on every rank if column ``field`` of the roll-call table differs between ranks."""
    col = table[:, field]
    if bool((col != col[0]).any()):
        per = ", ".join(f"rank {p}: {render(int(v))}" for p, v in enumerate(col.tolist()))
        raise ValueError(f"{ctx.op}: every rank must pass the same {name}, got {per}")


def offsets_of(sizes: torch.Tensor) -> list[int]:
    """Global row offset of every rank's shard (shards numbered in rank order)."""
    out, acc = [], 0
    for s in (sizes.tolist() if isinstance(sizes, torch.Tensor) else sizes):
        out.append(acc)
        acc += int(s)
    return out
