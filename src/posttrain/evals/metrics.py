"""Factuality metrics per bucket (CONTRACTS §5) and calibration (AUROC, ECE, reliability bins)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from posttrain.evals.grading import CORRECT, INCORRECT, NOT_ATTEMPTED

PENALTY_TARGETS = (0.5, 0.75, 0.9)


def bucket_metrics(grades: Sequence[str]) -> dict:
    """Rates as fractions of n; F = harmonic mean of correct and correct-given-attempted; the penalty score at
    confidence target t gives +1 correct, 0 not attempted, -t/(1-t) incorrect, averaged over n."""
    n = len(grades)
    c = sum(g == CORRECT for g in grades) / n if n else 0.0
    i = sum(g == INCORRECT for g in grades) / n if n else 0.0
    na = sum(g == NOT_ATTEMPTED for g in grades) / n if n else 0.0
    cga = c / (c + i) if c + i > 0 else 0.0
    out = {
        "n": n,
        "correct": c,
        "incorrect": i,
        "not_attempted": na,
        "correct_given_attempted": cga,
        "f_score": 2 * c * cga / (c + cga) if c + cga > 0 else 0.0,
    }
    for t in PENALTY_TARGETS:
        out[f"penalty_t{t}"] = c - t / (1 - t) * i
    return out


def auroc(confidence: Sequence[float], correct: Sequence[bool]) -> float | None:
    """P(a correct answer has higher confidence than an incorrect one), ties count half; None with one class."""
    pos = [c for c, y in zip(confidence, correct) if y]
    neg = [c for c, y in zip(confidence, correct) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's kappa of two raters' labels: (observed − chance agreement) / (1 − chance agreement); None when
    chance agreement is already 1 (one label only). Five lines, so no scikit-learn dependency for it."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    chance = sum((list(a).count(lab) / n) * (list(b).count(lab) / n) for lab in set(a) | set(b))
    return None if chance >= 1 else (observed - chance) / (1 - chance)


def rater_agreement(judge: Sequence[str], reference: Sequence[str]) -> dict:
    """How a judge's grades agree with reference grades: accuracy and Cohen's kappa over all labels, and per
    label (that label against the rest) the kappa, the judge's precision and recall and both raters' shares."""
    n = len(judge)
    out = {"n": n, "accuracy": sum(x == y for x, y in zip(judge, reference)) / n if n else None,
           "kappa": cohen_kappa(judge, reference), "per_label": {}}  # fmt: skip
    for lab in (CORRECT, INCORRECT, NOT_ATTEMPTED):
        j = [x == lab for x in judge]
        r = [y == lab for y in reference]
        both = sum(x and y for x, y in zip(j, r))
        out["per_label"][lab] = {
            "judge_share": sum(j) / n if n else None,
            "reference_share": sum(r) / n if n else None,
            "precision": both / sum(j) if sum(j) else None,
            "recall": both / sum(r) if sum(r) else None,
            "kappa": cohen_kappa(j, r),
        }
    return out


def reliability_bins(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> list[dict]:
    bins = [{"lo": k / n_bins, "hi": (k + 1) / n_bins, "n": 0, "conf": 0.0, "acc": 0.0} for k in range(n_bins)]
    for c, y in zip(confidence, correct):
        b = bins[min(n_bins - 1, int(c * n_bins))]
        b["n"] += 1
        b["conf"] += c
        b["acc"] += float(y)
    for b in bins:
        if b["n"]:
            b["conf"] /= b["n"]
            b["acc"] /= b["n"]
    return bins


def ece(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float | None:
    """Expected calibration error: the n-weighted mean |accuracy - confidence| over equal-width bins."""
    n = len(confidence)
    if n == 0:
        return None
    return sum(b["n"] / n * abs(b["acc"] - b["conf"]) for b in reliability_bins(confidence, correct, n_bins))


def clean(x):
    """JSON-safe: NaN/inf become None."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    return x
