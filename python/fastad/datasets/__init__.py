"""Adapters for public datasets that install from PyPI (loaded offline, never downloaded at run time).

- :mod:`fastad.datasets.elpv`: ELPV electroluminescence solar-cell images (``elpv-dataset`` wheel).
- :mod:`fastad.datasets.sensors`: labelled multichannel sensor series (``aeon`` wheel) -> window features.
"""
from .elpv import ELPVDataset, load_elpv
from .sensors import SensorTask, load_sensor_task

__all__ = ["ELPVDataset", "load_elpv", "SensorTask", "load_sensor_task"]
