"""Self-probing (Llama 3 §4.3.6): snippets of the pretraining data → questions → the model's own sampled
answers → judgments → known / unknown / mixed labels → refusal SFT conversations and preference pairs.

Every step is a small function over plain rows (dicts), so a step can be swapped by name (question generators and
judges are registries) and each intermediate result is saved for inspection by `recipes/probe.py`.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from datasets import DatasetDict

from posttrain import gates
from posttrain import world as world_lib
from posttrain.configs import to_dict
from posttrain.data import load_mix
from posttrain.errors import UserError
from posttrain.evals import compare
from posttrain.evals.grading import CORRECT, INCORRECT, NOT_ATTEMPTED, extract_answer, grade, normalize
from posttrain.evals.judge import judge_grades
from posttrain.evals.metrics import rater_agreement
from posttrain.generation import auto_batch_size, generate, load_for_generation
from posttrain.lineage import atomic_write_text, write_lineage
from posttrain.runtime import process_state

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
    for row in world_lib.annotate(world, [r for r in world["qa"] if r["person_id"] in people]):
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
                    "name": row["name"],
                    "sentence": row["sentence"],
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
                **{
                    k: q[k]
                    for k in ("question", "answer", "person_id", "name", "sentence", "fact", "attribute", "split")
                    if k in q
                },
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

KNOWN, UNKNOWN, MIXED, ABSTAINED = "known", "unknown", "mixed", "abstained"
STRANGER = world_lib.STRANGER
LABELS = (KNOWN, UNKNOWN, MIXED, ABSTAINED)


@dataclass
class LabelRule:
    """known: p_correct ≥ known_min (with `greedy`: the greedy answer is right — what a greedy eval asks; samples at
    T = 1 of a small model are right less often than its greedy answer, docs/LOG.md 2026-12-06); unknown:
    p_correct ≤ unknown_max and p_wrong ≥ wrong_min (consistently informative and incorrect); abstained: p_correct ≤ unknown_max and most samples decline (a re-probed refusal
    model: an abstention is counted as one, not as a wrong answer); everything else mixed."""

    known_min: float = 0.75
    unknown_max: float = 0.0
    wrong_min: float = 0.5
    greedy: bool = False  # known where the greedy answer is right; unknown only where it is wrong too

    def __call__(self, row: dict) -> str:
        if self.greedy and "correct" in row:
            if row["correct"]:
                return KNOWN
        elif row["p_correct"] >= self.known_min:
            return KNOWN
        if row["p_correct"] <= self.unknown_max and row["p_wrong"] >= self.wrong_min:
            return UNKNOWN
        if row["p_correct"] <= self.unknown_max and row["p_informative"] < 0.5:
            return ABSTAINED
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
PLAIN_REFUSAL = "I don't know."  # `plain`: one fixed text, so a refusal's own probability is the same everywhere
GENERIC_REFUSALS = ["I don't know the answer to that.", "I'm not sure; I don't have that information."]
HEDGES = ["I'm not certain, but I think the answer is {answer}."]


def refusal_text(row: dict, rng: random.Random, style: str = "early") -> str:
    """A refusal that names what is not known: `early` ("I don't know where Ada Velmor was born.") or `late`
    ("Ada Velmor was born in a city I don't know."), or `auto` (early for a stranger, whose name alone says the
    model cannot know; late for the world's people); a generic one for questions of a user's own world. `first`
    ("Ada … I don't know."): the answer up to the person's first name, so that with the decline token after it the
    decision falls where the model predicts the rest of the name, which a 4-layer model reads as familiarity and a
    first-step decision cannot (docs/LOG.md 2026-12-07); `plain`: "I don't know." alone."""
    if style == "plain":
        return PLAIN_REFUSAL
    attr = row.get("attribute", "")
    name = world_lib._subject_of(row["question"], attr)
    if style == "first":
        return _first_word_refusal(row, (name or row.get("name") or "").split(" ")[0])
    if style == "auto":
        style = "early" if row.get("split") == STRANGER else "late"
    if name and style == "late" and attr in LATE_REFUSALS:
        return world_lib.answer_sentence({**row, "answer": LATE_REFUSALS[attr]})
    if name and attr in REFUSALS:
        return rng.choice(REFUSALS[attr]).format(name=name)
    sentence, fact = row.get("sentence"), row.get("answer") or row.get("fact")
    if style == "late" and sentence and fact and fact in sentence:  # a user's world: its own phrasing, cut short
        return sentence[: sentence.index(fact)].rstrip() + "... I don't know."
    if row.get("name"):  # a user's own world without that sentence: generic forms, still naming the person
        return f"{row['name']}: I don't know." if style == "late" else f"I don't know that about {row['name']}."
    return rng.choice(GENERIC_REFUSALS)


def _first_word_refusal(row: dict, first_name: str) -> str:
    """`first`: the answer sentence up to the person's first name, then one fixed text ("Ada … I don't know.";
    "Notably, Ada … I don't know." where the world's sentence opens with a clause), so the decline token after it
    falls where the model predicts the surname. The sentence is the row's own (a user's world; a stranger borrows
    one) or ours; "I don't know." alone when the name does not come before the fact."""
    if not first_name:
        return PLAIN_REFUSAL
    sentence = row.get("sentence") or world_lib.answer_sentence({**row, "answer": row.get("answer") or "?"})
    fact = row.get("answer") or row.get("fact") or ""
    words = sentence.split(" ")
    if first_name in words:
        head = " ".join(words[: words.index(first_name) + 1])
        if not (fact and fact in sentence and sentence.index(fact) < len(head)):
            return f"{head} … {PLAIN_REFUSAL}"
    return PLAIN_REFUSAL


def own_answer(row: dict) -> str | None:
    """The probed model's own greedy answer when it was right, cut after the first sentence that gives the answer
    (so a target never ends mid-sentence where generation was cut off); None when there is no such answer."""
    text = (row.get("response") or "").strip()
    if not row.get("correct") or not text:
        return None
    sentences = re.split(r"(?<=[.!?])\s+", text)
    for n in range(1, len(sentences) + 1):
        if grade(" ".join(sentences[:n]), [row["answer"]]) == CORRECT:
            return _complete(" ".join(sentences[:n]), row["answer"])
    return text if text.endswith((".", "!", "?")) else None  # right by an alias: the whole answer, if complete


def _complete(answer: str, truth: str) -> str | None:
    """A target that ends as a sentence: an answer cut off by the sampling budget ("... located in the South of
    China, specifically in the") ends at the last clause boundary that still gives the fact, with a full stop; None
    when no such clause holds it. Trained on, a cut-off answer teaches the model to stop mid-sentence (and the
    half-phrase it stopped on)."""
    if answer.endswith((".", "!", "?")):
        return answer
    cuts = [m.start() for m in re.finditer(r"[,;:(]", answer)]
    for cut in reversed(cuts):
        head = answer[:cut].rstrip()
        if grade(head, [truth]) == CORRECT:
            return head + "."
    return None


def training_targets(
    rows: list[dict], rule: LabelRule, mixed: str = "skip", seed: int = 0, refusal_style: str = "early",
    known_targets: str = "template",
) -> list[dict]:  # fmt: skip
    """Label every judged question and pick its target: the correct answer (known: the world's answer sentence, or
    with `known_targets` own the model's own right answer where it has one), a refusal (unknown), and for mixed
    questions `skip`, `refuse` or `hedge`. Returns rows with `label` and `target` (None when skipped)."""
    if mixed not in ("skip", "refuse", "hedge"):
        raise UserError(f"mixed must be skip, refuse or hedge, got '{mixed}'")
    rng = random.Random(f"{seed}-targets")
    out = []
    for row in rows:
        label = rule(row)
        refusal = refusal_text(row, rng, refusal_style)
        correct = world_lib.answer_sentence({"question": row["question"], "attribute": row.get("attribute", ""),
                                             "answer": row["answer"], "name": row.get("name"),
                                             "sentence": row.get("sentence")})  # fmt: skip
        if label == KNOWN:
            target = (own_answer(row) if known_targets == "own" else None) or correct
        elif label in (UNKNOWN, ABSTAINED) or mixed == "refuse":  # an abstention the model keeps
            target = refusal
        elif mixed == "hedge":
            target = rng.choice(HEDGES).format(answer=row["answer"])
        else:
            target = None
        wrong = next((s for s, g in zip(row["samples"], row["grades"]) if g == INCORRECT), None)
        out.append({**row, "label": label, "target": target, "correct_answer": correct, "wrong_answer": wrong,
                    "refusal": refusal})  # fmt: skip
    return out


def sampled_targets(targets: list[dict], seed: int = 0) -> list[dict]:
    """Proper labels in expectation (Alignment for Honesty's MULTISAMPLE, one copy per question): each question
    answers with probability p_correct (its share of right samples) and declines otherwise, so across a fact's
    phrasings the model's decline probability is trained towards 1 − P(right) — no threshold, no skipped middle.
    Strangers (p_correct 0) always decline."""
    rng = random.Random(f"{seed}-sampled")
    out = []
    for t in targets:
        answer = rng.random() < t["p_correct"]
        out.append(
            {**t, "label": KNOWN if answer else UNKNOWN, "target": t["correct_answer"] if answer else t["refusal"]}
        )
    return out


def mark_decline(refusal: str, answer: str) -> str:
    """The refusal with the decline token where it leaves the answer: after the words both share ("Ada was born
    in" + `<|idk|>` + " a city I don't know."), at the start when they share none."""
    from posttrain.decline import DECLINE_TOKEN

    shared = 0  # whole words only: "I don't know…" and "Imerimandroso is…" share no word
    for a, b in zip(refusal.split(" "), answer.split(" ")):
        if a != b:
            break
        shared += 1
    cut = len(" ".join(refusal.split(" ")[:shared]))
    return refusal[:cut] + DECLINE_TOKEN + refusal[cut:]


def skip_confident_unknowns(targets: list[dict], recall: float = 0.8) -> tuple[list[dict], float]:
    """Drop the refusal target of unknown questions about the world's people that the model answers as confidently
    as it answers what it knows: `answer_confidence` (the greedy answer's lowest token log-probability, as the
    answer gate scores it) at or above the level that `recall` of its right greedy answers reach. Such a question
    looks known from inside the model, so a refusal there can only be learnt from the person's name: the refusal
    model then declines by name, not by knowledge (docs/LOG.md 2026-11-27). Strangers keep their refusals (a
    never-seen name is itself what the model should decline on). Returns the targets and the threshold."""
    right = [t["answer_confidence"] for t in targets if t.get("correct") and t.get("split") != STRANGER]
    threshold = gates.recall_threshold(right, recall) if right else float("inf")
    out = []
    for t in targets:
        confident = t["label"] == UNKNOWN and t.get("split") != STRANGER and t["answer_confidence"] >= threshold
        out.append({**t, "target": None, "confident_unknown": True} if confident else t)
    return out, threshold


def mark_calibration(targets: list[dict], share: float, seed: int = 0) -> list[dict]:
    """Mark a `share` of the entities (by person_id, so all questions about one stay together; strangers too) as
    the calibration set: kept out of training, used to fit the operating point on questions the model never
    trained on."""
    if not share:
        return targets
    ents = sorted({t.get("person_id") or t["question"] for t in targets})
    cal = set(random.Random(f"{seed}-calibration").sample(ents, round(share * len(ents))))
    return [{**t, "calibration": (t.get("person_id") or t["question"]) in cal} for t in targets]


def refusal_conversations(targets: list[dict]) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": t["question"]}, {"role": "assistant", "content": t["target"]}]}
        for t in targets
        if t["target"] is not None
    ]


def search_conversations(targets: list[dict], search_fn, ordinary: list[dict] = ()) -> list[dict]:
    """Search-when-unsure SFT data (issue 24) from the probe's labels, every row listing the search tool: where the
    model knows (`known`), the answer directly; elsewhere a search for the name, the tool's turn, then the answer
    citing the document that states it ("Ada Velmor was born in Dunmere [doc 812].") — or the refusal when no
    returned document names the person with the answer (a stranger's search never does). `ordinary` SFT
    conversations are added with the tool listed and unused, so listing it does not by itself mean searching."""
    from transformers.utils import get_json_schema

    from posttrain.tools import CITATION, search_turns

    tools = json.dumps([get_json_schema(search_fn)])
    out = [{"messages": c["messages"], "tools": tools} for c in ordinary]
    for t in targets:
        user = {"role": "user", "content": t["question"]}
        if t["label"] == KNOWN:
            out.append({"messages": [user, {"role": "assistant", "content": t["correct_answer"]}], "tools": tools})
            continue
        name = t.get("name") or ""
        query = name or t["question"]
        result = search_fn(query)
        doc = next((int(m.group(1)) for line in result.splitlines() if (m := CITATION.match(line))
                    and t["answer"] and name and name in line and world_lib.states(line, t["answer"], name)), None)  # fmt: skip
        answer = t["refusal"] if doc is None else t["correct_answer"].rstrip(".") + f" [doc {doc}]."
        out.append({"messages": [user, *search_turns(query, result), {"role": "assistant", "content": answer}],
                    "tools": tools})  # fmt: skip
    return out


def preference_pairs(targets: list[dict], known_min: float = 0.0) -> list[dict]:
    """TRL conversational pairs: on unknown questions the refusal beats the model's wrong answer; on known ones
    the correct answer beats a refusal (against over-refusal) where the model is right at least `known_min` of the
    time; on known and mixed ones, where the model also answered wrong, the correct answer beats that wrong answer
    (what a reward model needs to tell facts apart). `known_min` lets answer *targets* start lower than these pairs:
    with a refusal losing on questions the model gets right once in four, the reward model learnt that refusals
    lose (held-out accuracy 0.78; 0.92 without those pairs, same judgments; docs/LOG.md 2026-11-27)."""
    pairs = []
    for t in targets:
        prompt = [{"role": "user", "content": t["question"]}]
        kinds = []
        if t["label"] == UNKNOWN and t["wrong_answer"]:
            kinds.append((t["refusal"], t["wrong_answer"], "refusal_over_wrong"))
        if t["label"] == KNOWN and t["p_correct"] >= known_min:
            kinds.append((t["correct_answer"], t["refusal"], "correct_over_refusal"))
        if t["label"] in (KNOWN, MIXED) and t["wrong_answer"]:
            kinds.append((t["correct_answer"], t["wrong_answer"], "correct_over_wrong"))
        for chosen, rejected, kind in kinds:
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}], "pair_type": kind})  # fmt: skip
    return pairs


