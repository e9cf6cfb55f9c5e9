"""A PatchCore memory bank saved as one file per rank (``PatchCore.save(path, shard=True)``).

Layout, for ``path = model.safetensors`` written by ``P`` ranks:

- ``model.shard-00001-of-0000P.safetensors`` ... one per rank, written by that rank: the rows of the
  bank it holds (global row order = rank order), its metadata (format ``fastad-model-shard``, rank,
  world, rows, SHA-256 of the rows, the index's file name);
- ``model.safetensors``, the *index*, written by rank 0 last: an ordinary PatchCore model file whose
  ``memory_bank`` has 0 rows and whose metadata lists the shards (file name, rows, SHA-256).

Every file is written atomically (:func:`fastad._output.atomic_path`); the index is written only
after every rank has written its shard, so a failed or interrupted save leaves no index (and each
rank removes the shard it wrote). Loading the index in one process reads every shard and
concatenates (each digest checked); under as many ranks as shards, each rank reads its own.
The shard files must sit next to the index (a shared folder, or copied there).
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import os
from pathlib import Path

import torch

from ._io import ModelFileError, read_meta

SHARD_FORMAT = "fastad-model-shard"
SHARD_KEY = "fastad-shard"
#: set while ``PatchCore.load(..., distributed=True)`` runs: load this rank's shard only
LOADING_RANK: contextvars.ContextVar = contextvars.ContextVar("fastad_loading_rank", default=None)


def shard_path(path, rank: int, world: int) -> Path:
    p = Path(path)
    return p.with_name(f"{p.stem}.shard-{rank + 1:05d}-of-{world:05d}{p.suffix or '.safetensors'}")


def _digest(t: torch.Tensor) -> bytes:
    return hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).digest()


def _check_ours(p: Path) -> None:
    """Refuse to replace a file at a shard's name that fastad did not write."""
    if not (p.exists() or p.is_symlink()):
        return
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(SHARD_KEY)
        ok = raw is not None and json.loads(raw).get("format") == SHARD_FORMAT
    except Exception:  # noqa: BLE001 - unreadable: not ours
        ok = False
    if not ok or not p.is_file():
        raise ValueError(f"PatchCore.save(shard=True): {str(p)!r} exists and is not a fastad model shard; "
                         "choose another model file name")


def write_shard(path, rank: int, world: int, bank: torch.Tensor) -> tuple[Path, bytes]:
    """Write this rank's rows (atomic). Returns ``(shard path, sha256 digest)``."""
    from safetensors.torch import save_file

    from .._output import atomic_path

    p = shard_path(path, rank, world)
    _check_ours(p)
    bank = bank.detach().to("cpu", torch.float32).contiguous()
    dig = _digest(bank)
    meta = {"format": SHARD_FORMAT, "rank": rank, "world": world, "rows": int(bank.shape[0]),
            "sha256": dig.hex(), "index": Path(path).name}
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        save_file({"memory_bank": bank}, str(tmp), metadata={SHARD_KEY: json.dumps(meta)})
    return p, dig


def remove(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def shard_count(path) -> int | None:
    """The number of shards of a model file written with ``shard=True`` (None for a one-file model)."""
    try:
        shards = read_meta(Path(path)).get("shards")
    except ModelFileError:
        return None
    return len(shards) if isinstance(shards, list) else None


def read_shard(index_path, entry: dict, dim: int) -> torch.Tensor:
    """One shard's rows, checked against the index entry (name, rows, digest) and the bank width."""
    from safetensors.torch import load_file

    p = Path(index_path).with_name(str(entry.get("file")))
    if Path(str(entry.get("file"))).name != str(entry.get("file")):
        raise ModelFileError(index_path, f"shard file name {entry.get('file')!r} is not a plain file name")
    if not p.is_file():
        raise ModelFileError(index_path, f"its shard {p.name!r} is missing (the shards must sit next to the index)")
    try:
        t = load_file(str(p)).get("memory_bank")
    except Exception as e:  # noqa: BLE001 - safetensors' own error types
        raise ModelFileError(p, f"not a readable model shard (corrupted or truncated?): {e}") from None
    if t is None or t.dim() != 2 or t.dtype != torch.float32 or t.shape[1] != dim or t.shape[0] != int(entry.get("rows", -1)):
        got = None if t is None else f"{tuple(t.shape)} {t.dtype}"
        raise ModelFileError(p, f"shard rows are {got}, the index expects [{entry.get('rows')}, {dim}] float32")
    if _digest(t).hex() != entry.get("sha256"):
        raise ModelFileError(p, "shard does not match its checksum in the index (corrupted, or from another save)")
    return t


def load_bank(index_path, shards: list, dim: int) -> tuple[torch.Tensor, bool]:
    """``(rows, is_local_shard)``: this rank's shard under ``LOADING_RANK`` (world must equal the shard
    count), else every shard concatenated in rank order."""
    rank_world = LOADING_RANK.get()
    if rank_world is not None:
        rank, world = rank_world
        if world != len(shards):
            raise ModelFileError(index_path, f"has {len(shards)} shards but {world} ranks load it: load it under "
                                 f"{len(shards)} ranks, or in one process (the shards are concatenated)")
        return read_shard(index_path, shards[rank], dim), True
    parts = [read_shard(index_path, e, dim) for e in shards]
    return (torch.cat(parts) if parts else torch.zeros(0, dim)), False


def save_sharded(bank: torch.Tensor, path: Path, index_det, write_index) -> Path:
    """Every rank: write its ``bank`` rows; then, when every shard is written, rank 0 writes the index
    (``write_index(index_det)``, ``index_det`` a copy of the detector given a 0-row bank and the shard
    list). Any failure raises on every rank (naming the ranks) and removes this rank's shard."""
    import torch.distributed as dist

    import fastad.distributed as fd

    rank, world = dist.get_rank(), dist.get_world_size()
    written, err, dig = None, None, bytes(32)
    try:
        written, dig = write_shard(path, rank, world, bank)
    except Exception as e:  # noqa: BLE001 - every rank learns of it below
        err = e
    state = fd.all_rows(torch.tensor([[int(err is None), bank.shape[0], *dig]], dtype=torch.int64))
    if bool(state[:, 0].all()) and rank == 0:
        index_det.distributed, index_det.memory_bank_, index_det._bank_norms = False, bank[:0], None
        index_det._shard_entries = [{"file": shard_path(path, r, world).name, "rows": int(state[r, 1]),
                                     "sha256": bytes(state[r, 2:].tolist()).hex()} for r in range(world)]
        try:
            write_index(index_det)
        except Exception as e:  # noqa: BLE001
            err = e
    ok = fd.all_rows(torch.tensor([int(err is None)]))  # rank 0's index, or every rank's shard, failed
    bad = [r for r in range(world) if not int(state[r, 0])] or [r for r in range(world) if not int(ok[r])]
    if bad:
        if written is not None:
            remove(written)
        stage = "shard" if not bool(state[:, 0].all()) else "index"
        msg = f"PatchCore.save(shard=True): writing the {stage} failed on rank(s) {bad}" + (f": {err}" if err else "")
        if err is not None:
            raise ValueError(msg) from err
        raise fd.DistributedError(msg, bad)
    return path
