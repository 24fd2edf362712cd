"""Preference pairs for reward modelling and DPO, and the reward model built from them.

Pairs come from a 'preferences' mix (default: the probe's `preferences.jsonl`, CONTRACTS §3: TRL's conversational
prompt / chosen / rejected, plus the probe's `pair_type`). Held-out pairs are split off by *prompt*, so every pair
of a held-out question is unseen in training (a question's "refusal over wrong" and "correct over refusal" pairs
share their prompt; splitting by row would leak one into the other).

The reward model is the parent causal LM with a one-output sequence-classification head
(`AutoModelForSequenceClassification`, `num_labels=1`, the head fresh; TRL's RewardTrainer trains it with the
pairwise Bradley-Terry loss). `RewardScorer` scores (prompt, completion) pairs with the chat template: what the
held-out accuracy, GRPO's learned-reward function and PPO use.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from posttrain.chat_template import prepare_chat
from posttrain.data import load_mix, read_mix
from posttrain.errors import UserError

DEFAULT_MIX = "data_mixes/world_preferences.yaml"


def _prompt_key(prompt) -> str:
    return json.dumps(prompt, sort_keys=True) if not isinstance(prompt, str) else prompt


def held_out(prompt, share: float, seed: int = 0) -> bool:
    """Whether a prompt is in the held-out share (a stable hash of the prompt: the same on every process and run)."""
    h = hashlib.sha256(f"{seed}:{_prompt_key(prompt)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < share


def load_pairs(cfg) -> tuple[object, str, DatasetDict]:
    """(mix, world_dir, {'train', 'test'}) preference pairs; `test` = the held-out prompts' pairs."""
    mix = read_mix(cfg.data_mix or DEFAULT_MIX, run_dir=cfg.run_dir)
    if mix.kind != "preferences":
        raise UserError(f"{mix.source_file}: reward modelling and DPO read a 'preferences' mix, not '{mix.kind}'")
    world_dir = cfg.world_dir or str(Path(cfg.run_dir) / "world")
    data = load_mix(mix, world_dir)
    if "test" in data or cfg.heldout_share <= 0:
        return mix, world_dir, data
    pairs = data["train"]
    mask = [held_out(p, cfg.heldout_share, cfg.seed) for p in pairs["prompt"]]
    test = [i for i, m in enumerate(mask) if m]
    train = [i for i, m in enumerate(mask) if not m]
    if not test or not train:
        raise UserError(f"{mix.source_file}: too few prompts ({len(pairs)} pairs) to hold out {cfg.heldout_share:.0%}")
    return mix, world_dir, DatasetDict({"train": balance(pairs.select(train), cfg.balance_pair_types, cfg.seed),
                                        "test": pairs.select(test)})  # fmt: skip


def balance(pairs: Dataset, max_repeat: int, seed: int = 0) -> Dataset:
    """Repeat each rarer `pair_type` toward the commonest type's count (at most `max_repeat` times), shuffled."""
    if max_repeat <= 1 or "pair_type" not in pairs.column_names:
        return pairs
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(pairs["pair_type"]):
        by_kind[k].append(i)
    most = max(len(v) for v in by_kind.values())
    rows = []
    for idx in by_kind.values():
        want = min(most, len(idx) * max_repeat)
        rows += (idx * (want // len(idx) + 1))[:want]
    return pairs.select(rows).shuffle(seed=seed)


def load_reward_model(path: str, dtype=torch.float32):
    """A causal LM directory → (sequence classifier with one output, chat-ready tokenizer). A directory that already
    holds a reward model (our `reward/`) loads with its trained head."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the dropped lm_head and the new head: expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot load a reward model ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    prepare_chat(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _as_messages(prompt, completion) -> list[dict]:
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
    return prompt + completion


class RewardScorer:
    """Scores conversations with a reward model: `scorer(prompts, completions) -> list[float]`. Also a GRPO reward
    function (TRL passes prompts and completions by keyword; its `__name__` names the logged reward)."""

    __name__ = "reward_model"

    def __init__(self, model, tokenizer, batch_size: int = 64, max_length: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def __call__(self, prompts, completions, completion_ids=None, **_) -> list[float]:
        texts = [
            self.tokenizer.apply_chat_template(_as_messages(p, c), tokenize=False) for p, c in zip(prompts, completions)
        ]
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        scores = []
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"  # the head reads the last non-pad token
        try:
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True,
                    max_length=self.max_length, add_special_tokens=False,
                ).to(device)  # fmt: skip
                scores += self.model(**enc).logits[:, 0].float().tolist()
        finally:
            self.tokenizer.padding_side = side
            self.model.train(was_training)
        return scores


def pairwise_accuracy(scorer: RewardScorer, pairs: Dataset) -> dict:
    """Share of pairs whose chosen answer scores above the rejected one, overall and per `pair_type`."""
    chosen = scorer(pairs["prompt"], pairs["chosen"])
    rejected = scorer(pairs["prompt"], pairs["rejected"])
    kinds = pairs["pair_type"] if "pair_type" in pairs.column_names else ["all"] * len(pairs)
    wins: dict[str, list[bool]] = defaultdict(list)
    for k, c, r in zip(kinds, chosen, rejected):
        wins[k].append(c > r)
        wins["overall"].append(c > r)
    return {
        k: {"n": len(v), "accuracy": sum(v) / len(v)}
        for k, v in sorted(wins.items(), key=lambda kv: (kv[0] != "overall", kv[0]))
    }


def trainer_pairs(ds: Dataset) -> Dataset:
    """The columns TRL's preference trainers read (`pair_type` stays with us for the per-kind accuracy)."""
    return ds.select_columns([c for c in ("prompt", "chosen", "rejected") if c in ds.column_names])


def build_trainer(trainer_cls, cfg, model_args, model, tokenizer, data):
    """TRL's RewardTrainer or DPOTrainer on the pairs (`pair_type` dropped), held-out pairs as eval data when asked."""
    from trl import get_peft_config

    from posttrain.stages import with_callbacks

    trainer = trainer_cls(
        model=model,
        args=cfg,
        train_dataset=trainer_pairs(data["train"]),
        eval_dataset=trainer_pairs(data["test"]) if cfg.eval_strategy != "no" and "test" in data else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    return with_callbacks(trainer)
