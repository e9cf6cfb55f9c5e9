"""Runs the first ```python block of README.md (``make wheel-check`` runs it in a fresh venv with the
installed wheel, from a folder outside the checkout, so ``import fastad`` is the wheel's)."""
import re
import sys
from pathlib import Path

import fastad

readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md").read_text()
blocks = re.findall(r"^```python\n(.*?)^```", readme, flags=re.S | re.M)
if not blocks:
    sys.exit("readme_example: README.md has no ```python block")
if "site-packages" not in fastad.__file__:
    sys.exit(f"readme_example: fastad was imported from {fastad.__file__}, not from an installed wheel")
print(f"readme_example: fastad {fastad.__version__} from {fastad.__file__}; running the first python block "
      f"({len(blocks[0].splitlines())} lines)")
exec(compile(blocks[0], "README.md:first-python-block", "exec"), {"__name__": "__main__"})
print("readme_example: OK")
