"""Next-token pretraining on accelerate: the loop, validation (loss, bits per byte), throughput/MFU, resume.

Why a hand-written loop rather than `transformers.Trainer`: pretraining needs a token budget and a global batch
in tokens, bits-per-byte validation, MFU against a measured peak and exact resume of a packed, reshuffled-per-epoch
stream; the loop stays a screen long and as fast as a raw PyTorch loop (bench/pretrain_throughput.py). Devices,
DDP / FSDP / DeepSpeed, mixed precision, gradient accumulation, checkpoint state and trackers are accelerate's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from accelerate.utils import GradientAccumulationPlugin
from datasets import IterableDataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from posttrain import checkpoint
from posttrain.errors import UserError
from posttrain.runtime import accelerator_kwargs, amp_dtype, resolve_precision
from posttrain.throughput import device_peak_flops, mfu


def make_accelerator(cfg, grad_accum: int) -> Accelerator:
    """The Accelerator for a config: CPU/gloo without CUDA, bf16 where the device computes it natively (a GPU
    with bf16, a CPU with AVX512-BF16/AMX; fp32 master weights and optimizer state), trackers if installed."""
    precision = resolve_precision(cfg.mixed_precision)
    trackers = [t for t in cfg.report_to if t not in ("none", "")]
    accelerator = Accelerator(
        **accelerator_kwargs(),
        mixed_precision=precision,
        # Sync every grad_accum micro-batches, counted across epochs. accelerate's default also forces an optimizer
        # step at the end of every prepared loader (a new one per epoch here): mid-step, with a partial window, and
        # at places a resumed run cannot reproduce (found by bench/kill_resume.py, docs/LOG.md 2026-11-26).
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
        log_with=trackers or None,
        project_dir=cfg.run_dir,
    )
    if accelerator.state.deepspeed_plugin is not None:  # our loaders are not prepared by accelerate: say the size
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (
            cfg.per_device_batch_size
        )
    return accelerator


def set_threads(cfg) -> int:
    """CPU threads per process: cores / local processes (two processes × all cores each collapse throughput)."""
    if cfg.num_threads:
        n = cfg.num_threads
    elif "OMP_NUM_THREADS" in os.environ:
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        n = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(n)
    return n


@dataclass
class Plan:
    """Steps and batch arithmetic, fixed before training starts."""

    total_steps: int
    grad_accum: int
    tokens_per_step: int
    note: str


def grad_accumulation(cfg, num_processes: int) -> int:
    per_micro = cfg.per_device_batch_size * cfg.seq_len * num_processes
    if cfg.global_batch_tokens % per_micro:
        raise UserError(
            f"global_batch_tokens {cfg.global_batch_tokens} is not a multiple of per_device_batch_size × seq_len × "
            f"processes = {cfg.per_device_batch_size} × {cfg.seq_len} × {num_processes} = {per_micro}"
        )
    return cfg.global_batch_tokens // per_micro


def bios_per_known(mix, world_dir) -> float | None:
    """Biographies per well-known (`eval_known`) person in the world a mix reads its documents from: the unit of
    the `exposures` budget (None when the mix reads no world documents or the world has no such person)."""
    from posttrain import world as world_lib
    from posttrain.data import WORLD

    sources = [src for src in mix.datasets if src.path == WORLD and (src.name or "documents") == "documents"]
    if not sources or not Path(world_dir, "dataset_dict.json").is_file():
        return None
    docs = world_lib.load_world(world_dir)["documents"]
    people = [p for p, s in zip(docs["person_id"], docs["split"]) if s == "eval_known"]
    # a permuted copy (the view's `permutations`) is one more biography: the budget stays in exposures per fact
    copies = 1 + int((sources[0].options or {}).get("permutations", 0))
    return copies * len(people) / len(set(people)) if people else None


def names_scale(cfg, mix, world_dir) -> tuple[float, str | None]:
    """`adapt_to_names` with an `exposures` budget over a world's documents: the world's name factor and its
    reason (`world.name_factor`); else (1, None)."""
    from posttrain import world as world_lib
    from posttrain.data import WORLD

    if not cfg.adapt_to_names or cfg.exposures is None or cfg.max_steps is not None or cfg.max_tokens is not None:
        return 1.0, None
    if not any(src.path == WORLD for src in mix.datasets) or not Path(world_dir, "dataset_dict.json").is_file():
        return 1.0, None
    return world_lib.name_factor(world_lib.load_world(world_dir))


def plan(cfg, n_params: int, num_processes: int, epoch_tokens: int | None = None,
         bios_per_known: float | None = None, scale: tuple[float, str | None] = (1.0, None)) -> Plan:  # fmt: skip
    """Steps and their reason. The budget: max_steps, else max_tokens, else `exposures` (needs the training set's
    tokens per epoch and the world's biographies per well-known person; times `scale`'s factor, `names_scale`),
    else tokens_per_param."""
    grad_accum = grad_accumulation(cfg, num_processes)
    if cfg.max_steps is not None:
        steps, why = cfg.max_steps, "max_steps"
    elif cfg.max_tokens is not None:
        steps, why = max(1, cfg.max_tokens // cfg.global_batch_tokens), f"max_tokens {cfg.max_tokens:,}"
    elif cfg.exposures is not None:
        if not epoch_tokens or not bios_per_known:
            raise UserError(f"{cfg.data_mix}: exposures needs a world with eval_known biographies in the mix "
                            "(set max_tokens for other data)")  # fmt: skip
        exposures = cfg.exposures * scale[0]
        epochs = exposures / bios_per_known
        steps = max(1, int(epochs * epoch_tokens) // cfg.global_batch_tokens)
        scaled = f" ({scale[1]}: {exposures:.1f})" if scale[1] and scale[0] != 1 else ""
        why = (f"exposures {cfg.exposures:g}{scaled}: a well-known person's {bios_per_known:.2f} biographies (mean) "
               f"seen {exposures:.4g} times = {epochs:.2f} epochs of {epoch_tokens:,} tokens = "
               f"{steps * cfg.global_batch_tokens:,} tokens")  # fmt: skip
        floor = getattr(cfg, "min_steps", None)
        if floor and steps < floor:  # a small world: the model still needs the steps to learn how to store facts
            steps, why = floor, f"{why}; raised to min_steps {floor}: a small world needs the steps, not the epochs"
    else:
        budget = int(cfg.tokens_per_param * n_params)
        steps, why = max(1, budget // cfg.global_batch_tokens), f"{cfg.tokens_per_param} tokens/param"
    note = f"{steps} steps ({why}) × {cfg.global_batch_tokens:,} tokens, grad accumulation {grad_accum}"
    return Plan(steps, grad_accum, cfg.global_batch_tokens, note)


def _sharded_loader(dataset, cfg, accelerator, drop_last: bool) -> DataLoader:
    """This process's share of `dataset` in batches of per_device_batch_size, on its device (accelerate's sharding;
    not registered with the Accelerator, so its position lives in our trainer state, not in accelerate's)."""
    return prepare_data_loader(
        DataLoader(dataset.with_format("torch"), batch_size=cfg.per_device_batch_size, drop_last=drop_last),
        device=accelerator.device,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        put_on_device=True,
    )


