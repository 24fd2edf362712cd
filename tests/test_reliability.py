"""Reliability (issue 10): kill and resume, determinism, a full disk, tampered checkpoints, no pickles or remote
code. The bad-input catalogue is tests/test_bad_input.py; secrets are grepped in tests/test_pipeline.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, random_base, recipe_here, run

sys.path.insert(0, str(REPO / "bench"))
import kill_resume  # noqa: E402  (bench/kill_resume.py: its stage commands and curves)

TINY_PRETRAIN = ["--config", "recipes/world/pretrain.yaml", "--depth", "2", "--seq_len", "64",
                 "--global_batch_tokens", "2048", "--per_device_batch_size", "8", "--log_every", "1",
                 "--eval_every", "0", "--save_every", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def parents(tiny_run, tmp_path_factory) -> Path:
    """world, tokenizer and a random 1-layer model as both `pretrain` and `sft` (what SFT and GRPO start from)."""
    base = random_base(tiny_run, tmp_path_factory.mktemp("parents"))
    (base / "sft").symlink_to(base / "pretrain")
    return base


@pytest.mark.parametrize(("stage", "steps"), [("pretrain", 6), ("sft", 6), ("grpo", 4)])
def test_sigkill_at_a_random_moment_and_resume(parents, tmp_path, stage, steps):
    """The reduced form of bench/kill_resume.py (5 kills per stage there): one SIGKILL from outside at a random
    moment, resume from `latest`; every step once, the same data every step, the same final loss (1 %), `latest`
    readable in full after the kill."""
    proc = run([sys.executable, "bench/kill_resume.py", "--from_run", str(parents), "--stages", stage, "--kills", "1",
                "--steps", str(steps), "--work", str(tmp_path), "--seed", "3"], timeout=600)  # fmt: skip
    assert_ok(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])["stages"][stage]
    (kill,) = result["kills"]
    assert kill["killed"] and kill["latest_ok"], kill
    assert result["every_step_once"] and result["same_data_every_step"], result
    assert result["final_loss_rel_diff"] <= 0.01 and result["ok"], result
    ckpts = tmp_path / stage / "killed" / "checkpoints" / stage
    assert not list(ckpts.glob("*.tmp")), "no half-written checkpoint left behind"
    if stage != "pretrain":  # TRL stages: the pickled TrainingArguments replaced by JSON
        assert not list(ckpts.rglob("training_args.bin")) and list(ckpts.rglob("training_args.json"))
        return
    # determinism (issue 10): the same seed from scratch in another process logs the same losses and data
    again = tmp_path / "again"
    again.mkdir()
    for part in ("world", "tokenizer"):
        (again / part).symlink_to(parents / part)
    assert_ok(run(kill_resume.stage_cmd("pretrain", again, steps, resume=False)))
    assert kill_resume.curve("pretrain", again, steps) == kill_resume.curve(
        "pretrain", tmp_path / stage / "straight", steps
    )


def test_same_seed_twice_gives_the_same_tokenizer(tiny_run, tmp_path):
    """(The world: test_world.test_same_seed_gives_byte_identical_world; the loss curve: the pretrain case of
    test_sigkill_at_a_random_moment_and_resume.) Another process trains a byte-identical tokenizer."""
    proc = recipe_here("tokenizer", "--config", "recipes/world/tokenizer.yaml", "--run_dir", str(tiny_run),
                       "--vocab_size", "1024", "--output_dir", str(tmp_path / "tok"))  # fmt: skip
    assert_ok(proc)
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == (
        tiny_run / "tokenizer" / "tokenizer.json"
    ).read_bytes()


FULL_DISK = r"""
set -u
mount -t tmpfs -o size=14m tmpfs "$DISK"
mkdir "$DISK/run" && cp -r "$SRC/world" "$SRC/tokenizer" "$DISK/run/"
"$PY" recipes/pretrain.py $ARGS --run_dir "$DISK/run" > "$OUT/first.out" 2> "$OUT/first.err"; echo $? > "$OUT/first.rc"
cp -r "$DISK/run" "$OUT/after_full"
mount -o remount,size=64m "$DISK"
"$PY" recipes/pretrain.py $ARGS --run_dir "$DISK/run" --resume_from_checkpoint latest > "$OUT/second.out" 2>&1
echo $? > "$OUT/second.rc"
cp -r "$DISK/run" "$OUT/resumed"
"""


def test_full_disk_is_one_line_and_damages_nothing(tiny_run, tmp_path):
    """A 14 MiB tmpfs (a mount namespace of its own: `unshare`): the first checkpoint (~9 MB) fits, the second
    does not. One line naming the disk, `latest` still the first checkpoint and readable, no half checkpoint
    left taking space, the world and tokenizer untouched; with space again, the run resumes and finishes."""
    from safetensors.torch import load_file

    if shutil.which("unshare") is None or run(["unshare", "--user", "--map-root-user", "--mount", "true"]).returncode:
        pytest.fail("this test needs `unshare` (util-linux) with user namespaces to mount a small tmpfs")
    out = tmp_path / "out"
    out.mkdir()
    env = {"DISK": str(tmp_path / "disk"), "SRC": str(tiny_run), "OUT": str(out), "PY": sys.executable,
           "ARGS": " ".join([*TINY_PRETRAIN, "--max_steps", "8", "--keep_last", "2"])}  # fmt: skip
    (tmp_path / "disk").mkdir()
    proc = run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", FULL_DISK], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "first.rc").read_text().strip() == "1"
    err = (out / "first.err").read_text()
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "disk full" in line and "No space left on device" in line and "checkpoints/pretrain" in line, line
    ckpts = out / "after_full" / "checkpoints" / "pretrain"
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    assert load_file(ckpts / "step_000002" / "model.safetensors")
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".")) == [], "the half checkpoint is removed"
    for part in ("world", "tokenizer"):
        same = subprocess.run(["diff", "-r", str(tiny_run / part), str(out / "after_full" / part)])
        assert same.returncode == 0, f"{part} changed"
    assert (out / "second.rc").read_text().strip() == "0", (out / "second.out").read_text()[-2000:]
    assert "resumed from" in (out / "second.out").read_text()
    assert (out / "resumed" / "pretrain" / "model.safetensors").is_file()


def test_stress_bench_reports_peak_memory(tiny_run, tmp_path):
    """The reduced form of bench/stress.py (10× the world there, with the world and tokenizer stages; docs/LOG.md
    has the numbers): probe and eval of the tiny world as processes, each one's peak RSS in the last JSON line."""
    proc = run([sys.executable, "bench/stress.py", "--from_run", str(tiny_run), "--depth", "1", "--num_samples", "1",
                "--max_new_tokens", "2", "--eval_max_per_bucket", "3", "--work", str(tmp_path)], timeout=600)  # fmt: skip
    assert_ok(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["stages"]) == {"probe", "eval"} and result["fits"]
    assert result["probe_questions"] > 0 and result["eval_questions"] == 9
    assert all(100 < s["peak_rss_mib"] < 24 * 1024 for s in result["stages"].values())


def test_code_never_loads_pickles_or_remote_code():
    """Static guard over everything we ship: no pickle.load, no torch.load without weights_only=True, no
    trust_remote_code=True (a user may still pass their own flag to transformers; we never set it)."""
    offenders = []
    for path in [*REPO.glob("src/posttrain/**/*.py"), *REPO.glob("recipes/**/*.py"), *REPO.glob("evals/*.py"),
                 *REPO.glob("bench/*.py")]:  # fmt: skip
        text = path.read_text()
        for pattern in (r"pickle\.loads?\(", r"trust_remote_code\s*=\s*True", r"weights_only\s*=\s*False"):
            offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert offenders == []
