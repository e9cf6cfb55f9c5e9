"""Look at a report in a real browser: find Chromium (or Chrome) and run it headless, to take a
screenshot of a page at a given window size or to dump its DOM after layout (used by the tests and
to make the screenshots of the documentation).

Example::

    from fastad.report import browser
    exe = browser.find_chromium()            # None when no Chromium is installed
    browser.screenshot("reports/run/index.html", "shot.png", width=1400, height=1000)

Nothing is downloaded: a Chromium already installed is used (``apt-get install chromium``), or the
executable named by the environment variable ``FASTAD_CHROMIUM``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["find_chromium", "page_url", "screenshot", "dump_dom", "BrowserError"]

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")


class BrowserError(RuntimeError):
    """Chromium failed (its exit status and the end of its output are in the message)."""


def find_chromium() -> str | None:
    """The Chromium / Chrome executable: ``$FASTAD_CHROMIUM`` when set, else the first of
    ``chromium``, ``chromium-browser``, ``google-chrome``, ... on ``PATH``; None when there is none."""
    env = os.environ.get("FASTAD_CHROMIUM")
    if env:
        return env if (os.path.isfile(env) and os.access(env, os.X_OK)) else shutil.which(env)
    for n in _NAMES:
        exe = shutil.which(n)
        if exe:
            return exe
    return None


def page_url(page, fragment: str = "") -> str:
    """``file://`` URL of the local file ``page`` (``fragment``: e.g. ``"z0-3-heatmap"``, no ``#``)."""
    url = Path(page).resolve().as_uri()
    return url + ("#" + fragment if fragment else "")


def _run(args: list[str], width: int, height: int, timeout: float, exe: str | None) -> subprocess.CompletedProcess:
    exe = exe or find_chromium()
    if exe is None:
        raise BrowserError("no Chromium found: install it (apt-get install chromium) or set FASTAD_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="fastad-chromium-") as profile:
        cmd = [
            exe, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio", "--force-device-scale-factor=1",
            f"--user-data-dir={profile}", f"--window-size={int(width)},{int(height)}",
            # images below the fold are lazy: give them (virtual) time to arrive before the capture
            "--virtual-time-budget=3000",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        cmd += args
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise BrowserError(f"Chromium did not finish within {timeout:g} s") from err
    if p.returncode != 0:
        raise BrowserError(f"Chromium exited with status {p.returncode}: {(p.stderr or '')[-800:]}")
    return p


def screenshot(page, out_png, *, width: int = 1400, height: int = 1000, fragment: str = "", timeout: float = 90.0,
               exe: str | None = None) -> Path:
    """Open ``page`` (a local HTML file, at ``#fragment``) in headless Chromium with a
    ``width`` x ``height`` window and save the visible part as the PNG ``out_png``. Returns its path."""
    out = Path(out_png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    _run([f"--screenshot={out}", page_url(page, fragment)], width, height, timeout, exe)
    if not out.is_file():
        raise BrowserError(f"Chromium wrote no screenshot to {out}")
    return out


def dump_dom(page, *, width: int = 1400, height: int = 1000, fragment: str = "", timeout: float = 90.0,
             exe: str | None = None) -> str:
    """The DOM of ``page`` after it loaded (and its scripts ran) in a ``width`` x ``height`` window,
    serialised as HTML (``chromium --dump-dom``)."""
    return _run(["--dump-dom", page_url(page, fragment)], width, height, timeout, exe).stdout