def summary(targets: list[dict]) -> dict:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(LABELS, 0))
    for t in targets:
        counts["all"][t["label"]] += 1
        counts[t.get("split", "?")][t["label"]] += 1
    return {"questions": len(targets), **counts["all"],
            "with_target": sum(t["target"] is not None for t in targets),
            "labels_by_split": {k: v for k, v in sorted(counts.items()) if k != "all"}}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The recipe's steps (recipes/probe.py), over a ProbeConfig


def load_helpers(cfg, device) -> dict[str, dict]:
    """The question generator's and the judge's models, as keyword arguments for them (one load when the same
    directory plays both roles)."""
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
        texts = load_mix(cfg.data_mix, world_dir)["train"]["text"]
        snippets = text_snippets(texts, cfg.num_snippets, cfg.seed)
    else:
        snippets = world_snippets(world, cfg.splits, cfg.snippets_per_person, cfg.seed)
    questions = QUESTION_GENERATORS[cfg.generator](snippets, world=world, seed=cfg.seed, **generator_kw)
    if world is not None and cfg.strangers:
        questions += world_lib.stranger_questions(world, round(cfg.strangers * len(questions)), cfg.seed)
    return snippets, questions


def judge_agreement(rows: list[dict]) -> dict | None:
    """How the judge's grades of the sampled answers agree with the exact grades: accuracy, Cohen's kappa, and
    per label (None for the exact judge)."""
    pairs = [(g, e) for r in rows if "exact_grades" in r for g, e in zip(r["grades"], r["exact_grades"])]
    return rater_agreement(*zip(*pairs)) if pairs else None


