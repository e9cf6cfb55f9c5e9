"""Output safety: the one place where fastad decides whether it may write a file, and how it writes it.

The rule, for every command: fastad never deletes or overwrites a file it did not create.

* **Report folders** (``predict``, ``evaluate``, ``zeroshot``, ``demo``) carry a manifest,
  ``.fastad-report.json``, listing every file fastad wrote there. :func:`check_report_dir` runs
  *before any work*: a missing or empty folder is fine; a folder with a manifest is a fastad report
  and re-running into it replaces only the files of its manifest (files of the old report that the
  new one does not write are removed, those only); a non-empty folder without a manifest is refused
  (:class:`UsageError`) unless ``overwrite=True``, and even then fastad only adds files next to
  the user's: a name the report needs (``index.html``, ``heatmaps/``, ...) that is already there and
  not fastad's is refused up front.
* **A report is written whole or not at all**: its files are written into a hidden staging folder
  (``.fastad-staging-*``) inside the report folder and moved into place only when every one of them
  is written (:meth:`ReportDir.finish`); a failed or interrupted run (:meth:`ReportDir.abort`)
  removes the staging folder, so an earlier report there stays as it was and a new folder is removed.
* **Model files** (``fit --out``): :func:`check_model_path` refuses a folder, a missing or
  read-only parent folder, and an existing file unless ``overwrite=True``.
* **Writes are atomic** (:func:`atomic_write`): a temporary file in the target's folder, flushed
  and fsynced, then renamed over the target; the temporary file is removed on any failure
  (``KeyboardInterrupt`` included). The final file gets the user's normal mode (``0o666 & ~umask``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["UsageError", "MANIFEST", "ReportDir", "check_report_dir", "check_model_path", "atomic_write",
           "atomic_path", "check_not_inside"]

#: Name of the manifest file of a report folder.
MANIFEST = ".fastad-report.json"
_MANIFEST_FORMAT = "fastad-report-manifest"
_SPOOL_PREFIX = ".fastad-spool-"
_STAGING_PREFIX = ".fastad-staging-"  # files of a report being written (moved into place at the end)
#: Top-level names a report may write (files and folders); checked up front in a non-fastad folder.
REPORT_NAMES = ("index.html", "metrics.json", "scores.csv", "colorbar.png", "heatmaps", "images")


class UsageError(ValueError):
    """A refused output path (or another user error): one line, exit status 2 in the CLI."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _final_mode() -> int:
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path, *, mode: int | None = None):
    """Yield a temporary path next to ``path``; on a clean exit it is fsynced and renamed to ``path``.

    The temporary file is removed on any exception (including ``KeyboardInterrupt``), so a failure
    never leaves a half-written ``path`` nor a stray temporary file. ``mode`` (default
    ``0o666 & ~umask``, the mode ``open()`` gives a new file) is applied before the rename.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".fastad-tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_write(path, mode: str = "wb", *, encoding: str | None = None, newline: str | None = None):
    """``with atomic_write(path, "w") as f: f.write(...)``: write through an open temporary file,
    renamed to ``path`` only when the block succeeds (see :func:`atomic_path`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        kw = {} if mode == "wb" else {"encoding": encoding or "utf-8", "newline": newline}
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()


def _nearest_existing(p: Path) -> Path:
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    return q


def _check_writable_parent(p: Path, what: str, option: str) -> None:
    parent = _nearest_existing(p.parent)
    if not parent.is_dir():
        raise UsageError(f"{option} {str(p)!r}: {str(parent)!r} is a file, so the {what} cannot be created there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {str(p)!r}: the folder {str(parent)!r} is not writable")


def check_model_path(path, overwrite: bool = False, *, option: str = "--out") -> Path:
    """Validate a model file to be written, before any work: not a folder; an existing file only with
    ``overwrite``; its folder (created when missing) writable. Returns the path."""
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise UsageError(f"{option} {str(path)!r}: give a file name for the model, e.g. model.safetensors")
    if p.is_dir():
        raise UsageError(f"{option} {str(p)!r} is a folder; give a model file name, e.g. {str(p / 'model.safetensors')!r}")
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise UsageError(f"{option} {str(p)!r} already exists; choose another file name or pass --overwrite to replace it")
        if not p.is_file():
            raise UsageError(f"{option} {str(p)!r} exists and is not a regular file; choose another file name")
    _check_writable_parent(p, "model file", option)
    return p


def _read_manifest(d: Path) -> dict | None:
    m = d / MANIFEST
    if not m.is_file():
        return None
    try:
        doc = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != _MANIFEST_FORMAT or not isinstance(doc.get("files"), list):
        return None
    return doc


def _safe_rel(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts


class ReportDir:
    """A report folder checked by :func:`check_report_dir`; writes go through :meth:`open` /
    :meth:`path_for` into a hidden staging folder inside it, and :meth:`finish` moves them into place,
    removes the stale files of the previous report (only files that fastad's manifest lists) and
    writes the new manifest. :meth:`abort` (a failed or interrupted run) removes the staged files and
    leaves the folder as it was: an earlier report stays whole, a folder this run created is removed.

    Usage::

        rd = check_report_dir("reports/run", overwrite=False)   # before any work
        rd.plan(["index.html", "scores.csv", "heatmaps/00000_a.png"])   # names about to be written
        with rd.open("scores.csv", "w") as f: ...
        rd.finish()            # or rd.abort() when the run fails
    """

    def __init__(self, path: Path, old_files: set[str], existed: bool, overwrite: bool):
        self.path = path
        self._old = old_files  # files of the previous fastad report here (from its manifest)
        self._existed = existed
        self.overwrite = overwrite
        self._written: set[str] = set()  # staged, moved into place by finish()
        self._planned: set[str] = set()
        self._prepared = False
        self._created: list[Path] = []  # folders prepare() created, outermost first
        self._manifest_before: bytes | None = None  # the manifest found here (restored by abort)
        self._staging: Path | None = None
        self._committing = False
        self._done = False

    # ---------------------------------------------------------------- set-up
    def prepare(self) -> None:
        """Create the folder and record the manifest (old files still listed: a crash leaves them ours)."""
        if self._prepared:
            return
        missing, q = [], self.path
        while not (q.exists() or q.is_symlink()) and q != q.parent:
            missing.append(q)
            q = q.parent
        self.path.mkdir(parents=True, exist_ok=True)
        self._created = list(reversed(missing))
        m = self.path / MANIFEST
        if m.is_file() and not m.is_symlink():
            try:
                self._manifest_before = m.read_bytes()
            except OSError:
                self._manifest_before = None
        self._prepared = True
        self._write_manifest(complete=False)

    def spool(self):
        """A temporary binary file in the report folder, removed when closed (on Linux it never has a
        name: ``O_TMPFILE``; elsewhere ``.fastad-spool-*``, unlinked at once)."""
        self.prepare()
        return tempfile.TemporaryFile(dir=self.path, prefix=_SPOOL_PREFIX)

    def _staging_dir(self) -> Path:
        self.prepare()
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self.path))
        return self._staging

    def _check_target(self, rel: str) -> Path:
        if not _safe_rel(rel):
            raise ValueError(f"ReportDir: {rel!r} is not a relative path inside the report")
        target = self.path / rel
        # never write through a link: a sub-folder replaced by a link to the user's files
        for parent in reversed(Path(rel).parents[:-1]):
            d = self.path / parent
            if d.is_symlink() or (d.exists() and not d.is_dir()):
                raise UsageError(
                    f"the report folder {str(self.path)!r} holds {str(parent)!r}, which is not a folder fastad "
                    "made (a file or a link); choose another --out"
                )
        if (target.exists() or target.is_symlink()) and rel not in self._old:
            raise UsageError(
                f"the report folder {str(self.path)!r} already holds {rel!r}, which fastad did not write; "
                "choose another --out (fastad never overwrites files it did not create)"
            )
        if target.is_dir():
            raise UsageError(f"the report folder {str(self.path)!r} holds a folder {rel!r} where a file goes")
        return target

    def plan(self, rels) -> None:
        """Declare files about to be written: each is checked (never a file fastad did not write) before
        the first byte is written."""
        self.prepare()
        rels = list(rels)
        for rel in rels:
            self._check_target(rel)
        self._planned |= set(rels)

    def _staged(self, rel: str) -> Path:
        if self._done:
            raise RuntimeError("ReportDir: the report is already finished")
        if rel not in self._planned:
            self.plan([rel])
        else:
            self._check_target(rel)
        staged = self._staging_dir() / rel
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    @contextmanager
    def open(self, rel: str, mode: str = "wb", **kw):
        """Write the report file ``rel`` (staged, atomically; moved into place by :meth:`finish`)."""
        with atomic_write(self._staged(rel), mode, **kw) as f:
            yield f
        self._written.add(rel)

    @contextmanager
    def path_for(self, rel: str):
        """Yield a temporary path to write ``rel`` to (e.g. ``PIL.Image.save(tmp, format="PNG")``)."""
        with atomic_path(self._staged(rel)) as tmp:
            yield tmp
        self._written.add(rel)

    # ---------------------------------------------------------------- end
    def finish(self) -> list[str]:
        """Move the staged files into place, remove the old report's files this run did not rewrite
        (only manifest-listed ones) and the empty sub-folders they leave, and write the final manifest.
        Returns the removed names."""
        self.prepare()
        if self._done:
            raise RuntimeError("ReportDir.finish: called twice")
        new = sorted(self._written)
        for rel in new:  # again, just before moving: nothing of the user's appeared there meanwhile
            self._check_target(rel)
        self._committing = True  # from here on the new files are listed: an interrupted move leaves them ours
        self._planned = set(new)
        self._write_manifest(complete=False)
        for rel in new:
            target = self.path / rel
            if target.parent != self.path:
                target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._staging_dir() / rel, target)
        self._remove_staging()
        removed = []
        for rel in sorted(self._old - self._written):
            p = self.path / rel
            # never through a symbolic link (a sub-folder replaced by a link to the user's files)
            inside = _safe_rel(rel) and p.resolve() == self.path.resolve() / rel
            if inside and p.is_file() and not p.is_symlink():
                p.unlink()
                removed.append(rel)
        for sub in sorted({str(Path(r).parent) for r in removed if str(Path(r).parent) != "."}, key=len, reverse=True):
            d = self.path / sub
            try:
                d.rmdir()  # only when empty: a user's file there keeps it
            except OSError:
                pass
        self._old = set()
        self._write_manifest(complete=True)
        self._done = True
        return removed

    def abort(self) -> None:
        """Undo an unfinished report (a failure or an interruption before :meth:`finish` moved any
        file): the staged files are removed, the earlier manifest is restored (or this run's removed)
        and the folders this run created are removed when empty. Nothing else is touched."""
        if self._done or not self._prepared:
            return
        self._remove_staging()
        if self._committing:  # files were being moved: the manifest lists old and new ones, keep it
            return
        m = self.path / MANIFEST
        try:
            if self._manifest_before is not None:
                with atomic_write(m, "wb") as f:
                    f.write(self._manifest_before)
            elif m.is_file() and not m.is_symlink():
                m.unlink()
        except OSError:
            pass
        for d in reversed(self._created):  # innermost first; a folder holding anything stays
            try:
                d.rmdir()
            except OSError:
                break
        self._done = True

    def _remove_staging(self) -> None:
        st, self._staging = self._staging, None
        if st is not None and st.is_dir() and not st.is_symlink() and st.parent == self.path:
            shutil.rmtree(st, ignore_errors=True)

    def _write_manifest(self, complete: bool) -> None:
        files = sorted(self._written | self._planned | self._old) if self._committing or complete else sorted(self._old)
        doc = {
            "format": _MANIFEST_FORMAT,
            "version": 1,
            "note": "files written by fastad; re-running fastad into this folder replaces or removes these only",
            "complete": complete,
            "files": files,
        }
        with atomic_write(self.path / MANIFEST, "w") as f:
            json.dump(doc, f, indent=1)


