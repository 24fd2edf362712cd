"""Pretraining: presets, loss falls and the export loads, two processes (kill + resume: test_reliability)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_ok, assert_one_line_error, free_port, recipe, recipe_here, run
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.modeling import flops_per_token, init_model, param_counts, preset

TINY = ["--depth", "2", "--seq_len", "64", "--global_batch_tokens", "2048", "--per_device_batch_size", "8",
        "--log_every", "1", "--eval_every", "8", "--save_every", "4"]  # fmt: skip


def _fresh_run(tiny_run: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for part in ("world", "tokenizer"):
        shutil.copytree(tiny_run / part, dest / part)
    return dest


def _curve(run_dir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run_dir / "checkpoints" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in rows]


def test_preset_counts_match_the_real_model():
    cfg = preset(4, 2158, 256)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.vocab_size) == (256, 4, 704, 2176)
    model = init_model(cfg, seed=0)
    assert param_counts(cfg)["total"] == sum(p.numel() for p in model.parameters())
    n = param_counts(cfg)["non_embedding"]
    assert flops_per_token(cfg, 256) == 6 * n + 12 * 4 * 256 * 256
    big = preset(20, 32768, 2048)
    assert (big.hidden_size, big.num_attention_heads, big.head_dim) == (1280, 10, 128)
    assert torch.equal(init_model(cfg, 1).lm_head.weight, init_model(cfg, 1).lm_head.weight)


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_lr_schedules(kind):
    from posttrain.configs import PretrainConfig
    from posttrain.pretrain import scheduler_for

    cfg = PretrainConfig(max_steps=100, lr_scheduler=kind, learning_rate=1.0, warmup_ratio=0.1, decay_ratio=0.2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    sched = scheduler_for(opt, cfg, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] <= 0.1 and abs(lrs[10] - 1.0) < 1e-6, "linear warmup over 10 steps (WSD starts at min_lr)"
    if kind == "cosine":
        assert lrs[55] < 0.7 and abs(lrs[-1] - 0.1) < 0.01
    elif kind == "wsd":
        assert all(abs(x - 1.0) < 1e-6 for x in lrs[10:80]) and lrs[-1] < 0.15
    else:
        assert all(abs(x - 1.0) < 1e-6 for x in lrs[10:])


def test_loss_falls_and_export_loads(tiny_run, tmp_path):
    run_dir = _fresh_run(tiny_run, tmp_path / "run")
    proc = recipe("pretrain", "--config", "recipes/world/pretrain.yaml", "--run_dir", str(run_dir), *TINY,
                  "--max_steps", "24", "--learning_rate", "0.01")  # fmt: skip
    assert_ok(proc)
    curve = [c for c in _curve(run_dir) if c[1] is not None]
    assert curve[-1][1] < 0.7 * curve[0][1], curve
    out = run_dir / "pretrain"
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama" and (out / "model.safetensors").is_file()
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    ids = model.generate(**tok(tok.bos_token + "Ada", return_tensors="pt", add_special_tokens=False), max_new_tokens=5)
    assert ids.shape[1] > 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_loss"] < 6 and 0 < metrics["val_bpb"] < 3 and 0 < metrics["mfu"] < 1.5
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["data_mix"]["hash"] and lineage["parents"]["world"]["hash"]
    assert len(lineage["parents"]["tokenizer"]["hash"]) == 16
    assert (run_dir / "plots" / "pretrain_loss.png").is_file() and "## pretrain" in (run_dir / "report.md").read_text()
    # evals/perplexity.py on the export reproduces the recipe's own final validation numbers
    ppl = run([sys.executable, "evals/perplexity.py", "--model", str(out), "--run_dir", str(run_dir), "--seq_len", "64",
               "--output", str(tmp_path / "ppl.json")])  # fmt: skip
    assert_ok(ppl)
    scored = json.loads((tmp_path / "ppl.json").read_text())
    assert scored["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-4)
    assert scored["val_bpb"] == pytest.approx(metrics["val_bpb"], rel=1e-4)


def test_two_processes_train_in_sync_like_one(tiny_run, tmp_path):
    one = _fresh_run(tiny_run, tmp_path / "one")
    two = _fresh_run(tiny_run, tmp_path / "two")
    args = ["recipes/pretrain.py", "--config", "recipes/world/pretrain.yaml", *TINY, "--max_steps", "8"]
    assert_ok(run([sys.executable, *args, "--run_dir", str(one)]))
    accelerate = str(Path(sys.executable).parent / "accelerate")
    proc = run(
        [
            accelerate,
            "launch",
            "--config_file",
            "accelerate_configs/multi_cpu.yaml",
            "--main_process_port",
            free_port(),
            *args,
            "--run_dir",
            str(two),
        ]  # fmt: skip
    )
    assert_ok(proc)
    assert "2 process(es)" in proc.stdout
    metrics = json.loads((two / "pretrain" / "metrics.json").read_text())
    assert metrics["replicas_in_sync"] is True and metrics["processes"] == 2
    AutoModelForCausalLM.from_pretrained(two / "pretrain")
    # The same 32 blocks per step, split 2 × 8 × accumulation 2 instead of 1 × 8 × 4: the same curve.
    for (_, a, _), (_, b, _) in zip(_curve(one), _curve(two), strict=True):
        assert (a is None and b is None) or abs(a - b) <= 1e-4 * abs(a)


@pytest.mark.parametrize("path", sorted((REPO / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.distributed_type


def test_slurm_example_is_valid_bash():
    assert_ok(run(["bash", "-n", str(REPO / "accelerate_configs" / "slurm_multi_node.sh")]))


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--tokenizer_dir", "/nonexistent/tok"], ["/nonexistent/tok", "no tokenizer"]),
        (["--global_batch_tokens", "1000"], ["global_batch_tokens 1000 is not a multiple"]),
        (["--resume_from_checkpoint", "/nonexistent/ckpt"], ["/nonexistent/ckpt", "not a complete checkpoint"]),
        (["--lr_scheduler", "linear"], ["lr_scheduler must be cosine, wsd or constant"]),
        (["--data_mix", "data_mixes/world_sft.yaml"], ["'text' mix, not 'conversations'"]),
    ],
)
def test_bad_pretrain_input_is_one_line(tiny_run, tmp_path, args, needles):
    run_dir = _fresh_run(tiny_run, tmp_path / "run")
    proc = recipe_here("pretrain", "--config", "recipes/world/pretrain.yaml", "--run_dir", str(run_dir), *TINY,
                       "--max_steps", "2", *args)  # fmt: skip
    assert proc.returncode == 2
    assert_one_line_error(proc, *needles)
    assert not (run_dir / "pretrain").exists()


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_zero_runs_on_cpu(tiny_run, tmp_path, zero):
    import deepspeed  # noqa: F401  (the deepspeed extra: make test installs it)

    run_dir = _fresh_run(tiny_run, tmp_path / zero)
    accelerate = str(Path(sys.executable).parent / "accelerate")
    proc = run([accelerate, "launch", "--config_file", f"accelerate_configs/{zero}.yaml", "--num_processes", "2",
                "--main_process_port", free_port(),
                "--mixed_precision", "no", "recipes/pretrain.py", "--config", "recipes/world/pretrain.yaml",
                "--run_dir", str(run_dir), *TINY, "--max_steps", "4", "--save_every", "2"])  # fmt: skip
    assert_ok(proc)
    assert "2 process(es) (DEEPSPEED)" in proc.stdout
    assert (run_dir / "checkpoints" / "pretrain" / "step_000002" / "trainer_state.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(run_dir / "pretrain")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_streaming_mix_pretrains(tiny_run, tmp_path):
    """A Hub-scale mix streams (here a local JSON Lines file): held-out documents come from the stream's head."""
    texts = [{"text": f"Document {i}: Person {i % 13} was born in city {i % 7} and works at company {i % 5}."}
             for i in range(3000)]  # fmt: skip
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(t) + "\n" for t in texts))
    mix = tmp_path / "stream.yaml"
    mix.write_text(f"kind: text\nstreaming: true\ndatasets:\n  - {{path: json, data_files: {data}}}\n")
    run_dir = _fresh_run(tiny_run, tmp_path / "run")
    proc = recipe("pretrain", "--config", "recipes/world/pretrain.yaml", "--run_dir", str(run_dir), *TINY,
                  "--data_mix", str(mix), "--max_steps", "4")  # fmt: skip
    assert_ok(proc)
    assert "streamed train / streamed val blocks" in proc.stdout
    metrics = json.loads((run_dir / "pretrain" / "metrics.json").read_text())
    assert metrics["val_loss"] < 8 and metrics["steps"] == 4


