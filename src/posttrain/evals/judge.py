"""An LLM judge for free-text QA (SimpleQA's grading scheme, any local instruct model given by path).

The world's questions are graded exactly (`grading.grade`); for free-text sets such as SimpleQA, where an answer
can be right in words the aliases do not list, a judge model reads question, gold target and prediction and
answers A (correct), B (incorrect) or C (not attempted). Its grades go through the same metrics.
"""

from __future__ import annotations

import re

from posttrain.evals.grading import CORRECT, INCORRECT, NOT_ATTEMPTED, extract_answer, grade
from posttrain.generation import generate

JUDGE_PROMPT = """You grade answers to factual questions.
Question: {question}
Gold target: {target}
Predicted answer: {prediction}

Reply with one letter:
A: CORRECT - the predicted answer states the gold target (extra words are fine) and does not contradict it.
B: INCORRECT - the predicted answer gives a different or contradicting answer.
C: NOT_ATTEMPTED - the predicted answer declines, hedges without an answer, or is empty.
Letter:"""
LETTERS = {"A": CORRECT, "B": INCORRECT, "C": NOT_ATTEMPTED}


def parse_letter(text: str) -> str | None:
    """The first standalone A/B/C (or the grade's name) in the judge's reply; None when there is none."""
    match = re.search(r"\b([ABC])\b|\b(CORRECT|INCORRECT|NOT_ATTEMPTED)\b", text.upper())
    if not match:
        return None
    return LETTERS[match.group(1)] if match.group(1) else match.group(2).lower()


def judge_grades(model, tokenizer, rows: list[dict], responses: list[str], batch_size: int = 32) -> list[str]:
    """A grade per (row, response); where the judge's reply has no letter, the exact grader decides."""
    prompts = []
    for r, resp in zip(rows, responses):
        text = JUDGE_PROMPT.format(question=r["question"], target=r["answers"][0], prediction=extract_answer(resp))
        prompts.append([{"role": "user", "content": text}] if tokenizer.chat_template else text)
    replies, _ = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=batch_size, desc="judging")
    out = []
    for r, resp, reply in zip(rows, responses, replies):
        out.append(parse_letter(reply.text) or grade(resp, r["answers"], r["candidates"]))
    return out