_LEGACY_PNG = re.compile(r"^\d{5}_.+\.png$")


def _legacy_report_files(d: Path, entries: list[str]) -> set[str] | None:
    """The files of a report written by a fastad without manifests, or None when ``d`` is not exactly
    that: only report names, ``index.html`` + ``metrics.json`` (fastad's keys) + ``scores.csv``, and
    ``heatmaps/`` / ``images/`` holding only ``NNNNN_*.png`` files (and ``heatmaps/index.html``, the
    heatmap gallery, when its manifest was lost)."""
    names = set(entries) - {n for n in entries if n.startswith(".maps-") and n.endswith(".f16")}
    if not names <= set(REPORT_NAMES) or not {"index.html", "metrics.json", "scores.csv"} <= names:
        return None
    try:
        doc = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or set(doc) != {"metrics", "per_type", "timings", "summary", "info"}:
        return None
    files = {n for n in names if (d / n).is_file()}
    for sub in ("heatmaps", "images"):
        if sub in names:
            if not (d / sub).is_dir():
                return None
            for e in (d / sub).iterdir():
                gallery = sub == "heatmaps" and e.name == "index.html"
                if not (e.is_file() and (_LEGACY_PNG.match(e.name) or gallery)):
                    return None
                files.add(f"{sub}/{e.name}")
    return files