def test_bf16_autocast_keeps_the_output_layer_in_fp32():
    """Under bf16 autocast the decoder's matmuls run in bf16 but `fp32_output_layer` computes the logits in fp32
    (bf16 logits cost the default world a third of its extractable facts; docs/LOG.md 2026-12-06)."""
    import torch

    from posttrain.modeling import init_model, preset
    from posttrain.pretrain import fp32_output_layer

    model = init_model(preset(1, 300, 32), seed=0)
    x = torch.randint(0, 300, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(input_ids=x).logits.dtype == torch.bfloat16
        fp32_output_layer(model)
        out = model(input_ids=x, labels=x)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.get_output_embeddings().weight.grad is not None


def test_exposures_budget_follows_the_world(tiny_run):
    """`exposures`: epochs = exposures / biographies per well-known person; max_tokens and max_steps win over it."""
    from types import SimpleNamespace

    from posttrain.data import read_mix
    from posttrain.errors import UserError
    from posttrain.pretrain import bios_per_known, plan
    from posttrain.world import load_world

    docs = load_world(tiny_run / "world")["documents"]
    known = [p for p, s in zip(docs["person_id"], docs["split"]) if s == "eval_known"]
    mix = read_mix("data_mixes/world_pretrain.yaml")
    copies = 1 + mix.datasets[0].options.get("permutations", 0)  # each permuted copy counts as a biography
    bios = bios_per_known(mix, tiny_run / "world")
    assert copies == 4 and bios == pytest.approx(copies * len(known) / len(set(known))) and bios >= 5
    assert bios_per_known(read_mix("data_mixes/world_sft_qa.yaml"), tiny_run / "world") is None  # no documents

    cfg = SimpleNamespace(per_device_batch_size=8, seq_len=256, global_batch_tokens=2048, max_steps=None,
                          max_tokens=None, exposures=80.0, tokens_per_param=None, data_mix="mix.yaml")  # fmt: skip
    p = plan(cfg, 1000, 1, epoch_tokens=100_000, bios_per_known=8.0)  # 10 epochs of 100k tokens
    assert p.total_steps == 1_000_000 // 2048 and "exposures 80" in p.note and "10.00 epochs" in p.note
    assert plan(cfg, 1000, 1, epoch_tokens=100_000, bios_per_known=4.0).total_steps == 2_000_000 // 2048
    # a world whose names share their parts: the exposures times its name factor, and the line says why
    scaled = plan(cfg, 1000, 1, epoch_tokens=100_000, bios_per_known=8.0, scale=(1.5, "names' ambiguity 5.7"))
    assert scaled.total_steps == 1_500_000 // 2048 and "15.00 epochs" in scaled.note
    assert "names' ambiguity 5.7" in scaled.note
    cfg.min_steps = 900  # a small world: at least the floor's steps
    floored = plan(cfg, 1000, 1, epoch_tokens=100_000, bios_per_known=8.0)
    assert floored.total_steps == 900 and "raised to min_steps 900" in floored.note
    cfg.min_steps = None
    with pytest.raises(UserError, match="exposures needs a world"):
        plan(cfg, 1000, 1, epoch_tokens=100_000, bios_per_known=None)
    cfg.max_tokens = 204_800
    assert plan(cfg, 1000, 1, epoch_tokens=100_000, bios_per_known=8.0).total_steps == 100
