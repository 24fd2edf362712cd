"""Stress (issue 10): the embedded world at 10× its default size through the world recipe, self-probing and the
factuality eval, with the peak memory (max RSS) of every process.

The model is a small randomly initialised one saved as the run's SFT stage (`--depth`, default 2): what grows with
the world is the data — biographies, questions, snippets, judgments, eval sets — and that is what must not outgrow
memory; a random model answers to `--max_new_tokens` every time, the worst case for generation. The probe samples
every probe-person and stranger question `--num_samples` times; the eval takes every question of every bucket
(no `--max_per_bucket` cap), not the speedrun's 100.

python bench/stress.py                      # 10× (7,000 people), ~25 min on 2 cores
python bench/stress.py --scale 1 --num_samples 1 --max_new_tokens 4    # a quick look
The last line is one JSON object (CONTRACTS §6) with the peak RSS of each stage in MiB and the time it took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measured(name: str, cmd: list[str], env: dict) -> dict:
    """Run `cmd`; its wall time and its own peak RSS (os.wait4's rusage is per child, in KiB on Linux)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{out[-3000:]}")
    record = {"stage": name, "wall_s": round(time.time() - t0, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    print(json.dumps(record), flush=True)
    return record


def random_model(run_dir: Path, depth: int) -> None:
    """A random `depth`-layer Llama with the run's tokenizer, saved as the run's SFT model (chat template on)."""
    from transformers import AutoTokenizer

    from posttrain.modeling import init_model, preset

    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    config = preset(depth, len(tok), 256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id)  # fmt: skip
    model = init_model(config, 0, "sdpa")
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(run_dir / "sft")
    tok.save_pretrained(run_dir / "sft")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=10.0, help="world size, × the default (700 people)")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--num_samples", type=int, default=4, help="probe samples per question (the default config's)")
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--eval_max_per_bucket", type=int, default=10**9, help="default: every eval question")
    p.add_argument("--work", default=None, help="the run folder (default: a temporary one)")
    p.add_argument("--from_run", default=None, help="a run with world/ and tokenizer/: measure probe and eval only")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.work or tmp) / "stress"
        if args.from_run:  # a world and tokenizer made already: only the probe and the eval are measured
            run.mkdir(parents=True)
            for part in ("world", "tokenizer"):
                (run / part).symlink_to(Path(args.from_run).absolute() / part)
            stages = []
        else:
            stages = [
                measured("world", [py, "recipes/world.py", "--config", "recipes/world/world.yaml", "--run_dir",
                                   str(run), "--scale", str(args.scale)], env),
                measured("tokenizer", [py, "recipes/tokenizer.py", "--config", "recipes/world/tokenizer.yaml",
                                       "--run_dir", str(run)], env),
            ]  # fmt: skip
        random_model(run, args.depth)
        stages.append(measured("probe", [py, "recipes/probe.py", "--config", "recipes/world/probe.yaml", "--run_dir",
                                         str(run), "--num_samples", str(args.num_samples), "--max_new_tokens",
                                         str(args.max_new_tokens)], env))  # fmt: skip
        stages.append(measured("eval", [py, "evals/factuality.py", "--model", str(run / "sft"), "--eval_set", str(run),
                                        "--output", str(run / "eval" / "stress.json"), "--max_per_bucket",
                                        str(args.eval_max_per_bucket), "--num_samples", "1", "--max_new_tokens",
                                        str(args.max_new_tokens)], env))  # fmt: skip
        people = json.loads((run / "world" / "lineage.json").read_text()).get("summary", {})
        questions = sum(1 for _ in open(run / "probe" / "questions.jsonl"))
        evaluated = json.loads((run / "eval" / "stress.json").read_text())["buckets"]["overall"]["n"]
    peak = max(s["peak_rss_mib"] for s in stages)
    summary = {"scale": None if args.from_run else args.scale, "world": people, "probe_questions": questions, "eval_questions": evaluated,
               "stages": {s["stage"]: {k: v for k, v in s.items() if k != "stage"} for s in stages},
               "peak_rss_mib": peak, "memory_gib": 24, "fits": peak < 24 * 1024}  # fmt: skip
    print(json.dumps(summary))
    return 0 if summary["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