def check_report_dir(path, overwrite: bool = False, *, option: str = "--out") -> ReportDir:
    """Validate a report folder before any work (see the module docstring); returns a :class:`ReportDir`.

    Nothing is created or written here; the folder is created by the first write."""
    p = Path(path)
    if str(path) == "":
        raise UsageError(f"{option}: give a folder for the report")
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {str(p)!r} is a file, not a folder; give a (new or empty) folder for the report")
    if p.is_symlink() and not p.exists():
        raise UsageError(f"{option} {str(p)!r} is a broken symbolic link; give a (new or empty) folder for the report")
    if not p.exists():
        _check_writable_parent(p, "report folder", option)
        return ReportDir(p, set(), existed=False, overwrite=overwrite)
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {str(p)!r}: the folder is not writable")
    # left by fastad itself: a spool, or the staging folder of a run that was killed (never removed by
    # another run, which might be writing it now)
    entries = [e.name for e in p.iterdir() if not e.name.startswith((_SPOOL_PREFIX, _STAGING_PREFIX))]
    doc = _read_manifest(p)
    if doc is not None:
        old = {str(f) for f in doc["files"] if isinstance(f, str) and _safe_rel(f)}
        return ReportDir(p, old, existed=True, overwrite=overwrite)
    if not entries:
        return ReportDir(p, set(), existed=True, overwrite=overwrite)
    legacy = _legacy_report_files(p, entries)
    if legacy is not None:  # a report of a fastad without manifests: its files are fastad's
        return ReportDir(p, legacy, existed=True, overwrite=overwrite)
    if not overwrite:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise UsageError(
            f"{option} {str(p)!r} is not empty ({shown}) and is not a fastad report; give a new or empty folder "
            "(or pass --overwrite to add the report next to those files)"
        )
    clash = [n for n in REPORT_NAMES if (p / n).exists() or (p / n).is_symlink()]
    if clash:
        raise UsageError(
            f"{option} {str(p)!r} already holds {', '.join(clash)}, which fastad did not write; give a new or "
            "empty folder (fastad never overwrites files it did not create, even when asked to overwrite)"
        )
    return ReportDir(p, set(), existed=True, overwrite=overwrite)


def check_not_inside(out, data, *, option: str = "--out", data_option: str = "--data") -> None:
    """Refuse an output folder that is the input folder or inside it (the report's PNGs would be read
    as input images by the next run, and the user's images would share a folder with fastad's)."""
    try:
        o, d = Path(out).resolve(), Path(data).resolve()
    except OSError:
        return
    if o == d or d in o.parents:
        raise UsageError(
            f"{option} {str(out)!r} is inside {data_option} {str(data)!r}; write the report outside the input "
            "images (e.g. --out reports/run)"
        )