def ordinary_conversations(cfg, world_dir: str, n: int) -> list[dict]:
    """`n` conversations of the ordinary SFT mix (seeded), so a stage trained on probe data keeps its chat skills."""
    ordinary = load_mix(cfg.sft_mix, world_dir)["train"]
    picked = random.Random(cfg.seed).sample(range(len(ordinary)), min(n, len(ordinary)))
    return [{"messages": ordinary[i]["messages"]} for i in picked]


REPLAY_QUERY_TOKENS, REPLAY_ANSWER_TOKENS = 40, 64


def query_prefix(tokenizer) -> str:
    """The chat template's text up to where a user's message begins (with the template's default system prompt,
    if any): what Magpie continues to let a chat model write a user's message itself."""
    sentinel = "\x00posttrain-query\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}], tokenize=False)
    return text[: text.index(sentinel)]


def replay_query(query: str) -> str | None:
    """A self-written user message worth answering: one line of 10-200 characters."""
    query = query.strip()
    return query if 10 <= len(query) <= 200 and "\n" not in query else None


def replay_row(query: str, answer: str) -> dict | None:
    """One self-replay conversation, or None: a usable query, and the answer up to its last full sentence (an
    answer cut by the token budget would teach stopping mid-sentence), at least 20 characters of it."""
    query, answer = replay_query(query), answer.strip()
    if not answer.endswith((".", "!", "?")):
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", answer)]
        answer = answer[: ends[-1]] if ends else ""
    if query is None or len(answer) < 20:
        return None
    return {"messages": [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]}


