"""Remake docs/report_1400.png, docs/report_800.png and docs/report_zoom.png: the screenshots that
tests/test_report_browser.py takes with headless Chromium of the tests' synthetic report, reduced to
256-colour PNGs so the repository stays small.

    .venv/bin/python tools/report_screenshots.py        # needs Chromium (apt-get install chromium)
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, FASTAD_SCREENSHOTS=tmp)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_report_browser.py"], cwd=ROOT, env=env)
        if r.returncode != 0:
            return r.returncode
        for name in ("report_1400.png", "report_800.png", "report_zoom.png"):
            src = Path(tmp) / name
            if not src.is_file():
                print(f"no {name}: is Chromium installed?", file=sys.stderr)
                return 1
            im = Image.open(src).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
            dst = ROOT / "docs" / name
            im.save(dst, optimize=True)
            print(f"{dst.relative_to(ROOT)}: {im.size[0]}x{im.size[1]}, {dst.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
