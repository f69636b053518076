"""The README's Python examples run as they are written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python_block_under(heading: str) -> str:
    """The first ```python block after `heading` in README.md."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python example under {heading!r}"
    return match.group(1)


def test_the_rank_launcher_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_python_block_under("### The rank launcher"))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