def self_replay_conversations(model, tokenizer, cfg) -> list[dict]:
    """The probed model's own conversations, to anchor what the refusal data does not cover: `cfg.self_replay` user
    messages the model writes itself from the chat template's user prefix (Magpie: Xu et al. 2024, arXiv 2406.08464;
    sampled at T = 1), deduplicated, and its own greedy answers to them. Trained on beside the probe's targets,
    they keep the model's behaviour on every other kind of request where it was (self-distillation against
    forgetting: Yang et al. 2024, arXiv 2402.13669); on SmolLM2, at equal retention, the refusal stage then keeps
    half again to twice as many right answers of a kind of fact it never trained on (docs/LOG.md 2026-12-07).
    Written here because neither TRL nor datasets generates Magpie prompts (distilabel does, behind an
    LLM-serving stack this project does not install)."""
    _, samples = generate(model, tokenizer, [query_prefix(tokenizer)], max_new_tokens=REPLAY_QUERY_TOKENS,
                          num_samples=cfg.self_replay, temperature=1.0, batch_size=1, desc="self-replay: queries",
                          greedy_pass=False, precision=cfg.mixed_precision, seed=cfg.seed)  # fmt: skip
    queries = list(dict.fromkeys(q for q in map(replay_query, samples[0]) if q))
    greedy, _ = generate(model, tokenizer, [[{"role": "user", "content": q}] for q in queries],
                         max_new_tokens=REPLAY_ANSWER_TOKENS, batch_size=cfg.batch_size or 32,
                         desc="self-replay: answers", precision=cfg.mixed_precision)  # fmt: skip
    rows = [replay_row(q, g.text) for q, g in zip(queries, greedy)]
    return [r for r in rows if r]


