"""Process-level: the README's first command and `accelerate launch`, as a user runs them."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from conftest import REPO, TINY_WORLD, assert_ok, free_port, run
from huggingface_hub import ModelCard
from test_world import _same_tree
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.world import load_world

FAKE_TOKEN = "hf_posttrainFakeSecret0123456789abcdefXYZ"  # what a user's shell would hold: never written anywhere


def _make(*args: str):
    venv = Path(sys.prefix)  # the tests' own environment: the .venv that `make test` made
    env = {"HF_TOKEN": FAKE_TOKEN, "HUGGING_FACE_HUB_TOKEN": FAKE_TOKEN}
    return run(["make", "-s", "speedrun", f"VENV={venv}", *args], env=env, timeout=900)


def _check_no_secrets_and_no_pickles(run_dir: Path, proc) -> None:
    """Issue 10: with a token in the environment, no log, config, card, report or checkpoint holds it; every model
    weight file is safetensors; the only pickles are the Trainer's optimizer/scheduler/RNG states, which resume
    reads with torch.load(weights_only=True) (test_bad_input's tampered_pickle cases)."""
    secret = FAKE_TOKEN.encode()
    assert secret not in (proc.stdout + proc.stderr).encode()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 50 and [str(p) for p in files if secret in p.read_bytes()] == []
    allowed = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "optimizer.bin", "random_states_0.pkl"}
    pickles = [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")]
    assert [str(p) for p in pickles if p.name not in allowed or "checkpoints" not in p.parts] == []
    for stage in ("pretrain", "sft", "refusal", "reward", "grpo"):
        assert (run_dir / stage / "model.safetensors").is_file(), stage


TINY_PRETRAIN = "PRETRAIN_ARGS=--depth 1 --seq_len 32 --per_device_batch_size 4 --global_batch_tokens 128 --max_steps 3"
TINY_EVAL = "EVAL_ARGS=--max_per_bucket 4 --num_samples 1 --max_new_tokens 4"
TINY_SFT = "SFT_ARGS=--max_steps 2 --per_device_train_batch_size 4 --max_length 64 --eval_max_per_bucket 4 --eval_num_samples 1"
TINY_PROBE = "PROBE_ARGS=--num_samples 2 --max_new_tokens 6 --strangers 0.5 --mixed refuse"
TINY_REFUSAL = TINY_SFT.replace("SFT_ARGS", "REFUSAL_ARGS")
TINY = (TINY_PRETRAIN, TINY_EVAL, TINY_SFT, TINY_PROBE, TINY_REFUSAL)
TINY_RL = (
    "REWARD_ARGS=--max_steps 2 --per_device_train_batch_size 8",
    "GRPO_ARGS=--max_steps 2 --per_device_train_batch_size 8 --num_generations 4 --max_completion_length 8 "
    "--eval_max_per_bucket 4 --eval_num_samples 1 --logging_steps 1 --push_to_hub --hub_model_id org/tiny-grpo "
    "--dry_run",
)


def test_make_speedrun_runs_every_stage(tmp_path):
    """Every default stage, each a few steps on a tiny world (PPO and DPO, optional, run in test_rl)."""
    run_dir = tmp_path / "speedrun"
    proc = _make(f"RUN_DIR={run_dir}", f"WORLD_ARGS={' '.join(TINY_WORLD)}", *TINY, *TINY_RL)
    assert_ok(proc)
    # the run ends with the report's stage-by-stage table; GRPO's --push_to_hub --dry_run listed its upload
    assert "| grpo | " in proc.stdout and f"report: {run_dir}/report.md" in proc.stdout
    assert "would upload" in proc.stdout and "  model.safetensors" in proc.stdout
    assert len(load_world(run_dir / "world")["qa"]) > 0
    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    report = (run_dir / "report.md").read_text()
    assert "## world" in report and "## tokenizer" in report and "plots/world.png" in report
    assert "## pretrain" in report and (run_dir / "plots" / "pretrain_loss.png").is_file()
    AutoModelForCausalLM.from_pretrained(run_dir / "pretrain")
    result = json.loads((run_dir / "eval" / "pretrain.json").read_text())
    assert result["prompt"] == "fewshot", "a base model is asked with a few-shot QA prompt"
    assert (
        set(result["buckets"]) == {"known", "rare", "never_seen", "overall"}
        and "## Factuality" in (run_dir / "report.md").read_text()
    )
    sft = json.loads((run_dir / "eval" / "sft.json").read_text())
    assert sft["prompt"] == "chat" and sft["buckets"]["overall"]["n"] == 12
    AutoModelForCausalLM.from_pretrained(run_dir / "sft")
    assert (run_dir / "probe" / "refusal_sft.jsonl").is_file() and (run_dir / "eval" / "sft_gate_name.json").is_file()
    refusal = json.loads((run_dir / "eval" / "refusal.json").read_text())
    assert refusal["buckets"]["overall"]["n"] == 12 and refusal["vs_parent"]["parent"] == str(run_dir / "sft")
    AutoModelForCausalLM.from_pretrained(run_dir / "refusal")
    assert "## probe" in (run_dir / "report.md").read_text() and "## refusal" in (run_dir / "report.md").read_text()
    _check_rl_stages(run_dir)
    _check_no_secrets_and_no_pickles(run_dir, proc)


def _check_rl_stages(run_dir: Path) -> None:
    """reward → GRPO: models that load, the eval against the parent and the SFT model, plots, lineage."""
    from transformers import AutoModelForSequenceClassification

    acc = json.loads((run_dir / "reward" / "pairwise_accuracy.json").read_text())
    assert acc["overall"]["n"] == sum(v["n"] for k, v in acc.items() if k != "overall") > 0
    assert AutoModelForSequenceClassification.from_pretrained(run_dir / "reward").config.num_labels == 1
    steps, rewards = json.loads((run_dir / "grpo" / "rewards.json").read_text())
    assert len(steps) == 2 and set(rewards) == {"factuality", "format"}, "both rewards logged at every step"
    AutoModelForCausalLM.from_pretrained(run_dir / "grpo")
    result = json.loads((run_dir / "eval" / "grpo.json").read_text())
    assert result["buckets"]["overall"]["n"] == 12 and result["vs_parent"]["parent"] == str(run_dir / "refusal")
    assert result["vs_base"]["parent"] == str(run_dir / "sft"), "refusal where the SFT model was wrong, after RL"
    report = (run_dir / "report.md").read_text()
    assert "## reward" in report and "## grpo" in report and "heldout_accuracy_overall" in report
    assert "## Time and tokens per stage" in report and "## Factuality, stage by stage" in report
    card = ModelCard.load(run_dir / "grpo" / "README.md")
    assert card.data.model_name == "org/tiny-grpo" and {r.dataset_split for r in card.data.eval_results} >= {"known"}
    for plot in ("grpo_rewards", "reward_loss", "factuality"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 5_000, plot


def test_optional_stages_are_one_flag_each():
    plan = run(["make", "-n", "speedrun", "VENV=.venv", "PPO=1", "DPO=1", "GRPO=0"]).stdout
    assert "recipes/ppo.py --config recipes/world/ppo.yaml" in plan and "recipes/dpo.py" in plan
    assert "recipes/grpo.py" not in plan and "recipes/reward.py" in plan
    assert "recipes/ppo.py" not in run(["make", "-n", "speedrun", "VENV=.venv"]).stdout, "off by default"


def test_smollm2_family_is_one_switch():
    plan = run(["make", "-n", "speedrun", "VENV=.venv", "RECIPES=smollm2", "RUN=sm"]).stdout
    assert "-m posttrain.smollm2 --output_dir runs/sm/base" in plan and "--output runs/sm/eval/base.json" in plan
    assert "recipes/smollm2/probe.yaml --run_dir runs/sm --model runs/sm/base" in plan, "it probes the model itself"
    assert "recipes/smollm2/sft.yaml" not in plan and "recipes/smollm2/refusal.yaml" in plan
    assert "recipes/grpo.py --config recipes/smollm2/grpo.yaml" in plan
    assert "recipes/pretrain.py" not in plan and "recipes/world/" not in plan


def test_make_speedrun_on_a_users_world(tmp_path):
    """A world of another shape than the generator's (evals/hand_world.py: other names, attributes, sentences and
    questions, 5-8 biographies per well-known person) through world → tokenizer → pretraining on a budget derived
    from that world (`exposures`) → SFT → probe → refusal, so no default is tuned to one generator (issue 25)."""
    sys.path.insert(0, str(REPO / "evals"))
    import hand_world

    world = tmp_path / "my_world"
    hand_world.build(seed=3).save_to_disk(str(world))
    run_dir = tmp_path / "mine"
    # a world-derived budget, a few steps (no floor: the recipe's min_steps is the embedded world's 781)
    pretrain = TINY_PRETRAIN.replace("--max_steps 3", "--exposures 0.2 --min_steps 1")
    proc = _make(f"RUN_DIR={run_dir}", f"WORLD={world}", "TOKENIZER_ARGS=--vocab_size 400", pretrain, *TINY[1:],
                 "REWARD=0", "GRPO=0")  # fmt: skip
    assert_ok(proc)
    first = hand_world.build(seed=3)["qa"]["question"][0]
    assert load_world(run_dir / "world")["qa"]["question"][0] == first
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    lineage = json.loads((run_dir / "pretrain" / "lineage.json").read_text())
    assert lineage["parents"]["world"]["hash"]
    # names made of 30 x 30 shared parts: the budget and the SFT rate read the world's name ambiguity
    assert "exposures 0.2 (names' ambiguity" in proc.stdout and "biographies (mean)" in proc.stdout
    assert re.search(r"sft: learning rate [0-9.e-]+ \(names' ambiguity", proc.stdout)
    assert 1 <= lineage["summary"]["steps"] < 50
    assert json.loads((run_dir / "eval" / "sft.json").read_text())["buckets"]["overall"]["n"] > 0
    targets = [json.loads(line) for line in (run_dir / "probe" / "judgments.jsonl").read_text().splitlines()]
    assert {t["attribute"] for t in targets} <= set(hand_world.VALUES)
    refusal = json.loads((run_dir / "eval" / "refusal.json").read_text())
    assert refusal["buckets"]["overall"]["n"] > 0 and "decline" in refusal


def test_accelerate_launch_two_processes_writes_one_world(tiny_run, tmp_path):
    """Two launched processes write the world once, byte-identical to a plain `python recipes/world.py` run with the
    same arguments (the session's tiny run)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the project"
    launch = [accelerate, "launch", "--config_file", "accelerate_configs/multi_cpu.yaml", "--main_process_port"]
    args = ["recipes/world.py", "--config", "recipes/world/world.yaml", "--run_dir", str(tmp_path / "launched"),
            *TINY_WORLD]  # fmt: skip
    proc = run([*launch, free_port(), *args], cwd=REPO)
    assert_ok(proc)
    assert "2 processes (MULTI_CPU)" in proc.stdout, "two real processes in one gloo group"
    assert _same_tree(tmp_path / "launched" / "world", tiny_run / "world")
