"""Supervised fine-tuning on conversations with TRL's SFTTrainer: what `recipes/sft.py` puts together (the parts
every TRL stage shares — parent model, resume, export, eval — are in `posttrain.stages`).

Any causal LM is a base: our pretrain output, a local or Hub model, or the converted SmolLM2
(`python -m posttrain.smollm2`). `posttrain.chat_template.prepare_chat` gives its tokenizer a trainable chat template.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from datasets import Dataset
from trl import SFTTrainer, get_peft_config

from posttrain.data import load_mix, read_mix
from posttrain.errors import UserError
from posttrain.runtime import process_state
from posttrain.stages import with_callbacks


def load_conversations(cfg):
    """The mix's train (and test) conversations, each checked to hold an assistant turn."""
    mix = read_mix(cfg.data_mix, run_dir=cfg.run_dir)
    if mix.kind != "conversations":
        raise UserError(f"{cfg.data_mix}: SFT reads a 'conversations' mix, not '{mix.kind}'")
    world_dir = _world_dir(cfg)
    data = load_mix(mix, world_dir)
    for split, ds in data.items():
        if isinstance(ds, Dataset):
            check_conversations(ds, f"{cfg.data_mix} ({split})")
        elif cfg.max_steps <= 0:
            raise UserError(f"{cfg.data_mix}: a streamed mix has no length; set max_steps")
    return mix, world_dir, data


def _world_dir(cfg) -> str:
    return cfg.world_dir or str(Path(cfg.run_dir) / "world")


def adapt_to_names(cfg) -> str | None:
    """`adapt_to_names`: the rate times the world's name factor (`world.name_factor`), set once before training;
    returns the line that says so (None when off or the run has no world)."""
    world_dir = Path(_world_dir(cfg))
    if not cfg.adapt_to_names or not (world_dir / "dataset_dict.json").is_file():
        return None
    from posttrain import world as world_lib

    factor, why = world_lib.name_factor(world_lib.load_world(world_dir))
    cfg.learning_rate *= factor
    return f"{cfg.stage}: learning rate {cfg.learning_rate:.3g} ({why})"


def describe(ds) -> str:
    return f"{len(ds):,} conversations" if isinstance(ds, Dataset) else "streamed conversations"


def check_conversations(ds: Dataset, where: str) -> None:
    """Every row: a non-empty list of {role, content} messages with at least one assistant turn."""
    if len(ds) == 0:
        raise UserError(f"{where}: the mix has no conversations")
    for i, messages in enumerate(ds["messages"]):
        if not messages or not isinstance(messages, list):
            raise UserError(f"{where}: row {i} has no messages")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise UserError(f"{where}: row {i} has a message without a valid role: {str(m)[:80]}")
            if not isinstance(m.get("content"), str):
                raise UserError(f"{where}: row {i} has a {m.get('role')} message whose content is not text")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: row {i} has no assistant turn (nothing to learn from)")


def freeze_below(model, last_layers: int) -> str:
    """Train only the last `last_layers` decoder layers, the final norm and the LM head; with tied embeddings the
    head stays frozen with them. A plain `requires_grad` freeze, written here because PEFT has no freeze-tuning mode
    (its methods add adapter weights); the checkpoint stays a stock model. Return what trains, for the log."""
    if last_layers < 1:
        raise UserError(f"trainable_last_layers: {last_layers} — needs N >= 1 (leave it unset to train everything)")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise UserError(f"trainable_last_layers: {type(model).__name__} has no .model.layers (a Llama-family "
                        "causal LM has)")  # fmt: skip
    first = max(0, len(layers) - last_layers)
    frozen = {id(p) for p in model.get_input_embeddings().parameters()}
    frozen |= {id(p) for layer in layers[:first] for p in layer.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"training layers {first}-{len(layers) - 1} + norm + head ({n / 1e6:.2f}M weights), the rest frozen"


def build_trainer(cfg, model_args, model, tokenizer, data) -> SFTTrainer:
    if cfg.trainable_last_layers is not None:
        if model_args.use_peft:
            raise UserError("trainable_last_layers and use_peft: choose one (LoRA trains its adapters only)")
        what = freeze_below(model, cfg.trainable_last_layers)
        if process_state().is_main_process:
            print(f"{cfg.stage}: {what}")
    eval_data = data.get("test") if cfg.eval_strategy != "no" else None
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=data["train"],
        eval_dataset=eval_data,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    if trainer.args.device.type == "cpu":
        unfused_head_on_cpu(trainer.model, fp32=cfg.fp32_lm_head)
    return with_callbacks(trainer)


def unfused_head_on_cpu(model, fp32: bool = True) -> None:
    """On a CPU, answer SFTTrainer's `fused_lm_head=True` calls with one plain projection of the positions that have a
    label. TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`) saves GPU memory by projecting in vocabulary
    tiles, but off CUDA it projects every position, in fp32 whatever the autocast (`_addmm_fp32`), a fourth time in the
    backward, with its tile math in torch ops. `fp32`: project in fp32 as TRL does there (the numbers of every run
    before this change); False: under the autocast dtype — on this CPU the SmolLM2-135M SFT step (8 x 128 tokens) then
    takes 5.7 s fp32 / 3.8 s bf16 against TRL's 6.8 / 5.3 s (LOG 2026-12-07). Same outputs as TRL's head
    (log-probabilities, entropy, top-1 hits, label mask, loss: tested against it), so the trainer's loss and metrics
    are unchanged; written here because TRL has no switch for it. Models whose head scales or caps its logits, and
    pre-shifted labels (sequence parallelism), keep TRL's head."""
    import functools

    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = target.config.get_text_config()
    scaled = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in scaled):
        return
    fused = target.forward  # TRL's patched forward: without fused_lm_head it is the model's own

    @functools.wraps(fused)
    def forward(*args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None:
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                         num_items_in_batch=num_items_in_batch, **kwargs)  # fmt: skip
        kwargs["use_cache"] = False
        hidden = target.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        targets = labels[mask]
        head = target.get_output_embeddings()
        if fp32:  # as TRL's head computes it off CUDA
            with torch.autocast(hidden.device.type, enabled=False):
                logits = torch.nn.functional.linear(hidden[mask].float(), head.weight.float(),
                                                    None if head.bias is None else head.bias.float())  # fmt: skip
        else:
            logits = head(hidden[mask])  # only the positions that are scored
        log_probs_all = logits.float().log_softmax(-1)
        picked = log_probs_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_probs_all.exp() * log_probs_all).sum(-1)
            is_top1 = logits.argmax(-1) == targets
        log_probs = picked.new_zeros(mask.shape).masked_scatter(mask, picked)
        n = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-picked.sum() / n,
            log_probs=log_probs,
            entropy=entropy.new_zeros(mask.shape).masked_scatter(mask, entropy),
            is_top1=torch.zeros_like(mask).masked_scatter(mask, is_top1),
            label_mask=mask,
        )

    target.forward = forward


