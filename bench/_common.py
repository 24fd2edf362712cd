"""What the benchmarks share: a run folder with the default world and its tokenizer, made by the real recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_world_run(run_dir: str | Path) -> Path:
    """`recipes/world.py` then `recipes/tokenizer.py` with their default configs into `run_dir`."""
    for stage in ("world", "tokenizer"):
        cmd = [sys.executable, str(REPO / "recipes" / f"{stage}.py"), "--config",
               str(REPO / f"recipes/world/{stage}.yaml"), "--run_dir", str(run_dir)]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    return Path(run_dir)
