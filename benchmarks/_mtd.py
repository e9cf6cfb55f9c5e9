"""The MTD set-up the MTD benchmark scripts share: the data root, the common options and the two splits."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def mtd_root() -> str:
    """``$FASTAD_MTD``, else ``../shared/data/mtd`` beside the repository."""
    return os.environ.get("FASTAD_MTD", str(Path(__file__).resolve().parents[1].parent / "shared/data/mtd"))


def mtd_parser(doc: str, image_size: int) -> argparse.ArgumentParser:
    """An argument parser (description: the first line of ``doc``) with ``--image-size``, ``--threads`` (2)
    and ``--out`` (a JSON path); add the script's own options to it."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--image-size", type=int, default=image_size)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    return ap


def mtd_splits(args: argparse.Namespace):
    """Sets ``torch.set_num_threads(args.threads)`` and returns MTD's ``(train, test)``
    :class:`fastad.data.MVTecDataset` at ``args.image_size``."""
    torch.set_num_threads(args.threads)
    from fastad.data import MVTecDataset

    root = mtd_root()
    return MVTecDataset(root, "train", image_size=args.image_size), MVTecDataset(root, "test", image_size=args.image_size)
