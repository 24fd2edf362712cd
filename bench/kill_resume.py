"""Kill and resume (issue 10): SIGKILL pretraining, SFT and GRPO at random moments, resume each time with
`--resume_from_checkpoint latest`, and compare the finished run with an uninterrupted one.

For each stage: one uninterrupted run, then a chain of `--kills` runs each killed with SIGKILL at a random moment
(after a randomly drawn checkpoint has appeared, plus a random delay of up to one checkpoint interval, so kills land
mid-step and mid-save alike), then one last resume that finishes. After every kill the checkpoint `latest` names is
read back in full (trainer state, every safetensors file, every torch state file with `weights_only=True`). At the
end, step by step against the uninterrupted run:
  - every optimizer step is logged exactly once (no step lost or repeated);
  - the data each step trained on is the same: pretraining logs a checksum of the token ids of every step, the TRL
    stages the running count of tokens trained on (a skipped or repeated batch shifts it);
  - the loss of every step, and the final loss within 1 %; the exported weights.

python bench/kill_resume.py                              # 5 kills in each of pretrain, SFT, GRPO (~6 min, 2 cores)
python bench/kill_resume.py --stages pretrain --kills 2  # a part
The last line is one JSON object (CONTRACTS §6); the exit code is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _common import make_world_run  # noqa: E402

TINY_WORLD = ["--n_sft", "30", "--n_probe", "30", "--n_eval_known", "15", "--n_eval_rare", "15", "--n_never_seen", "15"]
# Each stage: its recipe, arguments (a tiny model, a checkpoint every step or two, a log line every step), the
# folder its checkpoints go to, and the stages it reads (linked in from the uninterrupted pretraining/SFT runs).
STAGES = {
    "pretrain": {
        "recipe": "pretrain",
        "args": ["--config", "recipes/world/pretrain.yaml", "--depth", "2", "--seq_len", "64",
                 "--global_batch_tokens", "2048", "--per_device_batch_size", "8", "--log_every", "1",
                 "--eval_every", "0", "--save_every", "2", "--keep_last", "2"],
        "steps": 30,
        "ckpt": "checkpoints/pretrain",
        "needs": ["world", "tokenizer"],
    },
    "sft": {
        "recipe": "sft",
        "args": ["--config", "recipes/world/sft.yaml", "--per_device_train_batch_size", "8", "--max_length", "64",
                 "--logging_steps", "1", "--save_steps", "2", "--save_total_limit", "2", "--eval_after", "false",
                 "--train_sampling_strategy", "random", "--warmup_steps", "2"],
        "steps": 30,
        "ckpt": "checkpoints/sft",
        "needs": ["world", "tokenizer", "pretrain"],
    },
    "grpo": {
        "recipe": "grpo",
        "args": ["--config", "recipes/world/grpo.yaml", "--parent", "sft", "--prompts", "world",
                 "--prompt_splits", "sft", "--per_device_train_batch_size", "8", "--num_generations", "4",
                 "--max_completion_length", "8", "--logging_steps", "1", "--save_steps", "2",
                 "--save_total_limit", "2", "--eval_after", "false", "--warmup_steps", "0"],
        "steps": 16,
        "ckpt": "checkpoints/grpo",
        "needs": ["world", "tokenizer", "sft"],
    },
}  # fmt: skip


def stage_cmd(stage: str, run_dir: Path, steps: int, resume: bool) -> list[str]:
    spec = STAGES[stage]
    cmd = [sys.executable, str(REPO / "recipes" / f"{spec['recipe']}.py"), *spec["args"], "--run_dir", str(run_dir)]
    cmd += ["--max_steps", str(steps)]
    return cmd + (["--resume_from_checkpoint", "latest"] if resume else [])


def newest_step(ckpt: Path) -> int:
    """The step of the checkpoint `latest` names (0 when none yet)."""
    pointer = ckpt / "latest"
    if not pointer.is_file():
        return 0
    name = pointer.read_text().strip()
    return int(name.replace("step_", "").replace("checkpoint-", "") or 0)


def check_checkpoint(ckpt: Path) -> dict:
    """Read back everything in the checkpoint `latest` names; {"name", "ok", "files", "problem"}."""
    from accelerate.utils import load as torch_load  # torch.load(weights_only=True) + accelerate's numpy allowlist
    from safetensors.torch import load_file

    pointer = ckpt / "latest"
    if not pointer.is_file():
        return {"name": None, "ok": True, "files": 0, "problem": None}
    name = pointer.read_text().strip()
    path, files = ckpt / name, 0
    try:
        json.loads((path / "trainer_state.json").read_text())
        for f in sorted(path.rglob("*")):
            if f.suffix == ".safetensors":
                load_file(f)
            elif f.suffix in (".bin", ".pt", ".pth", ".pkl"):
                torch_load(f, map_location="cpu")
            elif f.suffix == ".json":
                json.loads(f.read_text())
            else:
                continue
            files += 1
    except Exception as exc:  # noqa: BLE001  (any failure to read back is the finding)
        return {"name": name, "ok": False, "files": files, "problem": f"{type(exc).__name__}: {exc}"[:300]}
    return {"name": name, "ok": files > 0, "files": files, "problem": None if files else "empty"}


def curve(stage: str, run_dir: Path, steps: int) -> list[dict]:
    """[{step, loss, data}] of every logged optimizer step of a finished run."""
    ckpt = run_dir / STAGES[stage]["ckpt"]
    if stage == "pretrain":
        rows = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
        return [{"step": r["step"], "loss": r["train_loss"], "data": r["data_checksum"]} for r in rows
                if "train_loss" in r]  # fmt: skip
    state = json.loads((ckpt / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    return [{"step": r["step"], "loss": r["loss"], "data": r.get("num_tokens")} for r in state["log_history"]
            if "loss" in r]  # fmt: skip


def weights_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def run_straight(stage: str, run_dir: Path, steps: int, env: dict) -> tuple[float, float]:
    """The uninterrupted run; (wall seconds, median seconds between checkpoints)."""
    ckpt = run_dir / STAGES[stage]["ckpt"]
    t0, seen = time.time(), {}
    proc = subprocess.Popen(stage_cmd(stage, run_dir, steps, False), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while proc.poll() is None:
        seen.setdefault(newest_step(ckpt), time.time())
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{stage}: the uninterrupted run failed:\n{proc.stderr.read()[-3000:]}")
    times = sorted(t for s, t in seen.items() if s)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return time.time() - t0, statistics.median(gaps) if gaps else 1.0


def kill_chain(stage: str, run_dir: Path, steps: int, kills: int, interval: float, rng, env: dict) -> list[dict]:
    """`kills` runs, each SIGKILLed at a random moment, then the resume that finishes; a record per kill."""
    ckpt = run_dir / STAGES[stage]["ckpt"]
    every = 2  # every stage above checkpoints every 2 steps
    last = (steps - 1) // every * every  # the last checkpoint (none at the final step: the export follows)
    targets = sorted(rng.sample(range(every, last + 1, every), k=min(kills, last // every)))
    targets += [rng.randrange(every, last + 1, every) for _ in range(kills - len(targets))]
    records = []
    for target in targets:
        resume_from = newest_step(ckpt)
        # wait for the drawn checkpoint (or the next one, or the last there is); then a random delay. Resumed from
        # the last checkpoint, the delay runs from the start: the kill lands in start-up or the last steps.
        wait_for = min(max(target, resume_from + every), last)
        proc = subprocess.Popen(stage_cmd(stage, run_dir, steps, True), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        while proc.poll() is None and newest_step(ckpt) < wait_for:
            time.sleep(0.01)
        delay = rng.uniform(0, interval)
        time.sleep(delay)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check = check_checkpoint(ckpt)
        records.append({"resumed_from": resume_from, "kill_after_checkpoint": wait_for,
                        "delay_s": round(delay, 3), "killed": not finished and proc.returncode == -signal.SIGKILL,
                        "latest": check["name"], "latest_ok": check["ok"], "files_read": check["files"],
                        "problem": check["problem"]})  # fmt: skip
    proc = subprocess.run(stage_cmd(stage, run_dir, steps, True), cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        records.append({"final_resume_failed": proc.stderr[-2000:]})
    return records


def compare(stage: str, straight: Path, killed: Path, steps: int, records: list[dict]) -> dict:
    if any("final_resume_failed" in r for r in records):
        return {"ok": False, "kills": records}
    a, b = curve(stage, straight, steps), curve(stage, killed, steps)
    steps_once = [r["step"] for r in b] == list(range(1, steps + 1))
    same_data = [r["data"] for r in a] == [r["data"] for r in b]
    rel = [abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-8) for x, y in zip(a, b)]
    final_rel = rel[-1] if rel else float("inf")
    diff = weights_diff(straight / stage, killed / stage)
    survived = sum(1 for r in records if r["killed"] and r["latest_ok"])
    ok = (steps_once and same_data and final_rel <= 0.01 and len(a) == len(b) == steps
          and all(r["latest_ok"] for r in records))  # fmt: skip
    return {"ok": ok, "steps": steps, "kills_survived": survived, "kills": records, "every_step_once": steps_once,
            "same_data_every_step": same_data, "final_loss": [a[-1]["loss"], b[-1]["loss"]],
            "final_loss_rel_diff": final_rel, "max_step_loss_rel_diff": max(rel, default=None),
            "weights_max_abs_diff": diff}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="pretrain,sft,grpo")
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs per stage")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default: the stage's own)")
    p.add_argument("--seed", type=int, default=0, help="draws the kill points")
    p.add_argument(
        "--from_run",
        default=None,
        help="a run folder with world/ and tokenizer/ (and pretrain/, sft/ to start SFT and GRPO from)",
    )
    p.add_argument("--work", default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    stages = args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}: choose from {list(STAGES)}")
    rng = random.Random(args.seed)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        base = work / "base"
        if args.from_run:  # its world, tokenizer and any stage a stage here starts from (pretrain, sft)
            base.mkdir(parents=True, exist_ok=True)
            for part in ("world", "tokenizer", "pretrain", "sft"):
                src = Path(args.from_run).absolute() / part
                if src.exists() and not (base / part).exists():
                    (base / part).symlink_to(src)
        elif not (base / "tokenizer").is_dir():
            make_world_run(base, [*TINY_WORLD], ["--vocab_size", "1024"])
        results = {}
        for stage in stages:
            steps = args.steps or STAGES[stage]["steps"]
            dirs = {name: work / stage / name for name in ("straight", "killed")}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
                for part in STAGES[stage]["needs"]:
                    src = base / part
                    if not src.exists():
                        raise SystemExit(f"{stage} needs {part}: run the stage that makes it first ({src})")
                    if not (d / part).exists():
                        (d / part).symlink_to(src.absolute())
            wall, interval = run_straight(stage, dirs["straight"], steps, env)
            records = kill_chain(stage, dirs["killed"], steps, args.kills, interval, rng, env)
            results[stage] = {**compare(stage, dirs["straight"], dirs["killed"], steps, records),
                              "straight_wall_s": round(wall, 1), "checkpoint_interval_s": round(interval, 2)}  # fmt: skip
            if not (base / stage).exists():  # the next stage starts from this one's uninterrupted export
                (base / stage).symlink_to((dirs["straight"] / stage).absolute())
            r = results[stage]
            print(
                f"{stage}: {r.get('kills_survived', 0)}/{args.kills} kills survived, every step once "
                f"{r.get('every_step_once')}, same data {r.get('same_data_every_step')}, final loss rel diff "
                f"{r.get('final_loss_rel_diff', float('nan')):.2e}, weights max diff "
                f"{r.get('weights_max_abs_diff', float('nan')):.2e} -> {'ok' if r['ok'] else 'FAILED'}",
                flush=True,
            )
    summary = {
        "stages": results,
        "kills": args.kills * len(stages),
        "kills_survived": sum(r.get("kills_survived", 0) for r in results.values()),
        "ok": all(r["ok"] for r in results.values()),
    }
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
