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


def random_world_model(n_questions: int, depth: int = 4):
    """(model, tokenizer, questions): a depth-`depth` world model with random weights (every answer runs to
    max_new_tokens), the default world's tokenizer and its first `n_questions` questions."""
    import tempfile

    from transformers import AutoTokenizer

    from posttrain.modeling import init_model, preset
    from posttrain.world import load_world

    with tempfile.TemporaryDirectory() as tmp:
        make_world_run(tmp)
        tok = AutoTokenizer.from_pretrained(Path(tmp) / "tokenizer")
        questions = load_world(Path(tmp) / "world")["qa"]["question"][:n_questions]
    cfg = preset(depth, len(tok), 512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id)  # fmt: skip
    return init_model(cfg, seed=0).eval(), tok, questions
