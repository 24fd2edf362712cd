"""The bad-input catalogue (issue 10): every case runs a recipe (or eval) as a user would, against a run folder that
already holds earlier work (world, tokenizer, a pretrained and an SFT model, a pretraining checkpoint), and must end
with exactly one `error:` line naming the cause, a non-zero exit, no traceback, and every earlier file unchanged.

Cases that fail while loading run in-process (`recipe_here`: the same `__main__`, argv and entrypoint as `python
recipes/x.py`, without 10 s of imports each); cases that fail mid-training or while resuming run as processes, and
so does the Hub case (HF_HUB_OFFLINE, like a machine without network, is read when huggingface_hub is imported).
More cases, closer to one module, live beside it: test_configs, test_data, test_world, test_sft, test_pretrain,
test_evals, test_hub; the full disk is test_reliability.test_full_disk_is_one_line_and_damages_nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from conftest import assert_one_line_error, random_base, recipe, recipe_here

SFT = ["--config", "recipes/world/sft.yaml", "--max_steps", "2", "--per_device_train_batch_size", "4",
       "--max_length", "64", "--eval_after", "false"]  # fmt: skip
PRETRAIN = ["--config", "recipes/world/pretrain.yaml", "--depth", "2", "--seq_len", "64", "--global_batch_tokens",
            "2048", "--per_device_batch_size", "8", "--log_every", "1", "--eval_every", "0", "--save_every", "2"]  # fmt: skip
EVAL = ["--max_per_bucket", "2", "--num_samples", "0", "--max_new_tokens", "4"]


@pytest.fixture(scope="module")
def earlier(tiny_run, tmp_path_factory) -> Path:
    """A run folder with earlier work in it: world and tokenizer (linked), `pretrain` and `sft` models, and a real
    pretraining checkpoint (made by the recipe) under checkpoints/pretrain."""
    base = random_base(tiny_run, tmp_path_factory.mktemp("earlier"))
    shutil.copytree(base / "pretrain", base / "sft")
    donor = tmp_path_factory.mktemp("donor")
    for part in ("world", "tokenizer"):
        (donor / part).symlink_to(tiny_run / part)
    proc = recipe("pretrain", *PRETRAIN, "--max_steps", "4", "--run_dir", str(donor))
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(donor / "checkpoints", base / "checkpoints")
    return base


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (links followed) → sha256 of its bytes."""
    out = {}
    for dirpath, _, files in os.walk(root, followlinks=True):
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _mix(tmp: Path, rows_text: str, kind: str = "conversations") -> str:
    data = _write(tmp / "rows.jsonl", rows_text)
    return _write(tmp / "mix.yaml", f"kind: {kind}\ndatasets:\n  - path: json\n    data_files: {data}\n")


def _conversation(*roles: str) -> str:
    return json.dumps({"messages": [{"role": r, "content": f"{r} says hi"} for r in roles]}) + "\n"


