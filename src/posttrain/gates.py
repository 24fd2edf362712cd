"""No-training abstention gates: what the model knows, read from its own log-probabilities.

Two scores per question, both from one teacher-forced forward pass of the chat prompt (+ the model's answer):
- **name familiarity**: the log-probability of the person's name tokens inside the question. A name the model saw
  in pretraining is predictable from its first token on; a never-seen one is not (the world's names are made of
  common first names and surname syllables, so only the combination tells them apart).
- **answer confidence**: the lowest log-probability among the answer's tokens (the weakest link: the restated name
  is copied with confidence, the fact itself is where the model guesses).

A gate answers when its score clears a threshold and abstains otherwise. Thresholds are fitted on training-split
questions only (never on eval people): the familiarity threshold as a low quantile of the scores of people seen in
pretraining, the answer threshold as the one that keeps a set share of the answers the model gets right.
These gates are the baselines a trained refusal model is compared with (issue 7): the gap between what the model
knows and what it says. Written here because no library scores spans of chat prompts this way.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from posttrain.evals.grading import NOT_ATTEMPTED
from posttrain.generation import render

NEG_INF = -1e9


@torch.no_grad()
def span_logprobs(model, tokenizer, texts: list[str], spans: list[tuple[int, int]], batch_size: int = 64) -> list:
    """For each text, the log-probabilities of its tokens that overlap the character span [start, end) (the first
    token of a text has none: it is skipped). Right-padded batches, sorted by length."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[float]] = [[] for _ in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", leave=False):
        idx = order[start : start + batch_size]
        encs = [tokenizer(texts[i], add_special_tokens=False, return_offsets_mapping=True) for i in idx]
        width = max(len(e["input_ids"]) for e in encs)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, e in enumerate(encs):
            ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            mask[row, : len(e["input_ids"])] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(model.device))[..., 0]
        for row, (i, e) in enumerate(zip(idx, encs)):
            lo, hi = spans[i]
            out[i] = [
                logp[row, t - 1].item()
                for t, (a, b) in enumerate(e["offset_mapping"])
                if t > 0 and b > lo and a < hi and b > a
            ]
    return out


def _prompt_and_span(tokenizer, question: str, part: str | None) -> tuple[str, tuple[int, int]]:
    text = render(tokenizer, [{"role": "user", "content": question}])
    q_at = text.find(question)
    at = text.find(part, q_at) if part else -1
    return text, ((at, at + len(part)) if at >= 0 else (q_at, q_at + len(question)))


def name_familiarity(model, tokenizer, questions: list[str], names: list[str | None], batch_size: int = 64):
    """Sum of the log-probabilities of the name's tokens after its first one, in the chat prompt (the whole
    question's mean when the name is unknown). The first token says who is asked about, which no model can
    predict; how well the rest of the name follows from it is what the model remembers of the person. (On the
    hand-made world's SFT model the whole name's sum tells eval_known people from never_seen ones at AUC 0.78,
    the sum after the first token at 0.90; docs/LOG.md 2026-11-26.)"""
    texts, spans = (
        zip(*(_prompt_and_span(tokenizer, q, n) for q, n in zip(questions, names))) if questions else ((), ())
    )
    scores = span_logprobs(model, tokenizer, list(texts), list(spans), batch_size)
    return [
        (sum(s[1:] or s) if n else sum(s) / max(1, len(s))) if s else NEG_INF for s, n in zip(scores, names)
    ]  # fmt: skip


def answer_confidence(model, tokenizer, questions: list[str], answers: list[str], batch_size: int = 64):
    """Lowest token log-probability of each answer after its question's chat prompt (−inf for an empty one)."""
    texts, spans = [], []
    for q, a in zip(questions, answers):
        prompt = render(tokenizer, [{"role": "user", "content": q}])
        texts.append(prompt + a)
        spans.append((len(prompt), len(prompt) + len(a)))
    scores = span_logprobs(model, tokenizer, texts, spans, batch_size)
    return [min(s) if s else NEG_INF for s in scores]


def quantile_threshold(scores: list[float], q: float) -> float:
    """The q-quantile of `scores` (scores of seen people): below it, a name counts as unfamiliar."""
    s = sorted(scores)  # (+1e-9: 1 - 0.8 is 0.19999…, which would floor 0.2 × 5 to 0 instead of 1)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 1e-9)))] if s else NEG_INF


def recall_threshold(right_scores: list[float], recall: float) -> float:
    """The answer-confidence level that `recall` of the right answers reach (the answer gate's rule; the probe's
    `confident_unknowns` uses the same level)."""
    return quantile_threshold(right_scores, 1 - recall)


GATES = ("name", "answer")


