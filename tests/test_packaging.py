"""The wheel pins the torch it was built against, and importing fastad under another torch fails with a
message naming both versions (issue 11)."""
import importlib.metadata as md
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _provider():
    spec = importlib.util.spec_from_file_location("fastad_torch_pin", ROOT / "tools" / "build" / "fastad_torch_pin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_provider_pins_the_installed_torch():
    p = _provider()
    deps = p.dynamic_metadata({"base": ["numpy", "pillow"]}, {})["dependencies"]
    public = torch.__version__.split("+")[0]
    assert deps == [f"torch=={public}", "numpy", "pillow"]
    with pytest.raises(RuntimeError, match="leave torch out"):
        p.dynamic_metadata({"base": ["torch>=2"]}, {})


def test_provider_without_torch_says_how_to_build(monkeypatch):
    p = _provider()

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", missing)
    with pytest.raises(RuntimeError, match="no-build-isolation"):
        p.torch_requirement()


def test_installed_metadata_pins_this_torch():
    try:
        reqs = md.requires("fastad") or []
    except md.PackageNotFoundError:
        pytest.skip("fastad is not installed as a distribution (run from a source tree)")
    torch_reqs = [r for r in reqs if r.split(";")[0].replace(" ", "").startswith("torch")]
    assert torch_reqs == [f"torch=={torch.__version__.split('+')[0]}"], reqs


def test_import_under_another_torch_names_both_versions(monkeypatch):
    from fastad import _library

    monkeypatch.setattr(_library, "_sidecar", lambda: {"torch": "2.99.0"})
    with pytest.raises(ImportError) as e:
        _library._load()
    msg = str(e.value)
    assert "2.99.0" in msg and torch.__version__ in msg and "Rebuild" in msg
    assert "\n" not in msg


def test_import_in_a_fresh_process_with_a_faked_sidecar(tmp_path):
    """The real import path: a copy of the installed package (Python files + extension) whose sidecar
    names another torch refuses to import, naming both versions."""
    import json
    import shutil
    import subprocess

    import fastad

    spec = importlib.util.find_spec("fastad._C")
    so = Path(spec.origin)
    sidecar = so.parent / "_build_config.json"
    if not sidecar.is_file():
        pytest.skip("no _build_config.json next to the extension")
    dst = tmp_path / "fastad"
    shutil.copytree(Path(fastad.__file__).resolve().parent, dst, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(so, dst / so.name)
    doc = json.loads(sidecar.read_text())
    doc["torch"] = "2.99.0"
    (dst / "_build_config.json").write_text(json.dumps(doc))
    code = ("import sys; sys.meta_path = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]; "
            f"sys.path.insert(0, {str(tmp_path)!r}); import fastad")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "fastad was compiled against torch 2.99.0 but torch" in r.stderr and torch.__version__ in r.stderr, r.stderr
