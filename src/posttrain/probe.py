"""Self-probing (Llama 3 §4.3.6): snippets of the pretraining data → questions → the model's own sampled
answers → judgments → known / unknown / mixed labels → refusal SFT conversations and preference pairs.

Every step is a small function over plain rows (dicts), so a step can be swapped by name (question generators and
judges are registries) and each intermediate result is saved for inspection by `recipes/probe.py`.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from datasets import DatasetDict

from posttrain import world as world_lib
from posttrain.errors import UserError
from posttrain.evals.grading import CORRECT, INCORRECT, NOT_ATTEMPTED, extract_answer, grade, normalize
from posttrain.evals.judge import judge_grades
from posttrain.generation import generate

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


def text_snippets(texts: list[str], n: int, seed: int = 0, max_chars: int = 400) -> list[dict]:
    """`n` snippets of free text (a text mix, e.g. FineWeb): random documents cut to whole sentences."""
    rng = random.Random(f"{seed}-text-snippets")
    out = []
    for i in rng.sample(range(len(texts)), min(n, len(texts))):
        text = " ".join(texts[i].split())
        if len(text) > max_chars:
            cut = text[:max_chars]
            text = cut[: cut.rfind(". ") + 1] or cut
        if text:
            out.append({"person_id": f"doc-{i}", "context": text})
    return out


QUESTION_PROMPT = """Read the text and write one factual question that the text answers, with its short answer copied from the text.

Text: {context}