class _Evil:
    """Unpickling this runs a command (creates a marker file): what a tampered checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tampered_pretrain_ckpt(earlier: Path, tmp: Path, name: str) -> str:
    ckpt = tmp / "ckpt"
    shutil.copytree(earlier / "checkpoints" / "pretrain" / "step_000002", ckpt)
    (ckpt / name).write_bytes(pickle.dumps(_Evil(tmp / "PWNED")))
    return str(ckpt)


def _tampered_sft_ckpt(earlier: Path, tmp: Path) -> str:
    """A complete-looking Trainer checkpoint whose optimizer.pt is a code-running pickle."""
    ckpt = tmp / "checkpoints" / "checkpoint-1"
    shutil.copytree(earlier / "pretrain", ckpt)
    (ckpt / "optimizer.pt").write_bytes(pickle.dumps(_Evil(tmp / "PWNED")))
    (ckpt / "scheduler.pt").write_bytes(pickle.dumps(_Evil(tmp / "PWNED")))
    from transformers import TrainerState

    TrainerState(global_step=1, max_steps=2, train_batch_size=4, logging_steps=10, eval_steps=10,
                 save_steps=10).save_to_json(str(ckpt / "trainer_state.json"))  # fmt: skip
    return str(ckpt)


def _truncated(earlier: Path, tmp: Path, part: str) -> str:
    bad = tmp / "truncated"
    shutil.copytree(earlier / part, bad)
    weights = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    return str(bad)


def _foreign_tokenizer(earlier: Path, tmp: Path) -> str:
    """A model whose embeddings (256 rows) are far smaller than the tokenizer saved beside it (1,024 tokens)."""
    from transformers import AutoTokenizer

    from posttrain.modeling import init_model, preset

    out = tmp / "mismatch"
    init_model(preset(1, 256, 64), 0, "sdpa").save_pretrained(out)
    AutoTokenizer.from_pretrained(earlier / "pretrain").save_pretrained(out)
    return str(out)


def _no_template(earlier: Path, tmp: Path) -> str:
    out = tmp / "notemplate"
    shutil.copytree(earlier / "pretrain", out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(out)


# (id, how it runs, recipe, arguments (a function of the earlier run and a scratch folder), words the error names)
CASES = [
    # configs and command lines
    ("unknown_config_key", "here", "sft",
     lambda e, t: ["--config", _write(t / "c.yaml", "learning_rat: 0.1\n"), "--max_steps", "2"],
     ["c.yaml", "unknown key 'learning_rat'", "did you mean 'learning_rate'"]),
    ("wrong_type_in_yaml", "here", "sft",
     lambda e, t: ["--config", _write(t / "c.yaml", "max_steps: [1, 2]\n")], ["c.yaml", "key 'max_steps' must be int"]),
    ("wrong_type_on_command_line", "here", "pretrain", lambda e, t: [*PRETRAIN, "--max_steps", "ten"],
     ["max_steps", "invalid int value: 'ten'"]),
    ("unknown_option", "here", "grpo", lambda e, t: ["--config", "recipes/world/grpo.yaml", "--num_generatoins", "4"],
     ["unknown option --num_generatoins"]),
    ("abbreviated_option", "here", "pretrain", lambda e, t: [*PRETRAIN, "--max_step", "4"],
     ["unknown option --max_step"]),
    ("missing_config_file", "here", "reward", lambda e, t: ["--config", str(t / "nope.yaml")],
     ["nope.yaml", "config file not found"]),
    ("yaml_syntax_error", "here", "sft", lambda e, t: ["--config", _write(t / "c.yaml", "max_steps: [1\n")],
     ["c.yaml", "not valid YAML at line"]),
    ("value_out_of_range", "here", "world",
     lambda e, t: ["--config", "recipes/world/world.yaml", "--pronoun_prob", "2", "--run_dir", str(t / "w")],
     ["pronoun_prob must be in [0, 1]"]),
    ("unknown_held_out_attribute", "here", "world",
     lambda e, t: ["--config", "recipes/world/world.yaml", "--scale", "0.05", "--holdout_attributes", "shoe_size",
                   "--run_dir", str(t / "w")],
     ["holdout_attributes: 'shoe_size' is not an attribute of the world", "birth_city"]),
    ("bad_hub_repo_id", "here", "sft", lambda e, t: [*SFT, "--push_to_hub", "--hub_model_id", "no-org-name"],
     ["hub_model_id must be ORG/NAME", "no-org-name"]),
    ("bad_scheduler_name", "here", "pretrain", lambda e, t: [*PRETRAIN, "--lr_scheduler", "linear"],
     ["lr_scheduler must be cosine, wsd or constant"]),
    ("batch_not_a_multiple", "here", "pretrain", lambda e, t: [*PRETRAIN, "--global_batch_tokens", "1000"],
     ["global_batch_tokens 1000 is not a multiple"]),
    # data
    ("missing_data_file", "here", "sft",
     lambda e, t: [*SFT, "--data_mix", _write(t / "m.yaml", f"kind: conversations\ndatasets:\n  - {{path: json, data_files: {t}/none.jsonl}}\n")],
     ["m.yaml", "none.jsonl"]),
    ("missing_mix_file", "here", "sft", lambda e, t: [*SFT, "--data_mix", str(t / "nomix.yaml")], ["nomix.yaml"]),
    ("mix_missing_column", "here", "sft", lambda e, t: [*SFT, "--data_mix", _mix(t, '{"text": "hello"}\n')],
     ["mix.yaml", "missing column 'messages'"]),
    ("empty_dataset", "here", "sft", lambda e, t: [*SFT, "--data_mix", _mix(t, "")], ["mix.yaml"]),
    ("row_not_json", "here", "sft",
     lambda e, t: [*SFT, "--data_mix", _mix(t, _conversation("user", "assistant") + "{not json\n")],
     ["mix.yaml", "rows.jsonl"]),
    ("no_assistant_turn", "here", "sft", lambda e, t: [*SFT, "--data_mix", _mix(t, _conversation("user"))],
     ["mix.yaml", "row 0", "no assistant turn"]),
    ("unknown_role", "here", "sft", lambda e, t: [*SFT, "--data_mix", _mix(t, _conversation("user", "robot"))],
     ["row 0", "valid role"]),
    ("text_mix_for_sft", "here", "sft", lambda e, t: [*SFT, "--data_mix", "data_mixes/world_pretrain.yaml"],
     ["'conversations' mix, not 'text'"]),
    ("conversation_mix_for_tokenizer", "here", "tokenizer",
     lambda e, t: ["--config", "recipes/world/tokenizer.yaml", "--data_mix", "data_mixes/world_sft.yaml",
                   "--output_dir", str(t / "tok")], ["'text' mix, not 'conversations'"]),
    ("unknown_world_split", "here", "pretrain",
     lambda e, t: [*PRETRAIN, "--data_mix", _write(t / "m.yaml", "kind: text\ndatasets:\n  - {path: world, name: documents, world_splits: [train]}\n")],
     ["unknown world split 'train'"]),
    ("no_probe_questions_for_grpo", "here", "grpo", lambda e, t: ["--config", "recipes/world/grpo.yaml", "--parent", "sft"],
     ["questions.jsonl", "no probe questions"]),
    ("no_preference_pairs_for_reward", "here", "reward", lambda e, t: ["--config", "recipes/world/reward.yaml"],
     ["preferences"]),
    ("world_from_missing_dir", "here", "world",
     lambda e, t: ["--config", "recipes/world/world.yaml", "--from_dir", str(t / "nothing"), "--run_dir", str(t / "w")],
     ["nothing"]),
    # models, tokenizers, checkpoints
    ("model_dir_missing", "here", "sft", lambda e, t: [*SFT, "--model_name_or_path", str(t / "nomodel")],
     ["nomodel", "not a model directory"]),
    ("hub_model_without_network", "process", "sft",
     lambda e, t: [*SFT, "--model_name_or_path", "no-such-org/no-such-model"], ["no-such-org/no-such-model", "cannot load the model"]),
    ("truncated_safetensors", "here", "sft", lambda e, t: [*SFT, "--model_name_or_path", _truncated(e, t, "pretrain")],
     ["truncated", "cannot load the model"]),
    ("truncated_safetensors_eval", "here", "evals/factuality.py",
     lambda e, t: ["--model", _truncated(e, t, "sft"), "--eval_set", str(e), "--output", str(t / "o.json"), *EVAL],
     ["truncated", "cannot load the model"]),
    ("tokenizer_from_another_model", "here", "sft", lambda e, t: [*SFT, "--model_name_or_path", _foreign_tokenizer(e, t)],
     ["mismatch", "does not belong to this model"]),
    ("no_chat_template_for_chat_eval", "here", "evals/factuality.py",
     lambda e, t: ["--model", _no_template(e, t), "--eval_set", str(e), "--output", str(t / "o.json"), "--prompt", "chat", *EVAL],
     ["notemplate", "no chat template"]),
    ("resume_path_missing", "here", "sft", lambda e, t: [*SFT, "--resume_from_checkpoint", str(t / "gone")],
     ["gone", "not a complete checkpoint"]),
    ("resume_path_missing_pretrain", "here", "pretrain", lambda e, t: [*PRETRAIN, "--resume_from_checkpoint", str(t / "gone")],
     ["gone", "not a complete checkpoint"]),
    ("eval_set_missing", "here", "evals/factuality.py",
     lambda e, t: ["--model", str(e / "sft"), "--eval_set", str(t / "noqa"), "--output", str(t / "o.json"), *EVAL],
     ["noqa", "not a run/world directory or a QA file"]),
    # fail while resuming or training: separate processes
    ("truncated_checkpoint_resume", "process", "pretrain",
     lambda e, t: [*PRETRAIN, "--max_steps", "4", "--resume_from_checkpoint", _truncated(e / "checkpoints" / "pretrain", t, "step_000002")],
     ["truncated", "cannot resume from this checkpoint"]),
    ("tampered_pickle_pretrain_resume", "process", "pretrain",
     lambda e, t: [*PRETRAIN, "--max_steps", "4", "--resume_from_checkpoint", _tampered_pretrain_ckpt(e, t, "optimizer.bin")],
     ["ckpt", "cannot resume from this checkpoint", "pickle with more than tensors", "refused, not run"]),
    ("tampered_pickle_sft_resume", "process", "sft",
     lambda e, t: [*SFT, "--output_dir", str(t / "checkpoints"), "--resume_from_checkpoint", _tampered_sft_ckpt(e, t)],
     ["pickle with more than tensors", "refused, not run"]),
    ("nan_loss_pretrain", "process", "pretrain",
     lambda e, t: [*PRETRAIN, "--max_steps", "6", "--learning_rate", "1e12", "--checkpoint_dir", str(t / "ck")],
     ["loss is not finite at step", "lower --learning_rate"]),
    ("nan_loss_sft", "process", "sft",
     lambda e, t: [*SFT, "--max_steps", "6", "--learning_rate", "1e12", "--max_grad_norm", "0", "--logging_steps", "1"],
     ["at step", "lower --learning_rate", "no checkpoint was written"]),
]  # fmt: skip


@pytest.mark.parametrize(("how", "script", "make_args", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_damages_nothing(earlier, tmp_path, how, script, make_args, needles, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # datasets' Hub sources: no network, whatever this machine has
    args = make_args(earlier, tmp_path)
    before = snapshot(earlier)
    extra = [] if "--run_dir" in args or script.startswith("evals/") else ["--run_dir", str(earlier)]
    if how == "here":
        proc = recipe_here(script, *args, *extra)
    else:
        proc = recipe(script, *args, *extra, env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, *needles)
    assert snapshot(earlier) == before, "earlier work changed"
    assert not (tmp_path / "PWNED").exists(), "a pickle in a checkpoint ran code"


def test_the_catalogue_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
