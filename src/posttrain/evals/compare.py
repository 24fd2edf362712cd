"""A model's answers next to its parent's, question by question: did it learn to abstain where the parent was wrong?

The numbers the refusal and RL stages are judged by (issue 7): the refusal rate where the parent had been wrong
minus the rate where it had been right (0 for refusal that ignores what the model knows, 1 for a perfect gate),
the share of the parent's correct answers on `known` people that survive, and hallucination on `never_seen`
(1 − not attempted).
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.evals.grading import CORRECT, NOT_ATTEMPTED
from posttrain.evals.metrics import auroc


def samples_path(result_json: str | Path) -> Path:
    """eval/<stage>.json → eval/<stage>_samples.jsonl (the per-question records the evaluation writes)."""
    p = Path(result_json)
    return p.with_name(p.stem + "_samples.jsonl")


def read_records(result_json: str | Path) -> list[dict]:
    path = samples_path(result_json)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def refusal_shift(parent: list[dict], child: list[dict], buckets=("known", "rare")) -> dict:
    """Over the questions of `buckets` both evaluated (matched by question), the child's refusal rate where the
    parent was right and where it was wrong (incorrect; questions the parent declined are left out)."""
    before = {r["question"]: r["grade"] for r in parent if r["bucket"] in buckets}
    right, wrong = [], []
    for r in child:
        g = before.get(r["question"])
        if g is None or g == NOT_ATTEMPTED:
            continue
        (right if g == CORRECT else wrong).append(r["grade"] == NOT_ATTEMPTED)
    rate = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    r_right, r_wrong = rate(right), rate(wrong)
    return {
        "buckets": list(buckets),
        "n_parent_right": len(right),
        "n_parent_wrong": len(wrong),
        "refusal_where_parent_right": r_right,
        "refusal_where_parent_wrong": r_wrong,
        "delta": None if r_right is None or r_wrong is None else r_wrong - r_right,
    }


def versus_parent(parent_result: dict, child_result: dict, parent: list[dict], child: list[dict]) -> dict:
    """The headline comparison: known correct kept, never_seen hallucination before/after, refusal shift, and the
    penalty score at t = 0.75 (overall) of both."""
    pb, cb = parent_result["buckets"], child_result["buckets"]
    out = {"parent": parent_result.get("model")}
    if "known" in pb and "known" in cb:
        kept = cb["known"]["correct"] / pb["known"]["correct"] if pb["known"]["correct"] else None
        out["known_correct"] = {"parent": pb["known"]["correct"], "child": cb["known"]["correct"], "kept": kept}
    if "never_seen" in pb and "never_seen" in cb:
        out["never_seen_hallucination"] = {
            "parent": 1 - pb["never_seen"]["not_attempted"],
            "child": 1 - cb["never_seen"]["not_attempted"],
        }
    out["penalty_t0.75"] = {"parent": pb["overall"]["penalty_t0.75"], "child": cb["overall"]["penalty_t0.75"]}
    out["refusal_shift"] = refusal_shift(parent, child)
    return out


def decline_scores(records: list[dict]) -> list[float]:
    """Each record's decline score: the model's own (`decline_score`, from its decline token) where it has one,
    else its greedy abstention as 0/1."""
    return [r["decline_score"] if r.get("decline_score") is not None else float(r["grade"] == NOT_ATTEMPTED)
            for r in records]  # fmt: skip


def decline_block(records: list[dict], sft: list[dict] | None, score: str, scores: list[float] | None = None) -> dict:
    """CONTRACTS §5 `decline`: the AUROC of the per-question decline score (`scores`, default `decline_scores`)
    against the SFT model having been wrong (known + rare questions the SFT model attempted, matched by question)
    and against never_seen vs known; threshold-free, so trained refusal and gates compare on one scale."""
    scores = decline_scores(records) if scores is None else scores
    sft_grade = {r["question"]: r["grade"] for r in sft or [] if r["bucket"] in ("known", "rare")}
    vs_wrong = [
        (s, sft_grade[r["question"]] != CORRECT)
        for r, s in zip(records, scores)
        if r["bucket"] in ("known", "rare") and sft_grade.get(r["question"], NOT_ATTEMPTED) != NOT_ATTEMPTED
    ]
    unseen = [(s, r["bucket"] == "never_seen") for r, s in zip(records, scores)
              if r["bucket"] in ("known", "never_seen")]  # fmt: skip
    return {
        "auroc_vs_sft_wrong": auroc(*zip(*vs_wrong)) if vs_wrong else None,
        "auroc_never_seen": auroc(*zip(*unseen)) if unseen else None,
        "n_vs_sft": len(vs_wrong),
        "score": score,
    }