def batches(dataset, cfg, accelerator, start_micro: int) -> Iterator[torch.Tensor]:
    """Endless micro-batches: the packed set reshuffled each epoch (seed + epoch), sharded over processes by
    accelerate; resuming at micro-batch k yields exactly what an uninterrupted run would have from k on."""
    if isinstance(dataset, IterableDataset):
        yield from _stream_batches(dataset, cfg, accelerator, start_micro)
        return
    per_epoch = None
    epoch, skip = 0, start_micro
    while True:
        shuffled = dataset.shuffle(seed=cfg.seed + epoch)
        loader = _sharded_loader(shuffled, cfg, accelerator, drop_last=True)
        if per_epoch is None:
            per_epoch = len(loader)
            if per_epoch == 0:
                raise UserError(
                    f"the training set has too few blocks for one batch of {cfg.per_device_batch_size} × "
                    f"{accelerator.num_processes} processes; lower per_device_batch_size or seq_len"
                )
            epoch, skip = divmod(start_micro, per_epoch)
            if epoch:
                continue  # rebuild the loader with this epoch's shuffle
        if skip:
            loader = skip_first_batches(loader, skip)
        for batch in loader:
            yield batch["input_ids"]
        epoch, skip = epoch + 1, 0


def _stream_batches(dataset, cfg, accelerator, start_micro: int) -> Iterator[torch.Tensor]:
    """Streaming (Hub-scale) data: a shuffle buffer reseeded each epoch; resuming re-reads and drops the
    micro-batches already consumed (slower than an index skip, but exact)."""
    epoch, consumed = 0, 0
    while True:
        stream = dataset.shuffle(seed=cfg.seed, buffer_size=10_000)
        stream.set_epoch(epoch)
        loader = _sharded_loader(stream, cfg, accelerator, drop_last=True)
        empty = True
        for batch in loader:
            empty = False
            consumed += 1
            if consumed > start_micro:
                yield batch["input_ids"]
        if empty:
            raise UserError("the streamed training set yields no full batch")
        epoch += 1


