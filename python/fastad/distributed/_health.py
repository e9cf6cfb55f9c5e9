"""Liveness of the ranks: a heartbeat counter per rank in the process group's c10d store.

Every process that makes a :mod:`fastad.distributed` call starts one daemon thread that increments
the store key ``fastad/heartbeat/<global rank>`` every :data:`INTERVAL_S` seconds (``store.add``:
no clocks are compared, so skew between machines does not matter). When an exchange fails or times
out, :func:`probe` reads every rank's counter, waits :data:`WINDOW_S` seconds and reads them again:
a rank whose counter did not move is dead (its process exited or was killed: ``os._exit``, SIGKILL,
a crashed machine), unless it flagged ``fastad/saw-failure/<rank>`` first (it saw the failure too,
and may have exited since); a rank whose counter moved is alive (stuck, or busy outside the call). The store
is the one ``init_process_group`` created (under ``torchrun``, hosted by the agent, so it outlives
any worker); if it cannot be reached, the rank that hosts it (rank 0 outside ``torchrun``) is gone.
"""
from __future__ import annotations

import atexit
import os
import threading
import time

import torch.distributed as dist

#: Seconds between two heartbeats of a rank.
INTERVAL_S = 0.25
#: Seconds :func:`probe` watches the counters; a live rank beats ~8 times in it (a loaded machine can
#: delay a thread by a second, not by this whole window).
WINDOW_S = 2.0
_PREFIX = "fastad/heartbeat/"
_SAW = "fastad/saw-failure/"

_state: dict = {"thread": None, "store": None, "stop": None}
_lock = threading.Lock()


def _store():
    get = getattr(dist.distributed_c10d, "_get_default_store", None)  # the default group's store
    if get is None or not dist.is_initialized():
        return None
    try:
        return get()
    except Exception:  # noqa: BLE001 - a group without a store (e.g. a fake backend): no heartbeat
        return None


def _beat(store, key: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            store.add(key, 1)
        except Exception:  # noqa: BLE001 - the store went away (group destroyed, host died): stop beating
            return
        stop.wait(INTERVAL_S)


def ensure_heartbeat() -> bool:
    """Start this process's heartbeat thread if it is not running (idempotent). Returns whether one runs."""
    store = _store()
    if store is None:
        return False
    with _lock:
        t = _state["thread"]
        if t is not None and t.is_alive() and _state["store"] is store:
            return True
        if _state["stop"] is not None:
            _state["stop"].set()
        stop = threading.Event()
        key = f"{_PREFIX}{dist.get_rank()}"
        store.add(key, 1)  # beating before this call's first exchange
        t = threading.Thread(target=_beat, args=(store, key, stop), name="fastad-heartbeat", daemon=True)
        t.start()
        _state.update(thread=t, store=store, stop=stop)
        return True


@atexit.register
def stop_heartbeat() -> None:
    """Stop and join the heartbeat thread (at interpreter exit: a daemon thread caught in a store call
    while Python finalizes would abort the process, "terminate called without an active exception")."""
    with _lock:
        t, stop = _state["thread"], _state["stop"]
        _state.update(thread=None, store=None, stop=None)
    if stop is not None:
        stop.set()
    if t is not None and t.is_alive() and t is not threading.current_thread():
        t.join(timeout=5.0)


def _counters(store, ranks):
    return [int(store.add(f"{_PREFIX}{r}", 0)) for r in ranks]


def probe(global_ranks, window: float | None = None) -> dict:
    """Which of ``global_ranks`` are alive. Returns ``{"dead": [...], "alive": [...], "error": str|None}``
    (global ranks). The counters are polled every beat: a rank is alive as soon as its counter moves
    (or it flagged that it saw the failure), dead when it has not moved for the whole ``window``. If
    the store becomes unreachable midway, ``error`` is set and ``alive`` holds what was learnt.
    The process that hosts the store (rank 0 outside ``torchrun``) stays the whole window, so that
    its peers can finish their own probes before it exits."""
    store = _state["store"] or _store()
    ranks = list(global_ranks)
    w = WINDOW_S if window is None else window
    if store is None:
        return {"dead": [], "alive": [], "error": "no c10d store to read heartbeats from"}
    t_end = time.monotonic() + w
    alive: set = set()
    try:
        # "I saw the failure": a rank that reports the failure and then exits is not one that died
        store.add(f"{_SAW}{dist.get_rank()}", 1)
        before = _counters(store, ranks)
        while True:
            alive |= {r for r in ranks if int(store.add(f"{_SAW}{r}", 0))}
            if len(alive) == len(ranks) or time.monotonic() >= t_end:
                break
            time.sleep(min(INTERVAL_S, max(0.0, t_end - time.monotonic())))
            alive |= {r for r, a, b in zip(ranks, before, _counters(store, ranks)) if a != b}
    except Exception as e:  # noqa: BLE001
        return {"dead": [], "alive": sorted(alive),
                "error": f"the c10d store is unreachable ({str(e).splitlines()[0][:120]})"}
    if dist.get_rank() == 0 and store_host_is_rank0():
        time.sleep(max(0.0, t_end - time.monotonic()))
    return {"dead": [r for r in ranks if r not in alive], "alive": sorted(alive), "error": None}


def store_host_is_rank0() -> bool:
    """Whether global rank 0 hosts the default store (``init_process_group`` with ``env://`` outside
    ``torchrun``, whose agent hosts it otherwise): then an unreachable store means rank 0 died."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() not in ("1", "true")


def describe(result: dict, me: int, window: float | None = None) -> str:
    """One sentence for an error message: who is dead, who is alive (``me`` excluded)."""
    w = WINDOW_S if window is None else window
    if result["error"]:
        known = f"alive: {[r for r in result['alive'] if r != me]}; " if result["alive"] else ""
        return (f"{known}liveness unknown: {result['error']}; the rank hosting the store (rank 0 outside "
                "torchrun) has probably died or exited")
    dead = [r for r in result["dead"] if r != me]
    alive = [r for r in result["alive"] if r != me]
    if result.get("store"):
        return (f"rank(s) {dead} DIED (it hosted the c10d store, which is unreachable: "
                f"{result['store']})")
    if dead:
        return (f"rank(s) {dead} DIED (no heartbeat in the c10d store for {w:g} s: the process exited or was "
                f"killed); alive: {alive}")
    return f"no rank died; alive: {alive} (stuck, or busy outside this call)"