def gate_scores(model, tokenizer, rows: list[dict], batch_size: int = 64) -> dict[str, list[float]]:
    """Both scores for rows holding `question`, `response` (the model's answer) and optionally `name`. Rows that
    already carry this model's `answer_confidence` (the probe's judgments with `confident_unknowns: skip`) are
    not scored again."""
    questions = [r["question"] for r in rows]
    if all("answer_confidence" in r for r in rows):
        answer = [r["answer_confidence"] for r in rows]
    else:
        answer = answer_confidence(model, tokenizer, questions, [r["response"] for r in rows], batch_size)
    return {"name": name_familiarity(model, tokenizer, questions, [r.get("name") for r in rows], batch_size),
            "answer": answer}  # fmt: skip


def fit_thresholds(scores: dict[str, list[float]], correct: list[bool], quantile: float = 0.05, recall: float = 0.8):
    """Thresholds from training-split questions: familiarity at the `quantile` of seen people's names; answer
    confidence that keeps `recall` of the answers the model gets right. (Maximising the penalty score on the
    training questions instead would refuse nearly everything: most probed people have one biography, and the
    model knows few of their facts, unlike the well-known people it is evaluated on.)"""
    right = [s for s, ok in zip(scores["answer"], correct) if ok]
    return {"name": quantile_threshold(scores["name"], quantile), "answer": recall_threshold(right, recall)}


def apply_gate(records: list[dict], scores: list[float], threshold: float) -> list[dict]:
    """Eval records with every answer whose score is below the threshold turned into an abstention."""
    return [
        {**r, "grade": r["grade"] if s >= threshold else NOT_ATTEMPTED, "gate_score": s}
        for r, s in zip(records, scores)
    ]


def _spread(values: list[float]) -> float:
    """Standard deviation of the finite scores (1 where there are too few)."""
    finite = [v for v in values if v > NEG_INF / 2]
    return max(1e-6, statistics.stdev(finite)) if len(finite) >= 2 else 1.0


def evaluate_gates(model, tokenizer, fit_rows: list[dict], eval_json: str | Path, names: dict[str, str],
                   quantile: float = 0.05, recall: float = 0.8, batch_size: int = 64) -> dict[str, dict]:  # fmt: skip
    """Fit both gates on `fit_rows` (training-split questions with the model's greedy `response`, its `correct`
    and the person's `name`), apply them to the model's own eval answers (`eval_json`'s records) and write
    `<eval>_gate_<name>.json` (CONTRACTS §5, with `vs_parent` against the ungated model and `decline`, the AUROCs
    of the gate's score) beside it, for each gate and for both together (`_gate_both`)."""
    from posttrain.evals import compare
    from posttrain.evals.factuality import markdown_table, summarize
    from posttrain.lineage import atomic_write_text

    eval_json = Path(eval_json)
    fit = gate_scores(model, tokenizer, fit_rows, batch_size)
    thresholds = fit_thresholds(fit, [r["correct"] for r in fit_rows], quantile, recall)
    records = compare.read_records(eval_json)
    scores = gate_scores(model, tokenizer, [{**r, "name": names.get(r["question"])} for r in records], batch_size)
    parent = json.loads(eval_json.read_text())
    # both gates together: decline where either declines; its threshold-free score is the larger of the two gates'
    # margins below their thresholds, each in units of its spread on the fit questions (declines iff > 0)
    margins = {g: [(thresholds[g] - x) / _spread(fit[g]) for x in scores[g]] for g in GATES}
    scores["both"], thresholds["both"] = [-max(m) for m in zip(*margins.values())], 0.0
    results = {}
    for gate in (*GATES, "both"):
        gated = apply_gate(records, scores[gate], thresholds[gate])
        rule = {
            "name": f"{quantile:.0%} quantile of seen names",
            "answer": f"keeps {recall:.0%} of right answers",
            "both": "declines where either the name or the answer gate declines",
        }[gate]
        extra = {"gate": gate, "threshold": thresholds[gate], "fitted_on": f"{len(fit_rows)} training questions",
                 "rule": rule}  # fmt: skip
        result, _ = summarize(gated, f"{parent['model']} + {gate} gate", parent["eval_set"], extra)
        result["vs_parent"] = compare.versus_parent(parent, result, records, gated)
        result["decline"] = compare.decline_block(gated, records, f"minus the {gate} gate's score",
                                                  [-x for x in scores[gate]])  # fmt: skip
        out = eval_json.with_name(f"{eval_json.stem}_gate_{gate}.json")
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        atomic_write_text(compare.samples_path(out), "".join(json.dumps(r) + "\n" for r in gated))
        print(f"{gate} gate (threshold {thresholds[gate]:.2f}) -> {out}\n{markdown_table(result)}")
        results[gate] = result
    return results