@torch.no_grad()
def evaluate(model, dataset, cfg, accelerator, token_bytes: torch.Tensor) -> dict:
    """Validation loss (nats/token) and bits per byte (special tokens excluded), over all processes.

    Every process runs the same number of forward passes (DDP and sharded models need it): accelerate pads the
    last batches with repeated blocks and `gather_for_metrics` drops them again.
    """
    model.eval()
    loader = _sharded_loader(dataset, cfg, accelerator, drop_last=False)
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, tokens, bytes
    tb = token_bytes.to(accelerator.device)
    seen = 0
    for batch in loader:
        x = batch["input_ids"]
        with accelerator.autocast():
            logits = model(input_ids=x).logits
        targets = x[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none").double()
        nbytes = tb[targets.clamp(max=tb.numel() - 1)]
        per_block = torch.stack([(loss * (nbytes > 0)).sum(1), (nbytes > 0).sum(1).double(), nbytes.sum(1)], dim=1)
        totals += accelerator.gather_for_metrics(per_block).sum(0)
        seen += x.numel() * accelerator.num_processes
        if seen >= cfg.eval_max_tokens:
            break
    model.train()
    loss_sum, tokens, nbytes = totals.tolist()
    if tokens == 0:
        return {"val_loss": float("nan"), "val_bpb": float("nan")}
    return {"val_loss": loss_sum / tokens, "val_bpb": loss_sum / (math.log(2) * nbytes)}


class MetricsLog:
    """metrics.jsonl beside the checkpoints (main process): one line per log/eval; trimmed on resume."""

    def __init__(self, path: Path, accelerator, resume_step: int):
        self.path, self.accelerator = path, accelerator
        if accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if resume_step and path.is_file():
                kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict, step: int) -> None:
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []


