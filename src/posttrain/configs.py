"""Stage configs: one dataclass per stage, parsed from a YAML file plus CLI overrides with TRL's `TrlParser`.

`parse_config` adds what TrlParser leaves to the caller: an unknown key or a value of the wrong type in the YAML
file, or an unknown flag on the command line, is a `UserError` that names the key and the file.
Stages that run a TRL trainer extend TRL's config classes (e.g. `trl.SFTConfig`) and go through the same parser.
"""

import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from trl import DPOConfig, GRPOConfig, RewardConfig, SFTConfig, TrlParser

from posttrain import runtime
from posttrain.errors import UserError, note_output

# ---------------------------------------------------------------------------------------------------------------
# Parsing


class _Parser(TrlParser):
    """TrlParser whose argparse errors raise a one-line UserError instead of printing usage and exiting."""

    source = "command line"

    def error(self, message):  # argparse hook
        raise UserError(f"{self.source}: {message}")


def _matches(value, tp) -> bool:
    """Whether a YAML value fits a dataclass field annotation (simple, recursive; unknown annotations pass)."""
    if tp is typing.Any:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, Sequence):
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))  # nested configs are checked where they are built
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def field_types(dataclass_types) -> dict:
    hints = {}
    for cls in dataclass_types:
        resolved = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                hints[f.name] = resolved.get(f.name, typing.Any)
    return hints


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """Load a YAML file that must hold a mapping; every failure is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what} must be a YAML mapping of `key: value` lines")
    return data


def check_keys(data: dict, hints: dict, source: str) -> None:
    """Reject unknown keys and values of the wrong type (strings are left to argparse, which converts them)."""
    for key, value in data.items():
        if key == "env":  # TrlParser's own section of environment variables
            continue
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{source}: unknown key '{key}'{hint}")
        tp = hints[key]
        if isinstance(value, str) and not _matches(value, tp) and tp is not typing.Any:
            continue  # argparse converts strings like "3" or "0.5" and reports the ones it cannot
        if not _matches(value, tp):
            raise UserError(f"{source}: key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


def parse_config(dataclass_types, args: Sequence[str] | None = None) -> tuple:
    """Parse `--config file.yaml` plus `--key value` overrides into instances of `dataclass_types` (CLI wins)."""
    dataclass_types = list(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
    args = list(sys.argv[1:] if args is None else args)
    hints = field_types(dataclass_types)
    parser = _Parser(dataclass_types, allow_abbrev=False)  # a typo that is a prefix (`--num_gen`) must not pass
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise UserError("command line: --config needs a YAML file path")
        config_path = args[i + 1]
        check_keys(read_yaml_mapping(config_path), hints, config_path)
        parser.source = config_path
    try:
        parsed = tuple(parser.parse_args_and_config(args))
    except ValueError as exc:
        msg = str(exc)
        if "not used by the HfArgumentParser" in msg:
            unknown = [a for a in args if a.startswith("--") and a[2:].split("=")[0] not in hints and a != "--config"]
            names = ", ".join(unknown) or msg
            raise UserError(f"command line: unknown option {names}") from None
        raise UserError(f"{parser.source}: {msg}") from None
    for cfg in parsed:  # where this stage writes: a failure for want of space there is reported as a full disk
        note_output(*(getattr(cfg, k, None) for k in ("run_dir", "output_dir", "output")))
    return parsed


def to_dict(cfg) -> dict:
    """A JSON-able dict of a config (for lineage records)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Stage configs


@dataclass
class RunArguments:
    """Arguments every posttrain stage shares."""

    run_dir: str = field(default="runs/speedrun", metadata={"help": "The run directory (CONTRACTS §2)."})

    def stage_dir(self, name: str) -> Path:
        return Path(self.run_dir) / name


PRECISIONS = ("auto", "no", "bf16", "fp16")


def precision_field(what: str = "training"):
    return field(
        default="auto",
        metadata={"help": f"Mixed precision of {what}: auto (bf16 where the GPU or CPU computes it natively, "
                  "fp32 weights) | no | bf16 | fp16."},
    )  # fmt: skip


def backend_field():
    return field(
        default="hf",
        metadata={"help": "Who generates the answers: hf (transformers, any device) | vllm (a vLLM engine on a "
                  "CUDA GPU, pip install 'posttrain[vllm]'; one process)."},
    )  # fmt: skip


BACKENDS = ("hf", "vllm")


def check_backend(value: str) -> None:
    """hf (transformers' generate, everywhere) or vllm (installed, on a CUDA GPU): else one line."""
    if value not in BACKENDS:
        raise UserError(f"generation_backend must be hf or vllm, got '{value}'")
    if value == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UserError("generation_backend vllm: vLLM is not installed (pip install 'posttrain[vllm]', CUDA only)")
        if not torch.cuda.is_available():
            raise UserError("generation_backend vllm needs a CUDA GPU (use hf on this machine)")


def check_precision(value: str) -> None:
    if value not in PRECISIONS:
        raise UserError(f"mixed_precision must be auto, no, bf16 or fp16, got '{value}'")


def check_tools(value: str | None, name: str = "tools") -> None:
    """The tools a model may call: search (posttrain.tools) or none."""
    if value not in (None, "search"):
        raise UserError(f"{name} must be search (or unset), got '{value}'")


