"""Every ```python block of README.md runs as pasted (issue 11): each is executed in a fresh namespace,
in a scratch folder where ``../shared/data/mtd`` points at the project's data (the README's paths
are relative to a checkout next to ``shared/``)."""
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DATA = ROOT.parent / "shared" / "data" / "mtd"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_readme_block_runs_as_pasted(i, tmp_path, monkeypatch):
    code = python_blocks()[i]
    if "../shared/data/mtd" in code:
        if not DATA.is_dir():
            pytest.skip(f"the README's data folder {DATA} is not here")
        (tmp_path / "shared" / "data").mkdir(parents=True)
        (tmp_path / "shared" / "data" / "mtd").symlink_to(DATA)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("FASTAD_CACHE", str(tmp_path / "cache"))  # embedding caches of the blocks stay here
    torch.manual_seed(0)
    n = torch.get_num_threads()
    try:
        exec(compile(code, f"README.md python block {i + 1}", "exec"), {"__name__": f"readme_block_{i + 1}"})
    finally:
        torch.set_num_threads(n)
    assert os.getcwd() == str(work)
