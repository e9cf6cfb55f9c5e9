"""The one list of detectors: each detector class registers itself with :func:`register`, and the
model-file loader (:mod:`fastad.detectors._io`) and the CLI read it (anomalib derives its model
registry from the classes the same way). Adding a detector = decorating its class; nothing else
names it.

>>> @register(cli="mydet")                                  # doctest: +SKIP
... class MyDetector(BaseDetector): ...
"""
from __future__ import annotations

_BY_NAME: dict[str, type] = {}  # class name (as recorded in model files) -> class
_BY_CLI: dict[str, type] = {}  # CLI name (``fastad fit --detector NAME``) -> class


def register(cls: type | None = None, *, cli: str | None = None):
    """Class decorator: record ``cls`` under its class name (the ``detector`` field of its model
    files) and, when ``cli`` is given, as the image detector ``fastad fit --detector <cli>`` builds.
    Usable bare (``@register``) or with arguments (``@register(cli="patchcore")``)."""

    def add(c: type) -> type:
        old = _BY_NAME.get(c.__name__)
        if old is not None and old is not c:
            raise ValueError(f"register: a detector named {c.__name__!r} is already registered ({old.__module__})")
        _BY_NAME[c.__name__] = c
        if cli is not None:
            if cli in _BY_CLI and _BY_CLI[cli] is not c:
                raise ValueError(f"register: CLI name {cli!r} is already taken by {_BY_CLI[cli].__name__}")
            _BY_CLI[cli] = c
        return c

    return add(cls) if cls is not None else add


def get(name: str) -> type | None:
    """The detector class recorded under ``name`` (a class name), or None."""
    return _BY_NAME.get(name)


def names() -> list[str]:
    """Every registered class name, sorted."""
    return sorted(_BY_NAME)


def cli_names() -> tuple[str, ...]:
    """The detectors the CLI can fit, in registration order (``patchcore`` first: the default)."""
    return tuple(_BY_CLI)


def cli_class(name: str) -> type | None:
    """The class behind a CLI detector name, or None."""
    return _BY_CLI.get(name)
