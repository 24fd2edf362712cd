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
    the model an embedding row for it (HF's mean resizing; `fit_decline_row` then places it). Returns what
    changed, or None."""
    if decline_id(tokenizer) is not None:
        return None
    tokenizer.add_special_tokens({"additional_special_tokens": [DECLINE_TOKEN]}, replace_extra_special_tokens=False)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return f"added the decline token {DECLINE_TOKEN}"


@torch.no_grad()
def _decision_features(model, tokenizer, conversations: list[dict], tid: int):
    """Over the assistant tokens of `conversations` (one at a time: short, and no padding to mask): the final hidden
    state h before each token, the log-partition of the other tokens' logits there, and whether it is the decline
    token."""
    hs, lses, ys = [], [], []
    head = model.get_output_embeddings()
    for conv in conversations:
        enc = tokenizer.apply_chat_template(conv["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)  # fmt: skip
        ids = torch.tensor([enc["input_ids"]], device=model.device)
        mask = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool, device=model.device)
        h = model.base_model(input_ids=ids).last_hidden_state[0, :-1][mask].float()
        logits = head(h.to(head.weight.dtype)).float()
        logits[:, tid] = -math.inf
        hs.append(h)
        lses.append(torch.logsumexp(logits, -1))
        ys.append(ids[0, 1:][mask] == tid)
    return torch.cat(hs), torch.cat(lses), torch.cat(ys).float()


def fit_decline_row(model, tokenizer, conversations: list[dict], max_conversations: int = 1000,
                    l2: float = 1e-3, seed: int = 0) -> dict | None:  # fmt: skip
    """Place the decline token's output row before training, by the log loss it will be trained with: with the rest
    of the model frozen, P(decline) at an assistant position is sigmoid(w·h − log Z_other), so fitting w is a
    logistic regression on the final hidden states (Kadavath et al. 2022's P(IK) head, here the LM head's own row,
    so plain `generate` reads it). Fitted on every assistant position of (a sample of) the refusal conversations:
    positive where the target is the decline token, negative elsewhere. Why: a new token's row starts ~10 nats below
    the top token and a short SFT stage does not lift it (SmolLM2-135M: P(decline) stayed 2e-5 after training, LOG
    2026-12-07). With tied embeddings the row is also the token's input embedding; SFT then learns what follows it.
    Returns the fit's numbers, or None when the model has no decline token or the data no decline target."""
    import random

    tid = decline_id(tokenizer)
    if tid is None:
        return None
    convs, others = [], []
    for c in conversations:
        (convs if DECLINE_TOKEN in _assistant_text(c) else others).append(c)
    if not convs:
        return None
    rng = random.Random(seed)
    pick = rng.sample(convs, min(len(convs), max_conversations // 2))
    pick += rng.sample(others, min(len(others), max_conversations - len(pick)))
    was_training = model.training
    model.eval()
    h, lse, y = _decision_features(model, tokenizer, pick, tid)
    w = model.get_output_embeddings().weight[tid].detach().float().clone().requires_grad_(True)
    w0 = w.detach().clone()
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def loss_fn():
        opt.zero_grad()
        z = h @ w - lse
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + l2 * (w - w0).pow(2).sum()
        loss.backward()
        return loss

    before = loss_fn().item()
    opt.step(loss_fn)
    after = loss_fn().item()
    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is not None:
                emb.weight[tid] = w.detach().to(emb.weight.dtype)
        p = torch.sigmoid(h @ w - lse)
    model.train(was_training)
    return {
        "positions": len(y),
        "decline_positions": int(y.sum()),
        "log_loss_before": round(before, 4),
        "log_loss_after": round(after, 4),
        "mean_p_decline_at_decline": round(p[y == 1].mean().item(), 4),
        "mean_p_decline_elsewhere": round(p[y == 0].mean().item(), 5),
    }


def _assistant_text(conversation: dict) -> str:
    return " ".join(str(m.get("content") or "") for m in conversation["messages"] if m.get("role") == "assistant")


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
