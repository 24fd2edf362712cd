"""Configs: YAML + CLI through TrlParser; bad keys, types and flags give one line naming the key and the file."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from conftest import assert_one_line_error, recipe_here, vllm_here

from posttrain.configs import TokenizerConfig, WorldConfig, parse_config
from posttrain.errors import UserError


def _yaml(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_cli_overrides_yaml(tmp_path):
    cfg = _yaml(tmp_path, "seed: 5\nn_sft: 7\nrun_dir: runs/x\n")
    (world,) = parse_config(WorldConfig, ["--config", cfg, "--seed", "9"])
    assert (world.seed, world.n_sft, world.run_dir) == (9, 7, "runs/x")
    (tok,) = parse_config(TokenizerConfig, ["--vocab_size", "512"])
    assert tok.vocab_size == 512 and tok.data_mix == "data_mixes/world_tokenizer.yaml"


@pytest.mark.parametrize(
    ("yaml_text", "cli", "needles"),
    [
        ("seed: 1\nn_sfft: 3\n", [], ["unknown key 'n_sfft'", "did you mean 'n_sft'", "cfg.yaml"]),
        ("seed: [1, 2]\n", [], ["key 'seed' must be int", "cfg.yaml"]),
        ("seed: abc\n", [], ["seed", "invalid int value: 'abc'", "cfg.yaml"]),
        ("pronoun_prob: 2.0\n", [], ["pronoun_prob must be in [0, 1]"]),
        ("seed: 1\n", ["--no_such_flag", "3"], ["unknown option --no_such_flag"]),
        ("seed: 1\n", ["--scale", "big"], ["scale", "invalid float value: 'big'"]),
        ("seed: [1\n", [], ["cfg.yaml", "not valid YAML at line"]),
        ("- a\n- b\n", [], ["cfg.yaml", "must be a YAML mapping"]),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, yaml_text, cli, needles):
    cfg = _yaml(tmp_path, yaml_text)
    with pytest.raises(UserError) as info:
        parse_config(WorldConfig, ["--config", cfg, *cli])
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--config", "recipes/world/nope.yaml"], ["recipes/world/nope.yaml", "config file not found"]),
        (["--config", "recipes/world/world.yaml", "--sed", "1"], ["unknown option --sed"]),
        (["--config", "recipes/world/world.yaml", "--n_sft", "-3"], ["n_sft must be >= 0"]),
    ],
)
def test_recipe_exits_nonzero_with_one_line(tmp_path, args, needles):
    proc = recipe_here("world", *args, "--run_dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists(), "a bad config writes nothing"


def test_probe_gate_settings_are_checked(tmp_path):
    from posttrain.configs import ProbeConfig

    (cfg,) = parse_config(ProbeConfig, ["--config", "recipes/smollm2/probe.yaml", "--run_dir", str(tmp_path)])
    assert cfg.gate_baselines and cfg.gate_recall == 0.9, "the SmolLM2 gate row sits at the refusal's retention"
    with pytest.raises(UserError, match="gate_recall must be in"):
        parse_config(ProbeConfig, ["--config", "recipes/world/probe.yaml", "--gate_recall", "1.5"])
    with pytest.raises(UserError, match="self_replay must be a number of prompts >= 0, got -1"):
        parse_config(ProbeConfig, ["--config", "recipes/smollm2/probe.yaml", "--self_replay", "-1"])


def test_debug_shows_the_traceback(tmp_path):
    """--debug: the entrypoint lets the exception through (Python prints its traceback) instead of one line."""
    with pytest.raises(UserError, match="config file not found"):
        recipe_here("world", "--config", "recipes/world/nope.yaml", "--debug")


def test_unknown_key_in_shipped_recipe_configs_is_caught(tmp_path):
    cfg = _yaml(tmp_path, "data_mix: data_mixes/world_tokenizer.yaml\nvocab: 10\n")
    proc = recipe_here("tokenizer", "--config", cfg, "--run_dir", str(tmp_path / "run"))
    assert_one_line_error(proc, "unknown key 'vocab'", "cfg.yaml")


def _stage_classes(stem: str):
    from trl import ModelConfig

    from posttrain.configs import (
        DPOStageConfig,
        GRPOStageConfig,
        PPOStageConfig,
        PretrainConfig,
        ProbeConfig,
        RewardStageConfig,
        SFTStageConfig,
    )  # fmt: skip

    classes = {
        "world": (WorldConfig,), "tokenizer": (TokenizerConfig,), "pretrain": (PretrainConfig,),
        "sft": (SFTStageConfig, ModelConfig), "refusal": (SFTStageConfig, ModelConfig), "probe": (ProbeConfig,),
        "search": (SFTStageConfig, ModelConfig), "search_grpo": (GRPOStageConfig, ModelConfig),
        "reward": (RewardStageConfig, ModelConfig), "dpo": (DPOStageConfig, ModelConfig),
        "grpo": (GRPOStageConfig, ModelConfig), "ppo": (PPOStageConfig,),
    }  # fmt: skip
    return classes.get(stem) or classes[stem.split("_")[0]]


@pytest.mark.parametrize("family", ["world", "gpu", "smollm2"])
def test_shipped_recipe_families_parse(family):
    """Every YAML of a recipe family parses with its stage's config class (keys, values, checks) and names data
    mixes that exist and read — offline, so a GPU user's first launch does not die on a typo."""
    from conftest import REPO

    from posttrain.data import read_mix

    paths = sorted((REPO / "recipes" / family).glob("*.yaml"))
    assert paths
    has_vllm = vllm_here()
    for path in paths:
        extra = []
        if yaml.safe_load(path.read_text()).get("use_vllm") and not has_vllm:  # recipes/gpu/grpo.yaml: one line here
            with pytest.raises(UserError, match="vLLM is not installed|needs a CUDA GPU"):
                parse_config(_stage_classes(path.stem), ["--config", str(path)])
            extra = ["--use_vllm", "false"]
        parsed = parse_config(_stage_classes(path.stem), ["--config", str(path), *extra])
        for mix in {getattr(parsed[0], k, None) for k in ("data_mix", "sft_mix")} - {None}:
            read_mix(str(REPO / mix))


