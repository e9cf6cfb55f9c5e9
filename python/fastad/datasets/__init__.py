"""Adapters for public datasets that install from PyPI (loaded offline, never downloaded at run time).

- :mod:`fastad.datasets.elpv`: ELPV electroluminescence solar-cell images (``elpv-dataset`` wheel).
"""
from .elpv import ELPVDataset, load_elpv

__all__ = ["ELPVDataset", "load_elpv"]
