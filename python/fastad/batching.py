"""Batches of dataset items: :func:`batches` (in order, threads decode ahead, unreadable images
skipped with a warning, ``ragged=True`` for images of different sizes), :func:`collate` and
:func:`unpad` (remove the letterbox of ``resize="pad"``). Re-exported by :mod:`fastad.data`."""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["UnreadableImageError", "batches", "collate", "unpad", "unpad_batch"]


class UnreadableImageError(OSError):
    """An image file that exists but cannot be decoded (corrupt, truncated, not an image)."""


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, through numpy for CPU tensors: a single-threaded copy. torch's intra-op
    threads wake up for each such copy between decodes and, on a busy machine, wait far longer
    for a core than the copy itself takes (measured 10x the CPU time with 2 threads under load)."""
    if all(t.device.type == "cpu" and not t.requires_grad for t in ts):
        return torch.from_numpy(np.stack([t.numpy() for t in ts]))
    return torch.stack(ts)


def collate(items: list[dict]) -> dict:
    """Stack a list of item dicts: tensors are stacked, ints/bools become int64/bool tensors,
    everything else (paths, defect types) becomes a list."""
    if not items:
        raise ValueError("collate: empty list of items")
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        v0 = vals[0]
        if isinstance(v0, torch.Tensor):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                where = [it.get("path", i) for i, it in enumerate(items)]
                raise ValueError(
                    f"collate: {k!r} tensors of different shapes {sorted(shapes)} cannot be stacked "
                    f"(items {where}); resize images to one size, or use batch_size=1 with resize='none'"
                )
            out[k] = _stack(vals)
        elif isinstance(v0, bool):
            out[k] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(v0, int):
            out[k] = torch.tensor(vals, dtype=torch.int64)
        else:
            out[k] = list(vals)
    return out


class _Batches:
    """Iterable of collated batches with a length (see :func:`batches`)."""

    def __init__(self, dataset, batch_size: int, num_workers: int, progress, ragged: bool = False):
        if batch_size <= 0:
            raise ValueError(f"batches: batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"batches: num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.progress = progress
        self.ragged = bool(ragged)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def _load(self, i: int):
        try:
            return self.dataset[i]
        except OSError as e:  # fastad.data.UnreadableImageError, or a file removed since the listing
            return e if isinstance(e, UnreadableImageError) else UnreadableImageError(str(e))

    def __iter__(self) -> Iterator[dict]:
        n, bs = len(self.dataset), self.batch_size
        chunks = [range(s, min(s + bs, n)) for s in range(0, n, bs)]
        pool = ThreadPoolExecutor(self.num_workers) if self.num_workers > 0 else None
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=self.progress if isinstance(self.progress, str) else "images", unit="img")
        try:
            # Pillow releases the GIL while decoding/resizing: threads overlap with the model.
            pending = pool.map(self._load, chunks[0]) if (pool and chunks) else None
            for ci, chunk in enumerate(chunks):
                if pool:
                    results = list(pending)
                    if ci + 1 < len(chunks):
                        pending = pool.map(self._load, chunks[ci + 1])
                else:
                    results = [self._load(i) for i in chunk]
                items = []
                for r in results:
                    if isinstance(r, UnreadableImageError):
                        warnings.warn(f"fastad.data: skipping unreadable image: {r}", stacklevel=2)
                        getattr(self.dataset, "skipped", []).append((str(r), "decode failed"))
                    else:
                        items.append(r)
                if bar is not None:
                    bar.update(len(results))
                if items and self.ragged:
                    yield from (collate(run) for run in _same_size_runs(items))
                elif items:
                    yield collate(items)
        finally:
            if bar is not None:
                bar.close()
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)


def _same_size_runs(items: list[dict]) -> list[list[dict]]:
    """Consecutive items split where the image size changes (order kept)."""
    runs: list[list[dict]] = []
    for it in items:
        if runs and tuple(runs[-1][-1]["image"].shape) == tuple(it["image"].shape):
            runs[-1].append(it)
        else:
            runs.append([it])
    return runs


def unpad(t: torch.Tensor, valid: torch.Tensor | None) -> list[torch.Tensor]:
    """Per image, ``t[i]`` (``Tensor[B, ..., H, W]``) cropped to the bounding box of ``valid[i]``
    (``Tensor[B, H, W]`` bool, the ``valid`` entry of ``resize="pad"`` batches): the letterbox
    removed. ``valid=None`` gives the images unchanged."""
    if valid is None:
        return list(t.unbind(0))
    if valid.shape[0] != t.shape[0] or tuple(valid.shape[-2:]) != tuple(t.shape[-2:]):
        raise ValueError(f"unpad: valid {tuple(valid.shape)} does not match the tensor {tuple(t.shape)}")
    out = []
    for i in range(t.shape[0]):
        rows = torch.nonzero(valid[i].any(1)).flatten()
        cols = torch.nonzero(valid[i].any(0)).flatten()
        if rows.numel() == 0:
            raise ValueError(f"unpad: image {i} has no valid pixel")
        out.append(t[i, ..., int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1])
    return out


def batches(dataset, batch_size: int = 16, *, num_workers: int = 0, progress=False, ragged: bool = False) -> _Batches:
    """Iterate over ``dataset`` in collated batches (in order, last batch smaller).

    Each batch is :func:`collate` of the items: ``image`` Tensor[B, 3, H, W], ``mask`` Tensor[B, H, W]
    bool, ``label`` Tensor[B] int64, ``has_mask`` Tensor[B] bool, ``path`` / ``defect_type`` lists.
    ``len()`` is the number of batches. Images that fail to decode are dropped from their batch with a
    warning naming the file (use each batch's ``path`` list to keep scores aligned).
    ``num_workers > 0`` decodes with that many threads, prefetching the next batch.
    ``progress`` shows a tqdm bar (a string sets its label). ``ragged=True`` accepts images of
    different sizes (``resize="none"`` or ``"keep-aspect"``): a batch is then split where the size
    changes (batches of one size, in order, possibly smaller than ``batch_size``).
    """
    return _Batches(dataset, batch_size, num_workers, progress, ragged)


def unpad_batch(batch: dict, scores: torch.Tensor, maps: torch.Tensor | None):
    """Yield ``(batch, scores, maps)`` with the letterbox of ``resize="pad"`` removed: the batch itself
    when it has no ``valid`` entry, else one single-image batch per image, its image / mask / map
    cropped to its valid box (so that pixel metrics and reports never see the padding)."""
    valid = batch.get("valid")
    if valid is None:
        yield batch, scores, maps
        return
    for i in range(valid.shape[0]):
        rows = torch.nonzero(valid[i].any(1)).flatten()
        cols = torch.nonzero(valid[i].any(0)).flatten()
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        one = {}
        for k, v in batch.items():
            if k == "valid":
                continue
            if isinstance(v, torch.Tensor):
                v = v[i : i + 1]
                if v.dim() >= 3 and tuple(v.shape[-2:]) == tuple(valid.shape[-2:]):
                    v = v[..., r0:r1, c0:c1]
            else:
                v = v[i : i + 1]
            one[k] = v
        yield one, scores[i : i + 1], None if maps is None else maps[i : i + 1, r0:r1, c0:c1]
