"""The ``--distributed`` side of the command pipeline (``fit``, ``evaluate``, ``zeroshot`` under
``torchrun``): join the process group, split the images by rank, gather every rank's results on
rank 0, which alone prints and writes the model or the report. See the README's "Scale out".

- ``fit``: each rank extracts the features of its share of the training images; the coreset runs
  across ranks (:func:`fastad.distributed.coreset`); rank 0 writes the model (one file, or per-rank
  shards with ``PatchCore.save(path, shard=True)``).
- ``evaluate`` / ``predict``: a one-file model is loaded on every rank and each rank scores its share
  of the images; a sharded model loaded under as many ranks as shards keeps the bank split and every
  rank scores every image (the sharded k-NN); rank 0 gets every score and map and writes the report.
- ``zeroshot``: each rank extracts the ViT tokens of its share; MuSc's mutual scoring runs on a ring of
  ranks (:func:`fastad.distributed.lnamd_mutual_scores`), RsCIN over all ranks' scores.
"""
from __future__ import annotations

import os
import sys

from fastad._output import UsageError
from fastad.pipeline import Subset, iter_batches

__all__ = ["start", "world", "is_main", "share", "total", "gather_rows", "load", "score_images", "prescore", "finish"]


def start(a, device: str, command: str) -> str:
    """Join the ``torchrun`` process group (gloo on CPU, NCCL on CUDA with one GPU per local rank);
    ranks other than 0 print nothing. Returns this rank's device."""
    import torch
    import torch.distributed as dist

    if command == "fit" and a.detector != "patchcore":
        raise UsageError(f"--distributed: fit supports --detector patchcore, got {a.detector}")
    if command == "zeroshot" and a.divide_num != 1:
        raise UsageError(f"--distributed: zeroshot scores all images together across ranks: it needs --divide-num 1, "
                         f"got {a.divide_num}")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UsageError(f"--distributed: launch with torchrun (e.g. `torchrun --nproc_per_node=2 -m fastad {command} "
                         "--distributed ...`), which sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if dist.get_rank() != 0:
        a.quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 reports
    return device


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    import fastad.distributed as fd

    return fd.is_main_process()


def share(ds):
    """This rank's contiguous share of ``ds`` (rank order = dataset order); refuses fewer images than
    ranks (every rank needs one)."""
    import fastad.distributed as fd

    if len(ds) < world():
        raise UsageError(f"--distributed: {len(ds)} images for {world()} processes; every process needs at least one image")
    return Subset(ds, range(*fd.shard_range(len(ds))))


def total(n: int) -> int:
    """The sum of ``n`` over the ranks."""
    import torch

    import fastad.distributed as fd

    return int(fd.all_rows(torch.tensor([int(n)], dtype=torch.int64)).sum())


def gather_rows(x):
    """Every rank's ``x`` ``[n_r, ...]`` (CPU, same trailing shape on every rank), concatenated in rank order."""
    import fastad.distributed as fd

    return fd.all_rows(x.detach().cpu().contiguous())


def score_images(det, ds, *, batch_size: int, num_workers: int, split: bool, sw=None):
    """``(scores [N], maps [N, H, W] float32)`` of every image of ``ds``, in order, on rank 0 (None elsewhere).

    ``split``: each rank scores its share (a detector whose model is whole on every rank), gathered
    on rank 0; otherwise every rank scores every image (a detector whose bank is split across ranks:
    every score needs every rank) and rank 0 keeps its results."""
    import torch

    part = share(ds) if split else ds
    scores, maps = [], []
    was = getattr(det, "progress", None)
    if was is not None:
        det.progress = False
    try:
        for b in iter_batches(part, batch_size, num_workers, False):
            if sw is not None:
                with sw("predict"):
                    s, m = det.score(b["image"])
            else:
                s, m = det.score(b["image"])
            if m is None:
                raise UsageError(f"--distributed: {type(det).__name__} gives no maps; evaluate it in one process")
            if maps and tuple(m.shape[1:]) != tuple(maps[0].shape[1:]):
                raise UsageError("--distributed needs maps of one size (not --resize none / keep-aspect): got "
                                 f"{tuple(maps[0].shape[1:])} and {tuple(m.shape[1:])}")
            scores.append(s.detach().cpu())
            maps.append(m.detach().cpu().float())
    finally:
        if was is not None:
            det.progress = was
    s = torch.cat(scores) if scores else torch.zeros(0)
    m = torch.cat(maps) if maps else torch.zeros(0)
    if split:
        if s.numel() != len(part):
            raise UsageError(f"--distributed: {len(part) - s.numel()} of this rank's images could not be read")
        s, m = gather_rows(s), gather_rows(m)
    return (s, m) if is_main() else (None, None)


def load(path, *, backbone=None, device=None):
    """``(detector, split)`` for ``evaluate`` / ``predict --distributed``: a model sharded into as many
    files as there are ranks keeps its bank split (each rank loads its shard; ``split`` False: every
    rank scores every image); any other model is loaded whole on every rank (``split`` True: each rank
    scores its share of the images)."""
    from fastad import detectors
    from fastad.pipeline import load_model

    n = detectors.PatchCore.shard_count(path) if os.path.isfile(path) else None
    if n is not None and n == world():
        try:
            return detectors.PatchCore.load(path, backbone=backbone, device=device, distributed=True), False
        except (detectors.ModelFileError, FileNotFoundError) as e:
            raise UsageError(str(e)) from None
    return load_model(path, backbone=backbone, device=device), True


def prescore(det, ds, a, sw, split: bool):
    """Score every image of ``ds`` across the ranks (:func:`score_images`); on rank 0 a stand-in
    detector that hands the scores and maps to the report writer, elsewhere None."""
    from fastad.pipeline import PrecomputedScores

    s, m = score_images(det, ds, batch_size=a.batch_size, num_workers=a.num_workers, split=split, sw=sw)
    if not is_main():
        return None
    bb = getattr(det, "_backbone_obj", None)
    return PrecomputedScores(s, m, getattr(det, "threshold_", None), mean=getattr(bb, "mean", (0.485, 0.456, 0.406)),
                             std=getattr(bb, "std", (0.229, 0.224, 0.225)),
                             threshold_info=getattr(det, "threshold_info_", None))


def finish() -> int:
    """Every rank waits for rank 0's output, then the group is left cleanly. Returns 0 (exit status)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0