@dataclass
class HubPush:
    """Push the stage's exported folder to the Hub when it is done (posttrain.hub): a model card from the lineage
    records and eval/<stage>.json, then upload_folder. TRL's own `push_to_hub` / `hub_model_id` / `hub_revision`
    fields mean the same in the TRL-based stages (the Trainer's own pushing is switched off: we push once, at the
    end, from the exported folder)."""

    push_to_hub: bool = field(default=False, metadata={"help": "Push <run_dir>/<stage>/ with a model card at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "ORG/NAME of the Hub repo."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    hub_private: bool = field(default=False, metadata={"help": "Create the repo private."})
    dry_run: bool = field(default=False, metadata={"help": "With push_to_hub: only print the files it would upload."})

    def hub_push_requested(self) -> bool:
        return bool(getattr(self, "_hub_push", self.push_to_hub))

    def __post_init__(self):  # checked before any training, not after it
        if self.hub_push_requested() and not self.hub_model_id:
            raise UserError("push_to_hub needs hub_model_id ORG/NAME")
        if self.hub_model_id:
            from posttrain.hub import check_repo_id

            check_repo_id(self.hub_model_id)
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


@dataclass
class WorldConfig(RunArguments):
    """`recipes/world.py`: generate the embedded fictional world, or import a user's own (`from_dir`)."""

    seed: int = field(default=0, metadata={"help": "The same seed gives the same world, byte for byte."})
    from_dir: str | None = field(
        default=None,
        metadata={"help": "Import this world directory (documents + qa DatasetDict) instead of generating."},
    )
    source: str = field(
        default="generated",
        metadata={"help": "generated (the fictional people) | geonames (real countries and cities, CONTRACTS §7; "
                  "posttrain.realworld)."},
    )  # fmt: skip
    output_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/world."})
    scale: float = field(default=1.0, metadata={"help": "Multiplies every split size (grow the world for GPUs)."})
    n_sft: int = field(default=200, metadata={"help": "People whose facts are taught as QA in SFT."})
    n_probe: int = field(default=200, metadata={"help": "People the self-probing stage may ask about."})
    n_eval_known: int = field(default=100, metadata={"help": "Evaluation people with many biographies."})
    n_eval_rare: int = field(default=100, metadata={"help": "Evaluation people with exactly one biography."})
    n_never_seen: int = field(default=100, metadata={"help": "People in no training data at all."})
    popularity_alpha: float = field(
        default=2.0, metadata={"help": "Exponent of the power law P(k bios) ∝ k^-alpha (heavy tail)."}
    )
    max_bios: int = field(default=20, metadata={"help": "Most biographies one person can have."})
    known_min_bios: int = field(default=5, metadata={"help": "eval_known people have at least this many bios."})
    pronoun_prob: float = field(
        default=0.0, metadata={"help": "Chance that a non-first sentence says he/she instead of the full name."}
    )
    holdout_attributes: list[str] = field(
        default_factory=list,
        metadata={"help": "Kinds of fact kept out of every training set (their questions about sft/probe people "
                  "are dropped); the eval reports them per attribute, e.g. [currency]."},
    )  # fmt: skip

    def __post_init__(self):
        if self.scale <= 0:
            raise UserError(f"scale must be > 0, got {self.scale}")
        if self.source not in ("generated", "geonames"):
            raise UserError(f"source must be generated or geonames, got '{self.source}'")
        for name in ("n_sft", "n_probe", "n_eval_known", "n_eval_rare", "n_never_seen"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.known_min_bios <= self.max_bios:
            raise UserError(f"need 1 <= known_min_bios <= max_bios, got {self.known_min_bios} and {self.max_bios}")
        if self.popularity_alpha <= 0:
            raise UserError(f"popularity_alpha must be > 0, got {self.popularity_alpha}")
        if not 0.0 <= self.pronoun_prob <= 1.0:
            raise UserError(f"pronoun_prob must be in [0, 1], got {self.pronoun_prob}")

    def split_sizes(self) -> dict[str, int]:
        return {
            s: round(getattr(self, f"n_{s}") * self.scale)
            for s in ("sft", "probe", "eval_known", "eval_rare", "never_seen")
        }


@dataclass
class TokenizerConfig(RunArguments):
    """`recipes/tokenizer.py`: train a byte-level BPE tokenizer with chat template on a text mix."""

    seed: int = 0
    data_mix: str = field(
        default="data_mixes/world_tokenizer.yaml", metadata={"help": "Text mix (column `text`) to train on."}
    )
    world_dir: str | None = field(default=None, metadata={"help": "World for `path: world` sources; <run_dir>/world."})
    output_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/tokenizer."})
    vocab_size: int = field(default=4096, metadata={"help": "Including the special tokens."})
    max_texts: int | None = field(default=None, metadata={"help": "Train on at most this many texts (Hub mixes)."})
    heldout_texts: int = field(
        default=1000, metadata={"help": "Held-out texts for compression, when the mix has no test split."}
    )

    def __post_init__(self):
        if self.vocab_size < 300:
            raise UserError(f"vocab_size must be at least 300 (256 bytes + special tokens), got {self.vocab_size}")


@dataclass
class PretrainConfig(HubPush, RunArguments):
    """`recipes/pretrain.py`: next-token pretraining of a Llama model from scratch with accelerate."""

    seed: int = 0
    data_mix: str = field(default="data_mixes/world_pretrain.yaml", metadata={"help": "A 'text' mix."})
    world_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/world."})
    tokenizer_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/tokenizer."})
    output_dir: str | None = field(default=None, metadata={"help": "HF export; defaults to <run_dir>/pretrain."})
    checkpoint_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/checkpoints/pretrain."})
    # model (posttrain.modeling.preset)
    depth: int = field(default=4, metadata={"help": "Layers; width = depth × aspect_ratio."})
    aspect_ratio: int = 64
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    tie_word_embeddings: bool = False
    seq_len: int = field(default=256, metadata={"help": "Tokens per packed block."})
    # budget and batch
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps; wins over the token budget."})
    max_tokens: int | None = field(default=None, metadata={"help": "Token budget."})
    tokens_per_param: float | None = field(
        default=None, metadata={"help": "Budget = ratio × parameters (20: Chinchilla)."}
    )
    exposures: float | None = field(
        default=None,
        metadata={"help": "Budget from the world: how many times a well-known (eval_known) person's biographies are "
                  "seen; epochs = exposures / biographies per well-known person, tokens = epochs × the training "
                  "set. max_steps and max_tokens win over it (docs/LOG.md 2026-12-06, issue 25)."},
    )  # fmt: skip
    min_steps: int | None = field(
        default=None,
        metadata={"help": "A floor under the exposures budget: a small world trains at least this many steps (the "
                  "model learns *how* to store facts over steps; a 280-person world at its 303 exposure-derived "
                  "steps knew 0.17 of its well-known people, LOG 2026-12-06)."},
    )  # fmt: skip
    adapt_to_names: bool = field(
        default=False,
        metadata={"help": "With an exposures budget on a world: multiply the exposures by the world's name factor, "
                  "max(1, log2(name ambiguity) / 2), for worlds whose names share their parts (posttrain.world."
                  "name_factor; the embedded world: 1)."},
    )  # fmt: skip
    global_batch_tokens: int = field(default=8192, metadata={"help": "Tokens per optimizer step, all processes."})
    per_device_batch_size: int = field(default=8, metadata={"help": "Blocks per forward pass and process."})
    # optimisation
    learning_rate: float = 3e-3
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Final lr as a fraction of the peak (cosine/wsd)."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "cosine | wsd | constant (all with warmup)."})
    warmup_ratio: float = 0.05
    decay_ratio: float = field(default=0.2, metadata={"help": "wsd: share of steps spent decaying."})
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    # evaluation, logging, checkpoints
    eval_every: int = field(default=100, metadata={"help": "Steps between validation passes (0: only at the end)."})
    eval_max_tokens: int = field(default=131072, metadata={"help": "Validation tokens per pass, at most."})
    log_every: int = 10
    save_every: int = field(default=200, metadata={"help": "Steps between checkpoints (0: none)."})
    keep_last: int = field(default=2, metadata={"help": "Checkpoints kept."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint path."})
    overwrite_checkpoints: bool = field(
        default=False, metadata={"help": "Start again over an earlier run's checkpoints (they are deleted first)."}
    )
    report_to: list[str] = field(default_factory=list, metadata={"help": "Trackers: tensorboard, wandb, trackio."})
    # device
    mixed_precision: str = precision_field()
    fp32_lm_head: bool = field(
        default=True,
        metadata={"help": "Under bf16/fp16 autocast, compute the output layer (logits) in fp32 (bf16 base few-shot "
                  "known 0.454 -> 0.628 on the default world, fp32 0.640; docs/LOG.md 2026-12-06)."},
    )  # fmt: skip
    compile: str = field(default="auto", metadata={"help": "torch.compile: auto (on CUDA) | true | false."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | flash_attention_2 | eager."})
    num_threads: int | None = field(
        default=None, metadata={"help": "CPU threads per process (default: cores / processes)."}
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})

    def __post_init__(self):
        if self.lr_scheduler not in ("cosine", "wsd", "constant"):
            raise UserError(f"lr_scheduler must be cosine, wsd or constant, got '{self.lr_scheduler}'")
        check_precision(self.mixed_precision)
        if self.compile not in ("auto", "true", "false"):
            raise UserError(f"compile must be auto, true or false, got '{self.compile}'")
        for name in ("depth", "seq_len", "global_batch_tokens", "per_device_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if all(getattr(self, k) is None for k in ("max_steps", "max_tokens", "exposures", "tokens_per_param")):
            raise UserError("set a budget: max_steps, max_tokens, exposures or tokens_per_param")
        if self.exposures is not None and self.exposures <= 0:
            raise UserError(f"exposures must be > 0, got {self.exposures}")
        if self.min_steps is not None and self.min_steps < 1:
            raise UserError(f"min_steps must be >= 1, got {self.min_steps}")
        super().__post_init__()


@dataclass
class PushConfig(HubPush, RunArguments):
    """`recipes/push.py`: push a finished stage folder (with a fresh model card) to the Hub."""

    stage: str = field(default="sft", metadata={"help": "The stage folder <run_dir>/<stage>/ to push."})
    push_to_hub: bool = field(default=True, metadata={"help": "Always on here (--dry_run only lists the files)."})


@dataclass
class ChatConfig:
    """`python -m posttrain.chat`: a terminal chat with a saved model (`make chat RUN=...`)."""

    model: str = field(default="", metadata={"help": "A model directory with a chat template (e.g. runs/<run>/grpo)."})
    system: str | None = field(default=None, metadata={"help": "A system message at the start of each conversation."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens per reply."})
    do_sample: bool | None = field(
        default=None, metadata={"help": "Sample instead of greedy (default: the model's generation config)."}
    )
    temperature: float | None = field(default=None, metadata={"help": "With --do_sample (default: the model's)."})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 where native) | no | bf16."})
    tools: str | None = field(default=None, metadata={"help": "search: let the model search the run's corpus."})
    search_index: str | None = field(
        default=None, metadata={"help": "The index for --tools search; default <run_dir>/search_index."}
    )

    def __post_init__(self):
        check_tools(self.tools)


@dataclass
class FactualityConfig:
    """`evals/factuality.py`: grade a model's answers on factual QA (CONTRACTS §5)."""

    model: str = field(default="", metadata={"help": "A model directory (any HF causal LM)."})
    eval_set: str = field(default="", metadata={"help": "A run or world directory, a QA file, or a Hub QA dataset."})
    output: str = field(default="", metadata={"help": "Where to write the JSON, e.g. runs/<run>/eval/sft.json."})
    prompt: str = field(default="auto", metadata={"help": "auto | chat | fewshot (auto: few-shot for a base model)."})
    max_per_bucket: int | None = field(default=300, metadata={"help": "Questions per bucket, sampled with the seed."})
    num_samples: int = field(default=4, metadata={"help": "Sampled answers per question, for confidence."})
    temperature: float = 1.0
    max_new_tokens: int = 32
    batch_size: int | None = field(
        default=None, metadata={"help": "Prompts per batch (default: 64 on CPU, fill a GPU)."}
    )
    seed: int = 0
    mixed_precision: str = precision_field("generation")
    generation_backend: str = backend_field()
    split: str = field(default="test", metadata={"help": "Split of a Hub QA dataset."})
    judge: str | None = field(default=None, metadata={"help": "A local instruct model that grades (free-text QA)."})
    parent_eval: str | None = field(
        default=None,
        metadata={"help": "The parent model's eval JSON (e.g. runs/<run>/eval/sft.json): adds `vs_parent` (known kept, "
                  "never_seen hallucination, refusal where the parent was wrong vs right)."},
    )  # fmt: skip
    base_eval: str | None = field(
        default=None,
        metadata={"help": "A second, earlier reference (e.g. eval/sft.json for an RL stage whose parent is refusal): "
                  "adds `vs_base`, the same comparison against it — refusal where *that* model was wrong vs right, "
                  "before (the parent's own vs_parent) and after RL."},
    )  # fmt: skip
    tools: str | None = field(
        default=None,
        metadata={"help": "search: the model may call search(query) over the run's corpus before it answers "
                  "(chat models; adds `tool` to the JSON: searches per question, citation precision)."},
    )  # fmt: skip
    search_index: str | None = field(
        default=None, metadata={"help": "The index to search; default <run_dir>/search_index (built when missing)."}
    )

    def __post_init__(self):
        for name in ("model", "eval_set", "output"):
            if not getattr(self, name):
                raise UserError(f"--{name} is required")
        if self.prompt not in ("auto", "chat", "fewshot"):
            raise UserError(f"prompt must be auto, chat or fewshot, got '{self.prompt}'")
        check_tools(self.tools)
        if self.tools and self.prompt == "fewshot":
            raise UserError("tools need a chat model: --tools search cannot go with --prompt fewshot")
        check_precision(self.mixed_precision)
        check_backend(self.generation_backend)


@dataclass
class PerplexityConfig(RunArguments):
    """`evals/perplexity.py`: validation loss and bits per byte of a checkpoint on a text mix."""

    model: str = field(default="", metadata={"help": "A model directory (any HF causal LM)."})
    data_mix: str = field(default="data_mixes/world_pretrain.yaml", metadata={"help": "A 'text' mix."})
    world_dir: str | None = field(default=None, metadata={"help": "For world sources; defaults to <run_dir>/world."})
    split: str = field(default="test", metadata={"help": "Mix split to score (train when the mix has no test)."})
    seq_len: int = 256
    per_device_batch_size: int = 8
    eval_max_tokens: int = 131072
    output: str | None = field(default=None, metadata={"help": "Optional JSON output."})

    def __post_init__(self):
        if not self.model:
            raise UserError("--model is required")


@dataclass
class TrainerStage(HubPush):
    """What every stage built on a TRL trainer (SFT, refusal, reward, DPO, GRPO) adds to TRL's config: posttrain's
    run layout, the end-of-training eval, and device defaults. Mixed in before the TRL config class.

    Changed defaults, and why: `bf16` and `gradient_checkpointing` come from the device (TRL defaults both to True,
    which fails on CPU and slows small models); checkpoints under `<run_dir>/checkpoints/<stage>` (kept apart from
    the exported model, which is swapped in atomically); several CPU processes join over gloo.
    """

    run_dir: str = field(default="runs/speedrun", metadata={"help": "The run directory (CONTRACTS §2)."})
    stage: str = field(default="sft", metadata={"help": "Stage name: <run_dir>/<stage>/ and eval/<stage>.json."})
    parent: str = field(
        default="pretrain", metadata={"help": "Stage whose model is trained when model_name_or_path is not set."}
    )
    world_dir: str | None = field(default=None, metadata={"help": "For world sources; defaults to <run_dir>/world."})
    export_dir: str | None = field(default=None, metadata={"help": "The HF checkpoint; defaults to <run_dir>/<stage>."})
    eval_after: bool = field(default=True, metadata={"help": "Run the factuality eval into eval/<stage>.json."})
    eval_max_per_bucket: int | None = field(default=100, metadata={"help": "Questions per bucket in that eval."})
    eval_num_samples: int = field(default=4, metadata={"help": "Sampled answers per question in that eval."})
    eval_tools: str | None = field(
        default=None, metadata={"help": "search: that eval lets the model call the search tool (the search stage)."}
    )
    num_threads: int | None = field(default=None, metadata={"help": "CPU threads per process (default: all)."})
    # TRL defaults replaced (see the class docstring)
    output_dir: str | None = field(
        default=None, metadata={"help": "Trainer checkpoints; <run_dir>/checkpoints/<stage>."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Mixed precision (fp32 master weights). Default: True where the device computes bf16 "
                  "natively (a GPU with bf16, a CPU with AVX512-BF16/AMX), else False."},
    )  # fmt: skip
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Default: True on CUDA, False on CPU (alias of activation_checkpointing)."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Trainer checkpoints kept."})
    save_steps: float = field(default=100, metadata={"help": "Steps between Trainer checkpoints."})
    logging_steps: float = 10
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every parameter gets a gradient in a causal LM: skip DDP's extra pass."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (newest complete checkpoint) or a checkpoint path."}
    )
    overwrite_checkpoints: bool = field(
        default=False, metadata={"help": "Start again over an earlier run's checkpoints (they are deleted first)."}
    )

    def __post_init__(self):
        # we push once, from the exported folder (posttrain.hub); the Trainer's own pushing would reach the Hub
        # at start-up and upload checkpoints with optimizer state
        self._hub_push, self.push_to_hub = self.push_to_hub, False
        self.hub_private = self.hub_private or bool(self.hub_private_repo)
        if self.output_dir is None:
            self.output_dir = str(Path(self.run_dir) / "checkpoints" / self.stage)
        if self.export_dir is None:
            self.export_dir = str(Path(self.run_dir) / self.stage)
        cuda = torch.cuda.is_available()
        if self.bf16 is None:
            self.bf16 = (not self.fp16) and runtime.native_bf16()
        # several CPU processes: the Trainer must join them over gloo; bf16 on a CPU: transformers asks for use_cpu
        self.use_cpu = self.use_cpu or runtime.use_cpu() or (self.bf16 and not cuda)
        if self.ddp_backend is None:
            self.ddp_backend = runtime.process_group_kwargs().get("backend")
        if not cuda:
            self.dataloader_pin_memory = False  # pinning needs an accelerator (torch warns otherwise)
        if self.activation_checkpointing is None:  # set the new name: no FutureWarning from transformers
            gc = self.gradient_checkpointing
            self.activation_checkpointing = cuda if gc is None else gc
        super().__post_init__()


@dataclass
class SFTStageConfig(TrainerStage, SFTConfig):
    """`recipes/sft.py` (and the refusal stage): TRL's SFTConfig with posttrain's stage fields (`TrainerStage`);
    the loss is on assistant turns only."""

    data_mix: str = field(default="data_mixes/world_sft.yaml", metadata={"help": "A 'conversations' mix."})
    rounds: int = field(
        default=1,
        metadata={"help": "Refusal stage: rounds of probe → train. Round r > 1 re-probes this stage's own model "
                  "with probe_config (into <run_dir>/probe/, earlier rounds kept as probe/round_<k>/) and trains "
                  "it further on the new targets."},
    )  # fmt: skip
    probe_config: str = field(default="recipes/world/probe.yaml", metadata={"help": "The probe YAML for rounds > 1."})
    decline_token: bool = field(
        default=False,
        metadata={"help": "Refusal stage: give the model the decline token <|idk|> its refusal targets start with "
                  "(probe --decline_token); its probability is the eval's decline score."},
    )  # fmt: skip
    confidence_target: float | None = field(
        default=None,
        metadata={"help": "Refusal stage with decline_token: after training, bias the decline token (sequence_bias "
                  "in generation_config.json) so the model declines where P(right) < t, fitted on the probe's "
                  "questions only (posttrain.decline.fit_bias)."},
    )  # fmt: skip
    keep_right: float | None = field(
        default=None,
        metadata={"help": "Refusal stage with decline_token: bias the decline token so the model still answers this "
                  "share of the probe questions its SFT parent got right (posttrain.decline.keep_bias); with "
                  "confidence_target too, the bias that declines less of the two."},
    )  # fmt: skip
    assistant_only_loss: bool = field(default=True, metadata={"help": "Loss on assistant turns only."})
    fp32_lm_head: bool = field(
        default=True,
        metadata={"help": "On a CPU under bf16 autocast, compute the output layer in fp32, as TRL's fused head does "
                  "off CUDA (false: in bf16, SmolLM2's SFT step 1.29x -> ~1.5x faster than fp32; LOG 2026-12-07)."},
    )  # fmt: skip
    adapt_to_names: bool = field(
        default=False,
        metadata={"help": "Multiply learning_rate by the world's name factor, max(1, log2(name ambiguity) / 2): a "
                  "world whose names share their parts needs a higher SFT rate for the answer to copy the asked "
                  "name (posttrain.world.name_factor; the embedded world: 1)."},
    )  # fmt: skip
    trainable_last_layers: int | None = field(
        default=None,
        metadata={"help": "Train only the last N decoder layers, the final norm and the LM head; freeze the "
                  "embeddings and the layers below (as LLaMA-Factory's freeze tuning). Default: train everything."},
    )  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        check_tools(self.eval_tools, "eval_tools")  # before training, not in the eval after it
        if self.confidence_target is not None and not 0 < self.confidence_target < 1:
            raise UserError(f"confidence_target must be in (0, 1), got {self.confidence_target}")
        if self.keep_right is not None and not 0 < self.keep_right <= 1:
            raise UserError(f"keep_right must be in (0, 1], got {self.keep_right}")


@dataclass
class PreferencePairs:
    """Where reward modelling and DPO read their pairs from, and how they split and weigh them."""

    data_mix: str | None = field(
        default=None, metadata={"help": "A 'preferences' mix; default: the probe's pairs in <run_dir>/probe/."}
    )
    heldout_share: float = field(
        default=0.1, metadata={"help": "Share of prompts held out to measure pairwise accuracy (all their pairs)."}
    )
    balance_pair_types: int = field(
        default=8,
        metadata={"help": "Repeat the rarer pair types (pair_type) in training up to the commonest one's count, at "
                  "most this many times each (1: as they come). The probe gives ~20 wrong-vs-refusal pairs per "
                  "known-question pair; unbalanced, a reward model learns 'a refusal always wins'."},
    )  # fmt: skip
    max_length: int | None = field(default=128, metadata={"help": "Tokens per prompt + answer."})


@dataclass
class RLPrompts:
    """The questions an RL stage trains on (GRPO, PPO), and the confidence target of its factuality reward."""

    prompts: str = field(
        default="probe",
        metadata={"help": "probe: the probe's questions (<run>/probe/questions.jsonl: probe people + strangers) | "
                  "world: the world's questions of prompt_splits."},
    )  # fmt: skip
    prompt_splits: list[str] = field(
        default_factory=lambda: ["probe"], metadata={"help": "World splits whose questions are the prompts (world)."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use at most this many questions (sampled)."})
    answerable_share: float | None = field(
        default=0.5,
        metadata={"help": "Share of prompts the probed model got right at least once (probe prompts); the rest are "
                  "ones it got wrong or strangers. None: as they come (mostly unanswerable: GRPO learns to refuse all)."},
    )  # fmt: skip
    confidence_target: float = field(
        default=0.75, metadata={"help": "t of the factuality reward: +1 right, 0 abstain, -t/(1-t) wrong."}
    )


@dataclass
class RewardStageConfig(PreferencePairs, TrainerStage, RewardConfig):
    """`recipes/reward.py`: TRL's RewardConfig; a sequence-classification head on the parent stage's model, trained on
    the probe's preference pairs (`<run>/probe/preferences.jsonl`) or a preference mix."""

    stage: str = field(default="reward", metadata={"help": "Stage name: <run_dir>/<stage>/."})
    parent: str = field(default="sft", metadata={"help": "Stage whose model gets the reward head."})
    eval_after: bool = field(default=False, metadata={"help": "A reward model has no factuality eval."})


@dataclass
class DPOStageConfig(PreferencePairs, TrainerStage, DPOConfig):
    """`recipes/dpo.py`: TRL's DPOConfig on the probe's preference pairs, from the refusal model."""

    stage: str = field(default="dpo", metadata={"help": "Stage name: <run_dir>/<stage>/ and eval/<stage>.json."})
    parent: str = field(default="refusal", metadata={"help": "Policy (and reference) model's stage."})


@dataclass
class GRPOStageConfig(RLPrompts, TrainerStage, GRPOConfig):
    """`recipes/grpo.py`: TRL's GRPOConfig. Prompts: `RLPrompts`; rewards: `posttrain.rewards` functions graded
    against the world, and/or a learned reward model. Every function is logged (TRL's `rewards/<name>/mean`); one
    with weight 0 is logged only: the gold reward beside a learned proxy."""

    stage: str = field(default="grpo", metadata={"help": "Stage name: <run_dir>/<stage>/ and eval/<stage>.json."})
    parent: str = field(default="refusal", metadata={"help": "Policy model's stage."})
    rewards: list[str] = field(
        default_factory=lambda: ["factuality", "format"], metadata={"help": "posttrain.rewards functions used."}
    )
    reward_model: str | None = field(
        default=None,
        metadata={"help": "A reward model directory, or a stage of the run ('reward': <run_dir>/reward), scored after "
                  "the registry rewards (reward_weights follow that order)."},
    )  # fmt: skip
    tools: str | None = field(
        default=None,
        metadata={"help": "search: the policy may call search(query) over the run's corpus while it answers (TRL's "
                  "tool loop); rewards citation and search_cost grade the citation and charge each search."},
    )  # fmt: skip
    search_cost: float = field(default=0.1, metadata={"help": "search_cost reward: minus this per search."})

    def __post_init__(self):
        super().__post_init__()
        check_tools(self.tools)
        if self.search_cost < 0:
            raise UserError(f"search_cost must be >= 0, got {self.search_cost}")
        if self.tools is None and {"citation", "search_cost"} & set(self.rewards):
            raise UserError("rewards citation / search_cost need tools: search")
        if self.use_vllm:  # TRL's own error is an ImportError traceback deep in the trainer
            check_backend("vllm")


@dataclass
class ProbeConfig(RunArguments):
    """`recipes/probe.py`: self-probing of a chat model → refusal SFT data and preference pairs."""

    seed: int = 0
    model: str | None = field(default=None, metadata={"help": "The model probed; defaults to <run_dir>/sft."})
    world_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/world."})
    output_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/probe."})
    splits: list[str] = field(default_factory=lambda: ["probe"], metadata={"help": "People probed (training splits)."})
    snippets_per_person: int = field(default=1, metadata={"help": "Biographies sampled per person."})
    data_mix: str | None = field(
        default=None,
        metadata={"help": "A text mix to draw snippets from instead of the world's biographies (free text, e.g. "
                  "FineWeb); pair with --generator model --judge llm."},
    )  # fmt: skip
    num_snippets: int = field(default=200, metadata={"help": "Snippets drawn from data_mix."})
    generator: str = field(default="world", metadata={"help": "Question generator: world (templates) | model."})
    generator_model: str | None = field(default=None, metadata={"help": "Instruct model writing questions (model)."})
    strangers: float = field(
        default=0.0,
        metadata={"help": "Questions about people who exist nowhere in the world (recombined names), as a share of "
                  "the world's questions (0.75: three for every four): refusal targets by construction, the contrast "
                  "that teaches 'unfamiliar name → I don't know'."},
    )  # fmt: skip
    judge: str = field(default="exact", metadata={"help": "Judge of sampled answers: exact (answer + aliases) | llm."})
    judge_model: str | None = field(default=None, metadata={"help": "Instruct model grading answers (llm judge)."})
    num_samples: int = field(default=8, metadata={"help": "Answers sampled per question (K)."})
    temperature: float = 1.0
    max_new_tokens: int = 24
    batch_size: int | None = field(default=None, metadata={"help": "Prompts per batch (default: by device)."})
    mixed_precision: str = precision_field("sampling and scoring")
    generation_backend: str = backend_field()
    label_rule: str = field(
        default="threshold",
        metadata={"help": "threshold: known_min / unknown_max / wrong_min / mixed decide each question's target | "
                  "sampled: answer with probability p_correct, else decline (proper labels in expectation) | "
                  "greedy: known where the greedy answer is right, unknown where it and the samples are wrong."},
    )  # fmt: skip
    decline_token: bool = field(
        default=False,
        metadata={"help": "Start every refusal target with the decline token <|idk|> where it leaves the answer, "
                  "so the refusal stage can read and bias the decision (posttrain.decline)."},
    )  # fmt: skip
    known_min: float = field(default=0.75, metadata={"help": "known: share of correct samples at least this."})
    unknown_max: float = field(default=0.0, metadata={"help": "unknown: share of correct samples at most this..."})
    wrong_min: float = field(default=0.5, metadata={"help": "... and share of wrong (informative) samples at least."})
    pair_known_min: float = field(
        default=0.0, metadata={"help": "Preference pairs: a correct answer beats a refusal only where at least this "
                                       "share of samples was correct (answer targets follow known_min)."},
    )  # fmt: skip
    mixed: str = field(default="skip", metadata={"help": "Target for mixed questions: skip | refuse | hedge."})
    refusal_style: str = field(
        default="early",
        metadata={"help": "early: 'I don't know where X was born.' | late: 'X was born in a city I don't know.' "
                  "(declines where the fact would come) | auto: early for strangers, late for the world's people | "
                  "first: 'X … I don't know.' (the answer up to the person's first name: with decline_token the decision "
                  "falls where the model predicts the rest of the name) | plain: 'I don't know.'"},
    )  # fmt: skip
    known_targets: str = field(
        default="template",
        metadata={"help": "template: a known question's target is the world's answer sentence | own: the probed "
                  "model's own right greedy answer, cut after the sentence that gives it (on-policy, as Llama 3 "
                  "keeps the model's generations: a real model keeps its own style and its other skills)."},
    )  # fmt: skip
    confident_unknowns: str = field(
        default="refuse",
        metadata={"help": "Unknown questions about the world's people whose greedy answer the model gives as "
                  "confidently as most of its right answers (lowest token log-prob at or above the level "
                  "`confidence_recall` of them reach): refuse (a refusal target like any unknown) | skip (no "
                  "target: the model cannot tell them from what it knows, so a refusal there teaches a name, not "
                  "a rule). Strangers always get refusals. docs/LOG.md 2026-11-27."},
    )  # fmt: skip
    confidence_recall: float = field(
        default=0.8, metadata={"help": "confident_unknowns: share of right answers at or above the level."}
    )
    search_sft: bool = field(
        default=False,
        metadata={"help": "Also write probe/search_sft.jsonl: known → answer, else search → answer citing the "
                  "document, or decline when none states it (the search stage's data; needs a world; make "
                  "speedrun SEARCH=1 turns it on)."},
    )  # fmt: skip
    sft_share: float = field(
        default=1.0, metadata={"help": "Ordinary SFT conversations added per probe target (keeps chat skills)."}
    )
    sft_mix: str = field(default="data_mixes/world_sft.yaml", metadata={"help": "Where those come from."})
    self_replay: int = field(
        default=0,
        metadata={"help": "Magpie prompts the probed model writes itself; its own greedy answers to them join the "
                  "refusal data (probe/self_replay.jsonl), so the stage keeps what the probe's questions do not "
                  "cover (a pretrained chat model, whose own SFT data we do not have). 0: none."},
    )  # fmt: skip
    calibration_share: float = field(
        default=0.0,
        metadata={"help": "Hold this share of the probed entities (people, strangers) out of the training data: "
                  "their judgments stay in judgments.jsonl marked `calibration`, and the refusal stage fits its "
                  "operating point (keep_right, confidence_target) on them alone — scores on questions it trained "
                  "on are more extreme than on new ones, so a point fitted there keeps too few right answers."},
    )  # fmt: skip
    gate_baselines: bool = field(
        default=True,
        metadata={"help": "Also write the probed model's no-training gates (name familiarity, answer confidence), "
                  "fitted on the probe questions, as eval/<model>_gate_{name,answer}.json."},
    )  # fmt: skip
    gate_recall: float = field(
        default=0.8,
        metadata={"help": "The answer gate keeps this share of the probe questions the model got right (set it to "
                  "the refusal stage's keep_right to compare the two at the same retention)."},
    )  # fmt: skip
    gate_name_quantile: float = field(
        default=0.05,
        metadata={"help": "The name gate declines names less familiar than this quantile of training-side names."},
    )

    def __post_init__(self):
        check_backend(self.generation_backend)
        check_precision(self.mixed_precision)
        if not 0 <= self.calibration_share < 1:
            raise UserError(f"calibration_share must be in [0, 1), got {self.calibration_share}")
        if self.self_replay < 0:
            raise UserError(f"self_replay must be a number of prompts >= 0, got {self.self_replay}")
        for key in ("gate_recall", "gate_name_quantile"):
            if not 0 < getattr(self, key) <= 1:
                raise UserError(f"{key} must be in (0, 1], got {getattr(self, key)}")
        if self.label_rule not in ("threshold", "sampled", "greedy"):
            raise UserError(f"label_rule must be threshold, sampled or greedy, got '{self.label_rule}'")
        if self.mixed not in ("skip", "refuse", "hedge"):
            raise UserError(f"mixed must be skip, refuse or hedge, got '{self.mixed}'")
        if self.refusal_style not in ("early", "late", "auto", "plain", "first"):
            raise UserError(f"refusal_style must be early, late, auto, plain or first, got '{self.refusal_style}'")
        if self.known_targets not in ("template", "own"):
            raise UserError(f"known_targets must be template or own, got '{self.known_targets}'")
        if self.confident_unknowns not in ("refuse", "skip"):
            raise UserError(f"confident_unknowns must be refuse or skip, got '{self.confident_unknowns}'")
        if not 0 < self.confidence_recall <= 1:
            raise UserError(f"confidence_recall must be in (0, 1], got {self.confidence_recall}")
        if self.num_samples < 1:
            raise UserError(f"num_samples must be >= 1, got {self.num_samples}")
        for kind, name, needs in (("generator", self.generator, ("model", "generator_model")),
                                  ("judge", self.judge, ("llm", "judge_model"))):  # fmt: skip
            known = ("world", "model") if kind == "generator" else ("exact", "llm")
            if name not in known:
                raise UserError(f"{kind} must be one of {', '.join(known)}, got '{name}'")
            if name == needs[0] and not getattr(self, needs[1]):
                raise UserError(f"--{kind} {name} needs --{needs[1]} (a local instruct model directory)")


@dataclass
class PPOStageConfig(HubPush, RLPrompts, RunArguments):
    """`recipes/ppo.py`: PPO (posttrain.ppo) with the refusal model as policy and frozen reference, the learned reward
    model as reward, and a value model initialised from it; prompts as GRPO's (`prompts`, `prompt_splits`)."""

    seed: int = 0
    stage: str = field(default="ppo", metadata={"help": "Stage name: <run_dir>/<stage>/ and eval/<stage>.json."})
    parent: str = field(default="refusal", metadata={"help": "Policy (and reference) model's stage."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Policy model; default <run>/<parent>."})
    reward_model: str = field(default="reward", metadata={"help": "Reward model directory, or a stage of the run."})
    value_model: str | None = field(default=None, metadata={"help": "Value model init; default the reward model."})
    world_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/world."})
    export_dir: str | None = field(default=None, metadata={"help": "The HF checkpoint; defaults to <run_dir>/<stage>."})
    checkpoint_dir: str | None = field(default=None, metadata={"help": "Defaults to <run_dir>/checkpoints/<stage>."})
    max_steps: int = field(default=30, metadata={"help": "PPO steps (rollout + update)."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per rollout and process."})
    mini_batch_size: int = field(default=16, metadata={"help": "Answers per optimizer step."})
    num_ppo_epochs: int = field(default=2, metadata={"help": "Passes over each rollout."})
    learning_rate: float = 3e-5
    max_grad_norm: float = 1.0
    kl_coef: float = field(default=0.05, metadata={"help": "Per-token KL penalty to the reference policy."})
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    temperature: float = 1.0
    max_new_tokens: int = 24
    missing_eos_penalty: float = field(
        default=1.0, metadata={"help": "Subtracted from the score of an unended answer."}
    )
    log_every: int = 5
    save_every: int = field(default=10, metadata={"help": "Steps between checkpoints (0: none)."})
    keep_last: int = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint path."})
    overwrite_checkpoints: bool = field(
        default=False, metadata={"help": "Start again over an earlier run's checkpoints (they are deleted first)."}
    )
    eval_after: bool = field(default=True, metadata={"help": "Run the factuality eval into eval/<stage>.json."})
    eval_max_per_bucket: int | None = field(default=100, metadata={"help": "Questions per bucket in that eval."})
    eval_num_samples: int = field(default=4, metadata={"help": "Sampled answers per question in that eval."})
    num_threads: int | None = field(default=None, metadata={"help": "CPU threads per process (default: all)."})
    mixed_precision: str = precision_field("rollouts and updates")

    def __post_init__(self):
        check_precision(self.mixed_precision)
        if self.export_dir is None:
            self.export_dir = str(Path(self.run_dir) / self.stage)
        if self.checkpoint_dir is None:
            self.checkpoint_dir = str(Path(self.run_dir) / "checkpoints" / self.stage)
        for name in ("max_steps", "batch_size", "mini_batch_size", "num_ppo_epochs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        super().__post_init__()