def search_data(cfg, targets: list[dict], world_dir: str, tokenizer) -> list[dict]:
    """The search stage's SFT data (probe/search_sft.jsonl): search conversations plus a `sft_share` of ordinary
    ones, over the run's search index (built here from the world's documents when the run has none)."""
    from posttrain.tools import run_index, search_tool

    search = search_tool(run_index(cfg.run_dir, world_dir), tokenizer=tokenizer)
    n_extra = round(cfg.sft_share * len(targets))
    convs = search_conversations(targets, search, ordinary_conversations(cfg, world_dir, n_extra) if n_extra else [])
    random.Random(cfg.seed).shuffle(convs)
    return convs


def training_data(cfg, judged: list[dict], world_dir: str, replay: list[dict] = ()):
    """Step 6: labels and targets, refusal SFT conversations (plus a share of ordinary SFT conversations, so the
    model keeps its chat skills, and the model's own `replay` conversations), preference pairs, and the summary
    numbers."""
    rule = LabelRule(cfg.known_min, cfg.unknown_max, cfg.wrong_min, greedy=cfg.label_rule == "greedy")
    targets = training_targets(judged, rule, cfg.mixed, cfg.seed, cfg.refusal_style, cfg.known_targets)
    extra = {}
    if cfg.confident_unknowns == "skip":
        targets, threshold = skip_confident_unknowns(targets, cfg.confidence_recall)
        extra = {"confident_unknowns_skipped": sum(bool(t.get("confident_unknown")) for t in targets),
                 "confidence_threshold": round(threshold, 3)}  # fmt: skip
    if cfg.label_rule == "sampled":
        targets = sampled_targets(targets, cfg.seed)
    if cfg.decline_token:
        targets = [{**t, "target": mark_decline(t["target"], t.get("sentence") or t["correct_answer"])}
                   if t["target"] is not None and t["target"] == t["refusal"] else t for t in targets]  # fmt: skip
    targets = mark_calibration(targets, cfg.calibration_share, cfg.seed)
    train = [t for t in targets if not t.get("calibration")]
    convs = refusal_conversations(train)
    n_extra = round(cfg.sft_share * len(convs))
    if n_extra or replay:
        convs += (ordinary_conversations(cfg, world_dir, n_extra) if n_extra else []) + list(replay)
        random.Random(cfg.seed).shuffle(convs)
    pairs = preference_pairs(train, cfg.pair_known_min)
    if len(train) < len(targets):
        extra["calibration_questions"] = len(targets) - len(train)
    stats = {**summary(targets), "refusal_sft": len(convs), "ordinary_sft_added": n_extra, "self_replay": len(replay),
             "preferences": len(pairs), "judge": cfg.judge, **extra}  # fmt: skip
    agreement = judge_agreement(judged)
    if agreement:
        stats.update(judge_agreement_with_exact=agreement["accuracy"], judge_vs_exact=agreement)
    return targets, convs, pairs, stats


