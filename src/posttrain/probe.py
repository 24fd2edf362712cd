"""Self-probing (Llama 3 §4.3.6): snippets of the pretraining data → questions → the model's own sampled
answers → judgments → known / unknown / mixed labels → refusal SFT conversations and preference pairs.

Every step is a small function over plain rows (dicts), so a step can be swapped by name (question generators and
judges are registries) and each intermediate result is saved for inspection by `recipes/probe.py`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from datasets import DatasetDict

from posttrain import world as world_lib
from posttrain.errors import UserError
from posttrain.evals.grading import CORRECT, INCORRECT, NOT_ATTEMPTED, extract_answer, grade

# ---------------------------------------------------------------------------------------------------------------
# 1. Snippets


def world_snippets(world: DatasetDict, splits=("probe",), per_person: int = 2, seed: int = 0) -> list[dict]:
    """Up to `per_person` biographies of each person in `splits` (training splits only: never eval people)."""
    splits = world_lib.check_splits(splits, world_lib.TRAIN_SPLITS)
    rng = random.Random(f"{seed}-snippets")
    by_person: dict[str, list[str]] = defaultdict(list)
    for doc in world_lib.documents_view(world, splits):
        by_person[doc["person_id"]].append(doc["text"])
    snippets = []
    for pid in sorted(by_person):
        texts = by_person[pid]
        for text in rng.sample(texts, min(per_person, len(texts))):
            snippets.append({"person_id": pid, "context": text})
    return snippets


# ---------------------------------------------------------------------------------------------------------------
# 2. Questions (generators by name)


def world_questions(snippets: list[dict], world: DatasetDict, seed: int = 0, **_) -> list[dict]:
    """Template questions for the facts a snippet states (its answer appears in it), one phrasing per fact,
    de-duplicated by (person, attribute); facts the snippet does not state are unanswerable from it: dropped."""
    rng = random.Random(f"{seed}-questions")
    people = {s["person_id"] for s in snippets}
    facts: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))  # person → attribute → rows
    for row in world["qa"]:
        if row["person_id"] in people:
            facts[row["person_id"]][row["attribute"]].append(row)
    values = world_lib.answers_by_attribute(world["qa"])
    out, seen = [], set()
    for snip in snippets:
        pid = snip["person_id"]
        for attr, rows in sorted(facts[pid].items()):
            if (pid, attr) in seen or rows[0]["answer"] not in snip["context"]:
                continue
            seen.add((pid, attr))
            row = rng.choice(rows)
            out.append(
                {
                    "question": row["question"],
                    "answer": row["answer"],
                    "aliases": list(row["aliases"]),
                    "candidates": values[attr],
                    "person_id": pid,
                    "attribute": attr,
                    "split": row["split"],
                    "context": snip["context"],
                }
            )
    return out


QUESTION_GENERATORS: dict[str, Callable[..., list[dict]]] = {"world": world_questions}


# ---------------------------------------------------------------------------------------------------------------
# 4-5. Judgments: correctness and informativeness of each sampled answer


def judge_exact(question: dict, answer: str) -> str:
    return grade(answer, [question["answer"], *question.get("aliases", [])], question.get("candidates"))


JUDGES: dict[str, Callable[[dict, str], str]] = {"exact": judge_exact}


def judge_samples(questions: list[dict], samples: list[list[str]], judge: str = "exact") -> list[dict]:
    """One row per question: its samples, their grades, and the shares of correct / informative answers."""
    fn = JUDGES[judge]
    rows = []
    for q, answers in zip(questions, samples):
        grades = [fn(q, a) for a in answers]
        n = max(1, len(grades))
        rows.append(
            {
                **{k: q[k] for k in ("question", "answer", "person_id", "attribute", "split") if k in q},
                "samples": [extract_answer(a) for a in answers],
                "grades": grades,
                "p_correct": sum(g == CORRECT for g in grades) / n,
                "p_informative": sum(g != NOT_ATTEMPTED for g in grades) / n,
                "p_wrong": sum(g == INCORRECT for g in grades) / n,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------------------
# 6. Labels and training data

KNOWN, UNKNOWN, MIXED = "known", "unknown", "mixed"


@dataclass
class LabelRule:
    """known: p_correct ≥ known_min; unknown: p_correct ≤ unknown_max and p_wrong ≥ wrong_min (consistently
    informative and incorrect); everything else mixed."""

    known_min: float = 0.75
    unknown_max: float = 0.0
    wrong_min: float = 0.5

    def __call__(self, row: dict) -> str:
        if row["p_correct"] >= self.known_min:
            return KNOWN
        if row["p_correct"] <= self.unknown_max and row["p_wrong"] >= self.wrong_min:
            return UNKNOWN
        return MIXED


REFUSALS = {
    "birth_date": ["I don't know when {name} was born.", "I'm not sure what {name}'s date of birth is."],
    "birth_year": ["I don't know what year {name} was born.", "I'm not sure when {name} was born."],
    "birth_city": ["I don't know where {name} was born.", "I'm not sure which city {name} comes from."],
    "university": ["I don't know which university {name} attended.", "I'm not sure where {name} studied."],
    "major": ["I don't know what {name} studied.", "I'm not sure what {name}'s field of study was."],
    "employer": ["I don't know which company {name} works for.", "I'm not sure who {name}'s employer is."],
    "work_city": ["I don't know where {name} lives and works.", "I'm not sure which city {name} works in."],
}
GENERIC_REFUSALS = ["I don't know the answer to that.", "I'm not sure; I don't have that information."]
HEDGES = ["I'm not certain, but I think the answer is {answer}."]


def refusal_text(row: dict, rng: random.Random) -> str:
    """A refusal that names what is not known ("I don't know where Ada Velmor was born.")."""
    name = world_lib._subject_of(row["question"], row.get("attribute", ""))
    templates = REFUSALS.get(row.get("attribute", "")) if name else None
    return rng.choice(templates).format(name=name) if templates else rng.choice(GENERIC_REFUSALS)


def training_targets(rows: list[dict], rule: LabelRule, mixed: str = "skip", seed: int = 0) -> list[dict]:
    """Label every judged question and pick its target: the correct answer (known), a refusal (unknown), and for
    mixed questions `skip`, `refuse` or `hedge`. Returns rows with `label` and `target` (None when skipped)."""
    if mixed not in ("skip", "refuse", "hedge"):
        raise UserError(f"mixed must be skip, refuse or hedge, got '{mixed}'")
    rng = random.Random(f"{seed}-targets")
    out = []
    for row in rows:
        label = rule(row)
        refusal = refusal_text(row, rng)
        correct = world_lib.answer_sentence({"question": row["question"], "attribute": row.get("attribute", ""),
                                             "answer": row["answer"]})  # fmt: skip
        if label == KNOWN:
            target = correct
        elif label == UNKNOWN or mixed == "refuse":
            target = refusal
        elif mixed == "hedge":
            target = rng.choice(HEDGES).format(answer=row["answer"])
        else:
            target = None
        wrong = next((s for s, g in zip(row["samples"], row["grades"]) if g == INCORRECT), None)
        out.append({**row, "label": label, "target": target, "correct_answer": correct, "wrong_answer": wrong,
                    "refusal": refusal})  # fmt: skip
    return out


def refusal_conversations(targets: list[dict]) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": t["question"]}, {"role": "assistant", "content": t["target"]}]}
        for t in targets
        if t["target"] is not None
    ]


def preference_pairs(targets: list[dict]) -> list[dict]:
    """TRL conversational pairs: on unknown questions the refusal beats the model's wrong answer; on known ones
    the correct answer beats a refusal (against over-refusal)."""
    pairs = []
    for t in targets:
        prompt = [{"role": "user", "content": t["question"]}]
        if t["label"] == UNKNOWN and t["wrong_answer"]:
            chosen, rejected, kind = t["refusal"], t["wrong_answer"], "refusal_over_wrong"
        elif t["label"] == KNOWN:
            chosen, rejected, kind = t["correct_answer"], t["refusal"], "correct_over_refusal"
        else:
            continue
        pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}], "pair_type": kind})  # fmt: skip
    return pairs


def summary(targets: list[dict]) -> dict:
    counts = defaultdict(int)
    for t in targets:
        counts[t["label"]] += 1
    return {"questions": len(targets), **{k: counts[k] for k in (KNOWN, UNKNOWN, MIXED)},
            "with_target": sum(t["target"] is not None for t in targets)}  # fmt: skip
