"""benchmarks/RESULTS.md is a living report: it cites every raw output kept in benchmarks/results/
(and only files that exist), names only scripts that exist, lists every section in its contents table,
and stays short. No benchmark is run here."""

import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS_MD = BENCH / "RESULTS.md"
MAX_LINES = 400

pytestmark = pytest.mark.skipif(not RESULTS_MD.is_file(), reason="no benchmarks/RESULTS.md (not a source checkout)")


def _text() -> str:
    return RESULTS_MD.read_text(encoding="utf-8")


def _cited_results(text: str) -> set[str]:
    """File names cited as `results/<name>.<ext>` (a path with a file extension)."""
    return set(re.findall(r"results/([\w.\-]+\.[A-Za-z0-9]+)\b", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _\-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_kept_output_is_cited():
    kept = {p.name for p in (BENCH / "results").iterdir() if p.is_file()}
    uncited = sorted(kept - _cited_results(_text()))
    assert not uncited, (
        f"benchmarks/results/ holds files that RESULTS.md does not cite: {uncited}; "
        "cite the latest output of each benchmark and `git rm` superseded ones"
    )


def test_every_cited_output_exists():
    missing = sorted(n for n in _cited_results(_text()) if not (BENCH / "results" / n).is_file())
    assert not missing, f"RESULTS.md cites files missing from benchmarks/results/: {missing}"


def test_every_cited_script_exists():
    root = BENCH.parent
    scripts = set(re.findall(r"(benchmarks/[\w/\-]+\.(?:py|sh|c))\b", _text()))
    missing = sorted(s for s in scripts if not (root / s).is_file())
    assert not missing, f"RESULTS.md names scripts that do not exist: {missing}"


def test_every_section_is_in_the_contents_table():
    text = _text()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings, "RESULTS.md has no `## <topic>` sections"
    missing = [h for h in headings if f"(#{_slug(h)})" not in text]
    assert not missing, f"sections without a line in the contents table: {missing}"


def test_report_is_short():
    n = len(_text().splitlines())
    assert n < MAX_LINES, f"RESULTS.md has {n} lines, expected under {MAX_LINES}: replace superseded figures"
