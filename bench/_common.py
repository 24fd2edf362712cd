"""What the benchmarks share: a run folder with the default world and its tokenizer, made by the real recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_world_run(run_dir: str | Path, world_args=(), tokenizer_args=()) -> Path:
    """`recipes/world.py` then `recipes/tokenizer.py` with their default configs (plus the given arguments) into
    `run_dir`."""
    for stage, extra in (("world", world_args), ("tokenizer", tokenizer_args)):
        cmd = [sys.executable, str(REPO / "recipes" / f"{stage}.py"), "--config",
               str(REPO / f"recipes/world/{stage}.yaml"), "--run_dir", str(run_dir), *extra]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
    return Path(run_dir)


def random_world_model(args):
    """(model, tokenizer, chat prompts) for the generation benchmarks: `args.threads` torch threads, a depth-4
    world model with random weights (every answer runs to max_new_tokens), the default world's tokenizer and its
    first `args.questions` questions as one-turn chats. Adds nothing to `args`."""
    import tempfile

    import torch
    from transformers import AutoTokenizer

    from posttrain.modeling import init_model, preset
    from posttrain.world import load_world

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        make_world_run(tmp)
        tok = AutoTokenizer.from_pretrained(Path(tmp) / "tokenizer")
        questions = load_world(Path(tmp) / "world")["qa"]["question"][: args.questions]
    cfg = preset(4, len(tok), 512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id)  # fmt: skip
    return init_model(cfg, seed=0).eval(), tok, [[{"role": "user", "content": q}] for q in questions]


def add_common_args(p, max_new_tokens: int) -> None:
    """The flags both generation benchmarks take."""
    p.add_argument("--questions", type=int, default=128)
    p.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
