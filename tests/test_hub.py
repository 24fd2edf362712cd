"""Model cards and Hub pushes (posttrain.hub, recipes/push.py, --push_to_hub on the recipes): offline, for real —
a card is written and read back with huggingface_hub's own parser, a dry run lists what an upload would send, and a
real push against an unreachable Hub fails in one line and leaves the checkpoint as it was."""

import hashlib
import json
import shutil
from pathlib import Path

from conftest import assert_ok, assert_one_line_error, random_base, recipe_here
from huggingface_hub import ModelCard

from posttrain import hub
from posttrain.lineage import write_lineage

BUCKETS = {
    "known": {"n": 100, "correct": 0.46, "incorrect": 0.14, "not_attempted": 0.4, "penalty_t0.75": 0.04},
    "never_seen": {"n": 100, "correct": 0.0, "incorrect": 0.12, "not_attempted": 0.88, "penalty_t0.75": -0.36},
}


def _stage_run(tiny_run: Path, run_dir: Path) -> Path:
    """run_dir with a world, tokenizer, a pretrain folder, and an `sft` folder recorded as made from it."""
    random_base(tiny_run, run_dir)
    write_lineage(run_dir / "pretrain", "pretrain", {"depth": 1},
                  parents={"tokenizer": {"path": str(run_dir / "tokenizer"), "hash": "tok123"}},
                  data_mix={"path": "data_mixes/world_pretrain.yaml", "hash": "mixp"})  # fmt: skip
    shutil.copytree(run_dir / "pretrain", run_dir / "sft")
    write_lineage(run_dir / "sft", "sft", {"learning_rate": 3e-4, "hub_token": "<HUB_TOKEN>", "push_to_hub": False},
                  parents={"model": {"path": str(run_dir / "pretrain"), "hash": "pre456"}},
                  data_mix={"path": "data_mixes/world_sft.yaml", "hash": "mixs"}, summary={"steps": 7})  # fmt: skip
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "sft.json").write_text(json.dumps({"model": "x", "eval_set": "y", "buckets": BUCKETS}))
    return run_dir


def test_card_carries_lineage_and_eval_results(tiny_run, tmp_path):
    run_dir = _stage_run(tiny_run, tmp_path / "run")
    path = tmp_path / "README.md"
    hub.build_card(run_dir / "sft", "org/tiny-sft").save(path)

    card = ModelCard.load(path)
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("known", "correct")] == 0.46
    assert results[("never_seen", "not_attempted")] == 0.88
    assert results[("never_seen", "penalty_t0.75")] == -0.36
    assert card.data.model_name == "org/tiny-sft" and "sft" in card.data.tags
    text = card.text
    # the lineage table, newest first: sft <- pretrain (hash pre456) <- tokenizer (hash tok123)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line and "mix" not in line[:8]]
    assert [r.split("|")[1].strip() for r in rows[:3]] == ["sft", "pretrain", "tokenizer"]
    assert "pre456" in rows[1] and "mixp" in rows[1] and "mixs" in rows[0]
    assert "hub_token" not in text and "push_to_hub" not in text and '"learning_rate": 0.0003' in text


def _digest(folder: Path, skip=("README.md",)) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name not in skip}


def test_push_dry_run_lists_what_an_upload_sends(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = _stage_run(tiny_run, tmp_path / "run")
    sft = run_dir / "sft"
    (sft / "optimizer.pt").write_bytes(b"x")  # trainer state and half-written files never go up
    (sft / "model.safetensors.tmp").write_bytes(b"x")
    before = _digest(sft)
    proc = recipe_here("push", "--run_dir", str(run_dir), "--stage", "sft", "--hub_model_id", "org/tiny", "--dry_run")
    assert_ok(proc)
    listed = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert "README.md" in listed and "model.safetensors" in listed and "config.json" in listed
    assert "optimizer.pt" not in listed and "model.safetensors.tmp" not in listed
    assert sorted(listed) == sorted(hub.upload_files(sft))
    assert _digest(sft) == before  # only the card was added
    assert ModelCard.load(sft / "README.md").data.eval_results
    AutoModelForCausalLM.from_pretrained(sft)  # the folder a user would push loads as it is


def test_push_without_network_fails_in_one_line_and_keeps_the_checkpoint(tiny_run, tmp_path, monkeypatch):
    import huggingface_hub.constants

    run_dir = _stage_run(tiny_run, tmp_path / "run")
    before = _digest(run_dir / "sft")
    secret = "hf_posttrainTestSecretValue123"
    # a Hub that refuses connections (HF_ENDPOINT, as huggingface_hub read it at import), a token in the environment
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    proc = recipe_here(
        "push", "--run_dir", str(run_dir), "--stage", "sft", "--hub_model_id", "org/tiny", "--hub_revision", "v1"
    )
    line = assert_one_line_error(proc, "org/tiny@v1", "intact")
    assert secret not in proc.stdout + proc.stderr and secret not in (run_dir / "sft" / "README.md").read_text()
    assert _digest(run_dir / "sft") == before
    assert "sft" in line


def test_push_flags_are_checked_before_training(tmp_path):
    proc = recipe_here("pretrain", "--config", "recipes/world/pretrain.yaml", "--run_dir", str(tmp_path),
                       "--push_to_hub", "true")  # fmt: skip
    assert_one_line_error(proc, "hub_model_id")
    proc = recipe_here("sft", "--config", "recipes/world/sft.yaml", "--run_dir", str(tmp_path),
                       "--push_to_hub", "true", "--hub_model_id", "no-org")  # fmt: skip
    assert_one_line_error(proc, "ORG/NAME", "no-org")
    proc = recipe_here("push", "--run_dir", str(tmp_path), "--stage", "sft", "--hub_model_id", "org/x", "--dry_run")
    assert_one_line_error(proc, "config.json", "sft")
