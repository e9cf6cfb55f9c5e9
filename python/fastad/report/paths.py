"""Paths as a report shows them: relative to the data root, never an absolute local path.

A report folder is shared (mailed, attached to a ticket, published): it must not reveal where the data,
the model or the user's home folder live on the machine that wrote it. Every path that reaches a file
of the report goes through :class:`PathScrubber`:

* a file under the data root -> its path relative to that root (``test/crack/000.png``);
* the data root itself -> its folder name (``mtd``);
* under the current folder -> relative to it (``models/run.safetensors``);
* under the home folder -> ``~/...``;
* any other absolute path -> ``.../<parent>/<name>`` (its last two components).

Free text (an ``info`` value such as an error or a settings line) is scrubbed too: every absolute
path inside it is replaced the same way. Paths are written with ``/`` on every system.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePath

__all__ = ["PathScrubber", "common_root"]

# an absolute POSIX path inside free text: "/" not preceded by a word character, two segments at least
_ABS_IN_TEXT = re.compile(r"(?<![\w.~/])(/(?:[^\s'\"<>|,;:()\[\]{}]+/)+[^\s'\"<>|,;:()\[\]{}]*)")


def _norm(p) -> str:
    """An absolute, normalised path string (symbolic links not resolved: the user's spelling is kept)."""
    return os.path.normpath(os.path.abspath(os.fspath(p)))


def common_root(paths: Iterable) -> Path | None:
    """The deepest folder holding every path of ``paths`` (their common parent), or None when empty."""
    parents = [os.path.dirname(_norm(p)) for p in paths]
    if not parents:
        return None
    try:
        return Path(os.path.commonpath(parents))
    except ValueError:  # different drives (Windows)
        return None


def _posix(rel: str) -> str:
    return PurePath(rel).as_posix()


class PathScrubber:
    """Turns paths and text into their report form (see the module docstring).

    Args:
        data_root: the folder the images were read from (their paths are shown relative to it).
        cwd: the current folder (default ``os.getcwd()``).
        home: the home folder (default ``Path.home()``).

    Example:
        >>> s = PathScrubber("/data/mtd", cwd="/work", home="/home/me")
        >>> s.path("/data/mtd/test/crack/000.png"), s.path("/data/mtd"), s.path("/home/me/m.pt")
        ('test/crack/000.png', 'mtd', '~/m.pt')
        >>> s.text("model /work/runs/a.pt on /data/mtd")
        'model runs/a.pt on mtd'
    """

    def __init__(self, data_root=None, *, cwd=None, home=None):
        self.data_root = None if data_root is None else _norm(data_root)
        self.cwd = _norm(os.getcwd() if cwd is None else cwd)
        try:
            h = Path.home() if home is None else home
            self.home: str | None = _norm(h)
        except (RuntimeError, KeyError):  # no home folder known
            self.home = None
        # spellings of the data root that may appear (as given, absolute, symbolic links resolved)
        roots = {self.data_root} if self.data_root else set()
        if self.data_root:
            try:
                roots.add(os.path.realpath(self.data_root))
            except OSError:
                pass
        self._data_roots = sorted(roots, key=len, reverse=True)

    @property
    def root_name(self) -> str:
        """How the data root is shown: its folder name (``"."`` when unknown)."""
        if not self.data_root:
            return "."
        return os.path.basename(self.data_root) or "."

    @staticmethod
    def _under(p: str, root: str) -> str | None:
        if p == root:
            return ""
        prefix = root if root.endswith(os.sep) else root + os.sep
        return p[len(prefix):] if p.startswith(prefix) else None

    def path(self, p) -> str:
        """The report form of the path ``p`` (a relative ``p`` is taken as relative to the data root
        when it exists there, else to the current folder)."""
        s = os.fspath(p)
        if s == "":
            return s
        if not os.path.isabs(s):
            if self.data_root and os.path.exists(os.path.join(self.data_root, s)):
                return _posix(os.path.normpath(s))
            s = os.path.join(self.cwd, s)
        a = _norm(s)
        for root in self._data_roots:
            rel = self._under(a, root)
            if rel is not None:
                return _posix(rel) if rel else self.root_name
        for root, show in ((self.cwd, None), (self.home, "~")):
            if not root or root == os.sep:
                continue
            rel = self._under(a, root)
            if rel is not None:
                if show is None:
                    return _posix(rel) if rel else "."
                return show + ("/" + _posix(rel) if rel else "")
        parts = PurePath(a).parts[1:]
        return ".../" + "/".join(parts[-2:]) if parts else "."

    def text(self, t: str) -> str:
        """``t`` with every absolute path in it replaced by its report form."""
        if os.path.isabs(t) and not any(c in t for c in "\n\t"):
            return self.path(t)
        return _ABS_IN_TEXT.sub(lambda m: self.path(m.group(1)), t)

    def value(self, v):
        """A JSON-like value (dicts, lists, strings, numbers) with every string scrubbed (:meth:`text`)."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, PurePath):
            return self.path(v)
        if isinstance(v, dict):
            return {self.text(str(k)) if isinstance(k, (str, PurePath)) else k: self.value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        return v
