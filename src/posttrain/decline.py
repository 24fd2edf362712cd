"""The decline decision as one token, its score, and the operating point (Jain et al. 2024, "refusal tokens").

A refusal target written by the probe starts its refusal with `DECLINE_TOKEN` at the point where the model decides
("<|idk|>I don't know where Ada was born." or, late, "Ada was born in <|idk|>a city I don't know."). Trained on such
targets, the model's probability of that token is its *decline score*: read from its own output distribution
along its greedy answer, threshold-free, comparable to the no-training gates by AUROC (CONTRACTS §5 `decline`).

Greedy decoding declines where the token wins the argmax. A constant added to its logit moves that point without
retraining: `sequence_bias` in `generation_config.json`, so plain `AutoModelForCausalLM.generate` reproduces the
chosen refusal rate. Along the unbiased greedy path, a bias b makes the model decline exactly where the path's
largest margin `logit(decline) − max logit(other)` exceeds −b, so one greedy pass over training-side questions gives
every operating point at once; `fit_bias` picks the one that maximises the expected penalty score at the confidence
target t (answer only where P(right) > t: Kalai et al. 2025), with P(right) from the probe's samples, and
`keep_bias` the one that still answers a share of the questions the model gets right.

Why two rules: the probe's people are mostly one-biography people, so its questions have a far lower share of right
answers than the eval's `known` bucket (14 % against 65 % on the default world). A threshold on P(right | score) is
fitted under the probe's prior and does not carry over to another mix (prior shift: on the default world it declined
everything). A quantile of the score *among right answers* is a class-conditional quantity, which a change in the
share of right answers leaves unchanged, so `keep_bias` transfers from probe questions to any mix (Saerens et al.
2002, on adjusting classifiers to new priors).

Written here because neither transformers nor TRL has a decision token with a fitted bias.
"""

from __future__ import annotations

import math

import torch

DECLINE_TOKEN = "<|idk|>"
SCORE_LINE = f"max over the greedy answer's steps of P({DECLINE_TOKEN}) (the model's decline token)"
ABSTAIN_LINE = "greedy abstention (0/1): the model has no decline token"


def decline_id(tokenizer) -> int | None:
    """The decline token's id, or None when the tokenizer has none."""
    tid = tokenizer.convert_tokens_to_ids(DECLINE_TOKEN)
    return tid if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id else None


def add_decline_token(model, tokenizer) -> str | None:
    """Give the tokenizer the decline token (a special token, so decoding with `skip_special_tokens` hides it) and
    the model an embedding row for it (HF's mean resizing). Returns what changed, or None."""
    if decline_id(tokenizer) is not None:
        return None
    tokenizer.add_special_tokens({"additional_special_tokens": [DECLINE_TOKEN]}, replace_extra_special_tokens=False)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return f"added the decline token {DECLINE_TOKEN}"


def step_scores(logits: list[torch.Tensor], tid: int, live: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per row of a greedy batch: (max over live steps of P(decline), max over live steps of the margin
    logit(decline) − max logit(other)). `logits`: the raw (unprocessed) logits of each step; `live`: [rows, steps],
    True up to and including the row's last generated token."""
    raw = torch.stack([x.float() for x in logits], 1)  # rows × steps × vocab
    prob = torch.softmax(raw, -1)[..., tid]
    other = raw.clone()
    other[..., tid] = -math.inf
    margin = raw[..., tid] - other.max(-1).values
    live = live[:, : raw.shape[1]]
    prob = prob.masked_fill(~live, 0.0).max(1).values
    margin = margin.masked_fill(~live, -math.inf).max(1).values
    return prob.tolist(), margin.tolist()


def fit_bias(margins: list[float], p_right: list[float], t: float) -> tuple[float, dict]:
    """The bias b on the decline token that maximises the expected penalty score at confidence target `t` over
    training-side questions: a question declined (margin + b > 0) scores 0, one answered scores
    p − (1 − p)·t/(1 − t), with p its share of right samples. Returns b and what it gives there."""
    cost = t / (1 - t)
    value = [p - (1 - p) * cost for p in p_right]
    order = sorted(range(len(margins)), key=lambda i: margins[i], reverse=True)  # most decline-prone first
    # declining the k most decline-prone questions: total = sum of the values of the rest
    total, best_total, best_k = sum(value), sum(value), 0
    for k, i in enumerate(order, 1):
        total -= value[i]
        if total > best_total + 1e-12:
            best_total, best_k = total, k
    if best_k == 0:
        bias = -(margins[order[0]] + 1.0) if margins else 0.0  # decline nothing
    elif best_k == len(order):
        bias = -(margins[order[-1]] - 1.0)  # decline everything
    else:  # halfway between the last declined and the first answered margin
        bias = -(margins[order[best_k - 1]] + margins[order[best_k]]) / 2
    bias = max(-30.0, min(30.0, bias))
    declined = sum(m + bias > 0 for m in margins)
    return bias, {
        "confidence_target": t,
        "bias": bias,
        "questions": len(margins),
        "declined": declined / max(1, len(margins)),
        "expected_penalty": best_total / max(1, len(margins)),
    }


def keep_bias(margins: list[float], right: list[float], keep: float) -> tuple[float, dict]:
    """The bias b under which the model still answers (margin + b <= 0) a share `keep` of the questions it got right
    (`right` 1/0), and declines whatever is more decline-prone. Returns b and what it gives on these questions."""
    pos = sorted(m for m, r in zip(margins, right) if r >= 0.5)
    if not pos:
        bias = -(min(margins) - 1.0) if margins else 0.0  # nothing right: decline everything
    else:
        k = min(len(pos) - 1, max(0, math.ceil(keep * len(pos)) - 1))  # the k-th smallest right margin is answered
        above = [m for m in pos if m > pos[k]]
        bias = -(pos[k] + above[0]) / 2 if above else -(pos[k] + 1.0)
    bias = max(-30.0, min(30.0, bias))
    declined = [m + bias > 0 for m in margins]
    wrong = [r < 0.5 for r in right]
    return bias, {
        "keep_right": keep,
        "bias": bias,
        "questions": len(margins),
        "declined": sum(declined) / max(1, len(margins)),
        "kept_right": sum(not d for d, w in zip(declined, wrong) if not w) / max(1, len(pos)),
        "declined_wrong": sum(d for d, w in zip(declined, wrong) if w) / max(1, sum(wrong)),
    }


def set_bias(generation_config, tid: int, bias: float) -> None:
    """Store the operating point where plain transformers reads it: `sequence_bias` on the decline token."""
    generation_config.sequence_bias = [[[tid], float(bias)]]