Reply in exactly this form:
Question: <question>
Answer: <answer>"""
_QA_LINE = re.compile(r"Question:\s*(?P<q>[^\n]+?)\s*\n+\s*Answer:\s*(?P<a>[^\n]+)", re.IGNORECASE)


def parse_question(reply: str) -> tuple[str, str] | None:
    """(question, answer) from a generator reply in the QUESTION_PROMPT form; None when it does not parse."""
    m = _QA_LINE.search(reply)
    if not m:
        return None
    q, a = m.group("q").strip(), m.group("a").strip().rstrip(".").strip()
    return (q, a) if q.endswith("?") and a else None


def answerable(question: str, answer: str, context: str) -> bool:
    """The filter for unanswerable questions: the answer is stated in the snippet and not given away by the
    question; short enough to grade (at most 8 words)."""
    a, ctx, q = normalize(answer), normalize(context), normalize(question)
    return bool(a) and len(a.split()) <= 8 and f" {a} " in f" {ctx} " and f" {a} " not in f" {q} "


def model_questions(snippets: list[dict], model=None, tokenizer=None, batch_size: int = 16, **_) -> list[dict]:
    """Questions written by a local instruct model from each snippet (greedy, QUESTION_PROMPT), kept when they parse
    and pass `answerable`, de-duplicated by normalised question."""
    if model is None:
        raise UserError("the model question generator needs --generator_model (a local instruct model directory)")
    prompts = [[{"role": "user", "content": QUESTION_PROMPT.format(context=s["context"])}] for s in snippets]
    replies, _ = generate(model, tokenizer, prompts, max_new_tokens=48, batch_size=batch_size, desc="questions")
    out, seen = [], set()
    for snip, reply in zip(snippets, replies):
        parsed = parse_question(reply.text)
        if parsed is None or not answerable(*parsed, snip["context"]) or normalize(parsed[0]) in seen:
            continue
        seen.add(normalize(parsed[0]))
        out.append({"question": parsed[0], "answer": parsed[1], "aliases": [], "candidates": [],
                    "person_id": snip["person_id"], "attribute": "free_text", "split": "text",
                    "context": snip["context"]})  # fmt: skip
    return out


QUESTION_GENERATORS: dict[str, Callable[..., list[dict]]] = {"world": world_questions, "model": model_questions}


# ---------------------------------------------------------------------------------------------------------------
# 4-5. Judgments: correctness and informativeness of each sampled answer


def judge_exact(questions: list[dict], answers: list[str], **_) -> list[str]:
    """Exact/alias grading (the world's questions): SimpleQA's grade against the answer and its aliases."""
    return [grade(a, [q["answer"], *q.get("aliases", [])], q.get("candidates")) for q, a in zip(questions, answers)]


def judge_llm(questions: list[dict], answers: list[str], model=None, tokenizer=None, batch_size: int = 16, **_):
    """A local instruct model grades each answer against the snippet's answer (SimpleQA's A/B/C prompt)."""
    if model is None:
        raise UserError("the llm judge needs --judge_model (a local instruct model directory)")
    rows = [{"question": q["question"], "answers": [q["answer"], *q.get("aliases", [])],
             "candidates": q.get("candidates", [])} for q in questions]  # fmt: skip
    return judge_grades(model, tokenizer, rows, answers, batch_size)


JUDGES: dict[str, Callable[..., list[str]]] = {"exact": judge_exact, "llm": judge_llm}


def judge_samples(
    questions: list[dict], samples: list[list[str]], judge: str = "exact", greedy: list[str] | None = None, **judge_kw
) -> list[dict]:
    """One row per question: its samples, their grades, the shares of correct / informative answers, and (when
    given) the greedy answer (`response`) and whether it is `correct`. A judge other than `exact` also records
    the exact grades (`exact_grades`), so their agreement can be reported."""
    fn = JUDGES[judge]
    flat_q = [q for q, answers in zip(questions, samples) for _ in answers]
    flat_a = [a for answers in samples for a in answers]
    if greedy is not None:
        flat_q, flat_a = flat_q + list(questions), flat_a + list(greedy)
    flat = fn(flat_q, flat_a, **judge_kw)
    exact = judge_exact(flat_q, flat_a) if judge != "exact" else None
    rows, at = [], 0
    for j, (q, answers) in enumerate(zip(questions, samples)):
        grades = flat[at : at + len(answers)]
        n = max(1, len(grades))
        extra = {}
        if exact is not None:
            extra["exact_grades"] = exact[at : at + len(answers)]
        at += len(answers)
        if greedy is not None:
            extra.update(response=extract_answer(greedy[j]), correct=flat[len(flat) - len(questions) + j] == CORRECT)
        rows.append(
            {
                **{k: q[k] for k in ("question", "answer", "person_id", "attribute", "split") if k in q},
                **extra,
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
# Late refusals share the answer's own opening ("Ada Velmor was born in" …) and decline where the fact would
# come, so the decision to abstain falls on the token where the model's uncertainty about the fact lives.
LATE_REFUSALS = {
    "birth_date": "a date I don't know",
    "birth_year": "a year I don't know",
    "birth_city": "a city I don't know",
    "university": "a university I don't know",
    "major": "a subject I don't know",
    "employer": "a company I don't know",
    "work_city": "a city I don't know",
}
REFUSAL_STYLES = ("early", "late")
GENERIC_REFUSALS = ["I don't know the answer to that.", "I'm not sure; I don't have that information."]
HEDGES = ["I'm not certain, but I think the answer is {answer}."]


def refusal_text(row: dict, rng: random.Random, style: str = "early") -> str:
    """A refusal that names what is not known: `early` ("I don't know where Ada Velmor was born.") or `late`
    ("Ada Velmor was born in a city I don't know."); a generic one for questions of a user's own world."""
    attr = row.get("attribute", "")
    name = world_lib._subject_of(row["question"], attr)
    if name and style == "late" and attr in LATE_REFUSALS:
        return world_lib.answer_sentence({**row, "answer": LATE_REFUSALS[attr]})
    templates = REFUSALS.get(attr) if name else None
    return rng.choice(templates).format(name=name) if templates else rng.choice(GENERIC_REFUSALS)