def train(
    cfg,
    accelerator,
    model,
    optimizer,
    scheduler,
    train_set,
    val_set,
    token_bytes,
    the_plan: Plan,
    flops_per_token: float,
    ckpt_root: Path,
) -> dict:
    """Run (or resume) the loop; returns the final numbers. Every process calls this."""
    checkpoint.fresh_start(ckpt_root, cfg.resume_from_checkpoint, cfg.overwrite_checkpoints, accelerator)
    resume = checkpoint.resolve(cfg.resume_from_checkpoint, ckpt_root)
    state = {"step": 0, "train_seconds": 0.0}
    if resume is not None:
        state = checkpoint.load(accelerator, resume)
        restore_scheduler(scheduler, state)
        accelerator.print(f"resumed from {resume} at step {state['step']}")
    elif cfg.resume_from_checkpoint == "latest":
        accelerator.print(f"no checkpoint in {ckpt_root} yet: starting from scratch")
    log = MetricsLog(ckpt_root / "metrics.jsonl", accelerator, state["step"])
    compute_dtype = amp_dtype(accelerator.mixed_precision) or torch.float32
    peak, peak_source = device_peak_flops(accelerator.device, compute_dtype)
    stream = batches(train_set, cfg, accelerator, state["step"] * the_plan.grad_accum)
    model.train()

    step = state["step"]
    bar = tqdm(total=the_plan.total_steps, initial=step, disable=not accelerator.is_local_main_process, desc="pretrain")
    window_loss = torch.zeros((), device=accelerator.device)
    # the sum of the token ids trained on since the last log line: a fingerprint of the data, so a resumed run can be
    # checked step by step against an uninterrupted one (bench/kill_resume.py); summed on the device, no sync
    window_data = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    finite = torch.ones((), dtype=torch.bool, device=accelerator.device)
    window_steps, window_time = 0, 0.0
    last = {}
    while step < the_plan.total_steps:
        t0 = time.perf_counter()
        for _ in range(the_plan.grad_accum):
            x = next(stream)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = model(input_ids=x, labels=x).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += loss.detach() / the_plan.grad_accum
            window_data += x.sum()
            finite &= torch.isfinite(loss.detach())
        scheduler.step()
        step += 1
        dt = time.perf_counter() - t0
        state["train_seconds"] += dt
        window_time += dt
        window_steps += 1
        bar.update(1)

        log_now = step % cfg.log_every == 0 or step == the_plan.total_steps
        saving = cfg.save_every and step % cfg.save_every == 0 and step < the_plan.total_steps
        if log_now or saving:  # nothing non-finite is logged or checkpointed
            check_finite(finite, accelerator, ckpt_root, step)
        if log_now:
            train_loss = accelerator.reduce(window_loss, reduction="mean").item() / window_steps
            tok_s = window_steps * the_plan.tokens_per_step / window_time
            last = {
                "step": step,
                "tokens": step * the_plan.tokens_per_step,
                "train_loss": train_loss,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": tok_s,
                "mfu": mfu(flops_per_token, tok_s, peak, accelerator.num_processes),
                "data_checksum": accelerator.reduce(window_data, reduction="sum").item(),
            }
            log.write(last, step)
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{last['mfu']:.1%}")
            window_loss.zero_()
            window_data.zero_()
            window_steps, window_time = 0, 0.0
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == the_plan.total_steps:
            metrics = evaluate(model, val_set, cfg, accelerator, token_bytes)
            log.write({"step": step, "tokens": step * the_plan.tokens_per_step, **metrics}, step)
            bar.write(f"step {step}: val loss {metrics['val_loss']:.4f}, {metrics['val_bpb']:.4f} bits/byte")
            last.update(metrics)
        if saving:
            sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
            checkpoint.save(accelerator, ckpt_root, step, {**state, "step": step, "scheduler": sched}, cfg.keep_last)
    bar.close()
    in_sync = replicas_in_sync(model, accelerator)
    records = log.records() if accelerator.is_main_process else []
    trained = [r for r in records if "tokens_per_s" in r]
    steady = trained[1:] or trained  # the first window includes warm-up
    tok_s = sum(r["tokens_per_s"] for r in steady) / max(1, len(steady))
    # A CPU peak measured while another job held a core is too low (MFU > 100 %): measure again, keep the best.
    peak = max(peak, device_peak_flops(accelerator.device, compute_dtype, fresh=True)[0])
    return {
        "steps": step,
        "tokens": step * the_plan.tokens_per_step,
        "train_loss": last.get("train_loss"),
        "val_loss": last.get("val_loss"),
        "val_bpb": last.get("val_bpb"),
        "tokens_per_s": tok_s,
        "mfu": mfu(flops_per_token, tok_s, peak, accelerator.num_processes),
        "peak_flops": peak,
        "peak_source": peak_source,
        "train_seconds": state["train_seconds"],
        "replicas_in_sync": in_sync,
        "records": records,
    }


