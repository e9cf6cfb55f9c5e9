"""The detector registry: one list, filled by the classes' @register decorators, read by the CLI and
the model-file loader."""
import pytest

import fastad.detectors as D
from fastad.detectors import _registry


def test_every_saveable_detector_is_registered():
    for name in D.__all__:
        obj = getattr(D, name)
        if isinstance(obj, type) and hasattr(obj, "save") and name not in ("BaseDetector",):
            assert _registry.get(name) is obj, f"{name} is exported and saveable but not registered"


def test_cli_names_map_to_image_detectors():
    assert set(D.cli_detector_names()) == {"patchcore", "padim", "spade", "gaussian"}
    assert D.cli_detector_class("patchcore") is D.PatchCore
    assert D.cli_detector_class("gaussian") is D.GaussianAD
    assert D.cli_detector_class("knn") is None  # embedding detectors are not fitted from images


def test_register_refuses_a_second_class_under_a_taken_name():
    class PatchCore:  # same class name as a registered detector
        pass

    with pytest.raises(ValueError, match="already registered"):
        _registry.register(PatchCore)

    class Other:
        pass

    with pytest.raises(ValueError, match="CLI name 'patchcore' is already taken"):
        _registry.register(cli="patchcore")(Other)
    assert _registry.get("Other") is Other  # the class name went in before the CLI clash
    _registry._BY_NAME.pop("Other")


def test_register_is_idempotent_for_the_same_class():
    assert _registry.register(D.KNN) is D.KNN
    assert _registry.register(cli="patchcore")(D.PatchCore) is D.PatchCore
