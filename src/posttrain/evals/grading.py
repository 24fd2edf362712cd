"""Grading answers SimpleQA-style: correct / incorrect / not attempted, exactly, against an answer and its aliases.

An answer is **correct** when it states an accepted answer (after normalisation, as whole words) and names no
other candidate of the same kind (hedging between "Lisbon or Porto" is not correct); **not attempted** when it is
empty or declines (a refusal phrase) without stating the answer; **incorrect** otherwise. The refusal phrases
include the ones posttrain's refusal data teaches, so a model's own "I don't know" template is recognised.
"""

from __future__ import annotations

import re
import string

CORRECT, INCORRECT, NOT_ATTEMPTED = "correct", "incorrect", "not_attempted"

REFUSAL_PATTERNS = [
    r"\bi (?:really )?(?:do not|don't|dont) know\b",
    r"\bi(?:'m| am) not (?:sure|certain|aware)\b",
    r"\bi (?:do not|don't) have (?:any |enough )?(?:information|data|knowledge|details)\b",
    r"\bi have no (?:information|idea|knowledge|record)\b",
    r"\bno (?:information|record|knowledge) (?:about|of|on)\b",
    r"\bi (?:cannot|can't|can not|am unable to|couldn't) (?:answer|say|tell|find|recall|confirm)\b",
    r"\bi(?:'m| am) unable to (?:answer|say|tell|find|recall|confirm)\b",
    r"\bnot (?:something|anything) i know\b",
    r"\bunknown to me\b",
    r"\bi (?:do not|don't) recognize\b",
    r"\bi(?:'m| am) not familiar with\b",
]
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS))
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "'"})


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, no articles, single spaces (SQuAD-style), ordinals kept as numbers."""
    text = text.lower().replace("’", "'").translate(_PUNCT)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", r"\1", text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def extract_answer(response: str) -> str:
    """The answer part of a generation: up to the first blank line or a new 'Question:' (few-shot prompts)."""
    text = response.strip()
    for stop in ("\n\n", "\nQuestion:", "Question:"):
        if stop in text:
            text = text.split(stop, 1)[0]
    return text.strip()


def is_abstention(response: str) -> bool:
    text = response.lower().replace("’", "'")
    return not text.strip() or bool(_REFUSAL.search(text))


def _contains(haystack: str, needle: str) -> bool:
    return bool(needle) and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack) is not None


def grade(response: str, answers: list[str], candidates: list[str] | None = None) -> str:
    """Grade one response against accepted `answers`; `candidates` are other values of the same kind (e.g. every
    city of the world): naming one of them besides the right answer is a contradiction."""
    text = normalize(extract_answer(response))
    accepted = [normalize(a) for a in answers if a and a.strip()]
    if any(_contains(text, a) for a in accepted):
        rivals = [normalize(c) for c in candidates or []]
        rivals = [c for c in rivals if c and not any(_contains(a, c) or _contains(c, a) for a in accepted)]
        return INCORRECT if any(_contains(text, c) for c in rivals) else CORRECT
    return NOT_ATTEMPTED if is_abstention(extract_answer(response)) else INCORRECT