def restore_scheduler(scheduler, state: dict) -> None:
    """The LR schedule's position lives in trainer_state.json (plain numbers), not in a pickle: accelerate's
    `register_for_checkpointing` reloads custom objects with an unrestricted `torch.load`, which runs whatever
    a tampered checkpoint holds. A checkpoint without it (older ones) replays the schedule to its step."""
    saved = state.get("scheduler")
    if saved is None:
        for _ in range(state["step"]):
            scheduler.step()
        return
    scheduler.load_state_dict({**scheduler.state_dict(), **saved})


def check_finite(finite, accelerator, ckpt_root: Path, step: int) -> None:
    """Stop at a non-finite loss before it is logged or checkpointed: one line naming the step; `latest` still
    names the last good checkpoint."""
    if accelerator.reduce(finite.to(torch.int32), reduction="sum").item() < accelerator.num_processes:
        raise UserError(checkpoint.not_finite_message(ckpt_root, step, "pretraining loss is not finite"))


def replicas_in_sync(model, accelerator) -> bool | None:
    """Data parallel: every process must hold the same weights (a checksum per process, gathered and compared).
    None where weights are sharded (FSDP, ZeRO-3) or there is one process."""
    from accelerate.utils import DistributedType

    if accelerator.num_processes == 1 or accelerator.distributed_type not in (
        DistributedType.MULTI_CPU,
        DistributedType.MULTI_GPU,
    ):
        return None
    with torch.no_grad():
        total = sum(p.detach().double().sum() for p in model.parameters())
    sums = accelerator.gather(total.reshape(1).to(accelerator.device)).tolist()
    if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
        raise RuntimeError(f"data-parallel replicas diverged: parameter checksums {sums}")
    return True


def fp32_output_layer(model) -> None:
    """Keep the output layer out of autocast: logits (and their gradient into the last hidden state) in fp32. The
    weight is read in fp32 too, so a DeepSpeed bf16 engine (which holds the weights themselves in bf16) gets the
    same fp32 logits; with fp32 master weights the cast is a no-op."""
    head = model.get_output_embeddings()

    def fp32_forward(x):
        with torch.autocast(x.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(x.float(), head.weight.float(), bias)

    head.forward = fp32_forward


def maybe_compile(model, cfg):
    if cfg.compile == "true" or (cfg.compile == "auto" and torch.cuda.is_available()):
        return torch.compile(model)
    return model


def optimizer_for(model, cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where the device supports it (CUDA; recent CPU builds), no decay on norms and biases."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": 1e-8}
    with contextlib.suppress(RuntimeError, TypeError):
        if device.type == "cuda":
            return torch.optim.AdamW(groups, fused=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def scheduler_for(optimizer, cfg, total_steps: int):
    """transformers' schedulers, all with linear warmup: cosine to min_lr_ratio, WSD (warmup-stable-decay), constant."""
    warmup = int(cfg.warmup_ratio * total_steps)
    if cfg.lr_scheduler == "cosine":
        name, extra = "cosine_with_min_lr", {"min_lr_rate": cfg.min_lr_ratio}
    elif cfg.lr_scheduler == "wsd":
        name = "warmup_stable_decay"
        extra = {"num_decay_steps": int(cfg.decay_ratio * total_steps), "min_lr_ratio": cfg.min_lr_ratio}
    else:
        name, extra = "constant_with_warmup", None
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=extra)  # fmt: skip