def reprobe(cfg, round_: int) -> str:
    """Round `round_` of a refusal stage: move the last probe to `probe/round_<round_ - 1>/`, probe the stage's
    exported model with `cfg.probe_config` into `probe/` (which the stage's mix reads), and return the model to
    train next (the exported one). Abstentions count as abstentions: a question the model now declines is no
    longer an 'unknown' one (see probe.LabelRule), so refusals do not breed more refusal targets."""
    from dataclasses import replace

    from posttrain import probe
    from posttrain.configs import ProbeConfig, parse_config

    state = process_state()
    probe_dir = Path(cfg.run_dir) / "probe"
    if state.is_main_process and probe_dir.is_dir():
        keep = probe_dir.parent / "probe" / f"round_{round_ - 1}"
        tmp = probe_dir.parent / f".probe-round-{round_ - 1}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(probe_dir, tmp, ignore=shutil.ignore_patterns("round_*"))
        shutil.rmtree(keep, ignore_errors=True)
        shutil.move(str(tmp), keep)
    state.wait_for_everyone()
    (pcfg,) = parse_config(ProbeConfig, args=["--config", cfg.probe_config])
    pcfg = replace(pcfg, run_dir=cfg.run_dir, model=str(cfg.export_dir), output_dir=str(probe_dir), world_dir=cfg.world_dir,
                   gate_baselines=False, seed=pcfg.seed + round_ - 1)  # fmt: skip
    probe.run(pcfg)
    state.wait_for_everyone()
    return str(cfg.export_dir)


def operating_point(cfg, model, tokenizer, max_questions: int = 2000) -> dict | None:
    """Refusal stage with `confidence_target` and/or `keep_right`: one greedy pass over the probe's questions
    (training-side people and strangers only; never an eval person) gives each its decline margin; `decline.fit_bias`
    picks the bias on the decline token that maximises the expected penalty at t there (P(right) from the SFT model's
    greedy grades), `decline.keep_bias` the one that still answers a share of the questions the SFT model got right;
    with both, the lower bias (fewer declines). It is stored in the model's generation config. Returns the fit's
    numbers (None when not asked for)."""
    import json
    import random

    from posttrain import decline
    from posttrain.generation import generate
    from posttrain.stages import precision_of

    tid = decline.decline_id(tokenizer)
    if (cfg.confidence_target is None and cfg.keep_right is None) or tid is None:
        return None
    path = Path(cfg.run_dir) / "probe" / "judgments.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: the operating point needs the probe's judgments (run recipes/probe.py first)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("calibration")] or rows  # the probe's held-out entities, when it kept some
    rows = random.Random(cfg.seed).sample(rows, min(max_questions, len(rows)))
    model.generation_config.sequence_bias = None  # margins of the unbiased model
    greedy, _ = generate(model, tokenizer, [[{"role": "user", "content": r["question"]}] for r in rows],
                         max_new_tokens=24, desc="decline margins (probe questions)",
                         precision=precision_of(cfg))  # fmt: skip
    margins = [g.decline_margin for g in greedy]
    # P(right) of the answer the model gives: its greedy answer's grade where the probe kept it (samples at the
    # probe's temperature are right far less often than greedy answers: fitted on them, every question was declined)
    right = [float(r["correct"]) if "correct" in r else r["p_correct"] for r in rows]
    fits = []
    if cfg.confidence_target is not None:
        fits.append(decline.fit_bias(margins, right, cfg.confidence_target))
    if cfg.keep_right is not None:
        fits.append(decline.keep_bias(margins, right, cfg.keep_right))
    bias, fit = min(fits, key=lambda f: f[0])
    decline.set_bias(model.generation_config, tid, bias)
    return {**fit, "rules": [f for _, f in fits]} if len(fits) > 1 else fit