def test_gpu_pretrain_preset_is_about_500m_parameters():
    from conftest import REPO

    from posttrain.configs import PretrainConfig
    from posttrain.modeling import param_counts, preset

    (cfg,) = parse_config(PretrainConfig, ["--config", str(REPO / "recipes/gpu/pretrain.yaml")])
    config = preset(cfg.depth, 32768, cfg.seq_len, aspect_ratio=cfg.aspect_ratio,
                    num_attention_heads=cfg.num_attention_heads)  # fmt: skip
    assert config.hidden_size == 1280 and config.hidden_size // config.num_attention_heads == 128
    assert 400e6 < param_counts(config)["total"] < 700e6


def test_gpu_only_model_options_are_refused_in_one_line_here():
    """Hub kernels and 4/8-bit loading go to from_pretrained on a CUDA machine with their package; elsewhere one
    line (issue 23)."""
    import importlib.util

    import torch

    from posttrain.stages import kernel_kwargs, quantization_kwargs

    def here(package):
        return torch.cuda.is_available() and importlib.util.find_spec(package) is not None

    assert kernel_kwargs(SimpleNamespace(model_init_kwargs=None, use_liger_kernel=False)) == {}
    for cfg in (SimpleNamespace(model_init_kwargs={"use_kernels": True}), SimpleNamespace(use_liger_kernel=True)):
        if here("kernels"):
            assert kernel_kwargs(cfg) == {"use_kernels": True}
        else:
            with pytest.raises(UserError, match="need a CUDA GPU and the kernels package"):
                kernel_kwargs(cfg)
    quantized = SimpleNamespace(load_in_4bit=True, load_in_8bit=False, use_peft=False)
    with pytest.raises(
        UserError, match="add --use_peft" if here("bitsandbytes") else "need a CUDA GPU and bitsandbytes"
    ):
        quantization_kwargs(quantized)


def test_vllm_generation_backend_is_one_line_without_vllm_or_a_gpu():
    """`--generation_backend vllm` (probe, evals) and `use_vllm` (GRPO) where vLLM cannot run: one line naming the
    fix, at parse time, not a traceback in the middle of a run (issue 23); where it can, they parse."""
    from posttrain.configs import FactualityConfig, GRPOStageConfig, ProbeConfig

    eval_args = ["--model", "m", "--eval_set", "e", "--output", "o"]
    with pytest.raises(UserError, match="generation_backend must be hf or vllm, got 'tgi'"):
        parse_config(FactualityConfig, [*eval_args, "--generation_backend", "tgi"])
    grpo_args = ["--use_vllm", "true", "--output_dir", "/tmp/unused"]
    if vllm_here():
        for cls, args in ((FactualityConfig, eval_args), (ProbeConfig, [])):
            assert parse_config(cls, [*args, "--generation_backend", "vllm"])[0].generation_backend == "vllm"
        assert parse_config(GRPOStageConfig, grpo_args)[0].use_vllm
        return
    for cls, args in ((FactualityConfig, eval_args), (ProbeConfig, [])):
        with pytest.raises(UserError, match="vLLM is not installed|needs a CUDA GPU"):
            parse_config(cls, [*args, "--generation_backend", "vllm"])
    with pytest.raises(UserError, match="vLLM is not installed|needs a CUDA GPU"):
        parse_config(GRPOStageConfig, grpo_args)