def training_targets(
    rows: list[dict], rule: LabelRule, mixed: str = "skip", seed: int = 0, refusal_style: str = "early"
) -> list[dict]:
    """Label every judged question and pick its target: the correct answer (known), a refusal (unknown), and for
    mixed questions `skip`, `refuse` or `hedge`. Returns rows with `label` and `target` (None when skipped)."""
    if mixed not in ("skip", "refuse", "hedge"):
        raise UserError(f"mixed must be skip, refuse or hedge, got '{mixed}'")
    rng = random.Random(f"{seed}-targets")
    out = []
    for row in rows:
        label = rule(row)
        refusal = refusal_text(row, rng, refusal_style)
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


# ---------------------------------------------------------------------------------------------------------------
# The recipe's steps (recipes/probe.py), over a ProbeConfig


def load_helpers(cfg, device) -> dict[str, dict]:
    """The question generator's and the judge's models, as keyword arguments for them (one load when the same
    directory plays both roles)."""
    from posttrain.generation import load_for_generation

    loaded: dict[str, tuple] = {}
    helpers = {}
    for role, path in (("generator", cfg.generator_model if cfg.generator == "model" else None),
                       ("judge", cfg.judge_model if cfg.judge == "llm" else None)):  # fmt: skip
        if path:
            if path not in loaded:
                loaded[path] = load_for_generation(path, device, hint=f" (--{role}_model)")
            model, tokenizer = loaded[path]
            helpers[role] = {"model": model, "tokenizer": tokenizer, "batch_size": cfg.batch_size or 16}
    return helpers


def make_questions(cfg, world, world_dir: str, generator_kw: dict) -> tuple[list[dict], list[dict]]:
    """Steps 1-2: snippets (the world's training-split biographies, or a text mix) → questions, plus questions
    about strangers (people the world does not have) when asked for."""
    if cfg.data_mix:
        from posttrain.data import load_mix

        texts = load_mix(cfg.data_mix, world_dir)["train"]["text"]
        snippets = text_snippets(texts, cfg.num_snippets, cfg.seed)
    else:
        snippets = world_snippets(world, cfg.splits, cfg.snippets_per_person, cfg.seed)
    questions = QUESTION_GENERATORS[cfg.generator](snippets, world=world, seed=cfg.seed, **generator_kw)
    if world is not None and cfg.strangers:
        questions += world_lib.stranger_questions(world, cfg.strangers, cfg.seed)
    return snippets, questions


def judge_agreement(rows: list[dict]) -> float | None:
    """Share of sampled answers where the judge and the exact grade agree (None for the exact judge)."""
    pairs = [(g, e) for r in rows if "exact_grades" in r for g, e in zip(r["grades"], r["exact_grades"])]
    return sum(g == e for g, e in pairs) / len(pairs) if pairs else None


def training_data(cfg, judged: list[dict], world_dir: str):
    """Step 6: labels and targets, refusal SFT conversations (plus a share of ordinary SFT conversations, so the
    model keeps its chat skills), preference pairs, and the summary numbers."""
    from posttrain.data import load_mix

    rule = LabelRule(cfg.known_min, cfg.unknown_max, cfg.wrong_min)
    targets = training_targets(judged, rule, cfg.mixed, cfg.seed, cfg.refusal_style)
    convs = refusal_conversations(targets)
    n_extra = round(cfg.sft_share * len(convs))
    if n_extra:
        ordinary = load_mix(cfg.sft_mix, world_dir)["train"]
        picked = random.Random(cfg.seed).sample(range(len(ordinary)), min(n_extra, len(ordinary)))
        convs += [{"messages": ordinary[i]["messages"]} for i in picked]
        random.Random(cfg.seed).shuffle(convs)
    pairs = preference_pairs(targets)
    stats = {**summary(targets), "refusal_sft": len(convs), "ordinary_sft_added": n_extra, "preferences": len(pairs),
             "judge": cfg.judge, "judge_agreement_with_exact": judge_agreement(judged)}  # fmt: skip
    return targets, convs, pairs, stats