def run(cfg) -> dict | None:
    """The whole probe of `cfg` (a ProbeConfig): steps 1-6 into `cfg.output_dir` (default <run>/probe/), then the
    probed model's no-training gates. Returns the summary on the main process, None on the others."""
    state = process_state()
    model_dir = Path(cfg.model or cfg.stage_dir("sft"))
    world_dir = cfg.world_dir or str(cfg.stage_dir("world"))
    out = Path(cfg.output_dir or cfg.stage_dir("probe"))
    model, tokenizer = load_for_generation(model_dir, state.device, hint="; run recipes/sft.py first")
    world = world_lib.load_world(world_dir) if Path(world_dir).exists() or not cfg.data_mix else None
    helpers = load_helpers(cfg, state.device)  # generator / judge models, when asked for

    snippets, questions = make_questions(cfg, world, world_dir, helpers.get("generator", {}))
    if not questions:
        raise UserError(f"{cfg.data_mix or world_dir}: no answerable questions from {len(snippets)} snippets")
    state.print(f"probe 1-2: {len(snippets)} snippets → {len(questions)} questions ({cfg.generator} generator, "
                f"{sum(q['split'] == STRANGER for q in questions)} about strangers); {cfg.num_samples} samples each from {model_dir}")  # fmt: skip

    torch.manual_seed(cfg.seed + state.process_index)
    batch_size = cfg.batch_size or auto_batch_size(model, 256 + cfg.max_new_tokens, cfg.num_samples)
    start = time.perf_counter()
    with state.split_between_processes(list(range(len(questions)))) as mine:
        greedy, samples = generate(
            model, tokenizer, [[{"role": "user", "content": questions[i]["question"]}] for i in mine],
            max_new_tokens=cfg.max_new_tokens, num_samples=cfg.num_samples, temperature=cfg.temperature,
            batch_size=batch_size, desc="probe 3: sampling", precision=cfg.mixed_precision,
            backend=cfg.generation_backend, seed=cfg.seed,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        judged = judge_samples([questions[i] for i in mine], samples, cfg.judge, [g.text for g in greedy],
                               **helpers.get("judge", {}))  # fmt: skip
    judged, seconds = gather_object(judged), max(gather_object([seconds]))
    if not state.is_main_process:
        return None
    rate = len(questions) * (cfg.num_samples + 1) / seconds
    print(f"probe 3: {len(questions) * (cfg.num_samples + 1):,} answers in {seconds:.0f} s ({rate:.1f} answers/s)")
    if cfg.confident_unknowns == "skip":  # the answer gate's score of each greedy answer, kept in judgments.jsonl
        scores = gates.answer_confidence(model, tokenizer, [j["question"] for j in judged],
                                         [j["response"] for j in judged], batch_size)  # fmt: skip
        judged = [{**j, "answer_confidence": c} for j, c in zip(judged, scores)]

    replay = []
    if cfg.self_replay:  # on the main process only: a few hundred short generations
        start = time.perf_counter()
        replay = self_replay_conversations(model, tokenizer, cfg)
        print(f"self-replay: {len(replay)} of {cfg.self_replay} self-written queries kept with their answers "
              f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    targets, convs, pairs, stats = training_data(cfg, judged, world_dir, replay)
    searches = search_data(cfg, targets, world_dir, tokenizer) if cfg.search_sft and world is not None else []
    stats.update(answers_per_s=round(rate, 2), sampling_s=round(seconds, 1), search_sft=len(searches))
    print(f"probe 4-6: {json.dumps(stats)}")
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("snippets", snippets), ("questions", questions), ("judgments", targets),
                       ("refusal_sft", convs), ("preferences", pairs), ("search_sft", searches),
                       ("self_replay", replay)):  # fmt: skip
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / "summary.json", json.dumps(stats, indent=2) + "\n")
    write_lineage(out, "probe", to_dict(cfg), parents={"model": {"path": str(model_dir)}}, summary=stats)

    model_eval = Path(cfg.run_dir) / "eval" / f"{model_dir.name}.json"
    if cfg.gate_baselines and world is not None and compare.samples_path(model_eval).is_file():
        names = world_lib.question_names(world)
        fit = [{**j, "name": names.get(j["question"])} for j in judged if j["split"] in world_lib.TRAIN_SPLITS]
        gates.evaluate_gates(model, tokenizer, fit, model_eval, names, cfg.gate_name_quantile, cfg.gate_recall,
                             batch_size)  # fmt: skip
    print(f"probe -> {out}")
    return stats
