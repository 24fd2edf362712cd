"""Data loading and grading for the world_qa lm-evaluation-harness tasks (standalone: no posttrain import).

Grading, per generation: **correct** when any accepted answer (the answer or an alias) appears in the output as whole
words after normalisation (lowercase, punctuation and the articles a/an/the removed, whitespace collapsed);
otherwise **not_attempted** when the output is empty or declines ("I don't know", "not sure", ...); otherwise
**incorrect**. The three rates add up to 1.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
REFUSALS = [
    "i don't know",
    "i do not know",
    "not sure",
    "no information",
    "no idea",
    "cannot answer",
    "can't answer",
    "unable to answer",
    "i'm not aware",
    "i am not aware",
    "i don't have information",
    "i do not have information",
]
_APOSTROPHES = str.maketrans({"'": "", "’": ""})
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def load_bucket(bucket: str, world_qa_data: str | None = None, **_) -> dict:
    """The task's dataset (`custom_dataset`): {"test": <bucket>.jsonl, "fewshot": fewshot.jsonl}.

    Files are read from `world_qa_data` (`lm_eval --metadata world_qa_data=DIR`) or else from data/ next to this
    file, whatever the working directory; `python evals/export_qa.py --world runs/<run>/world` writes them.
    lm-eval passes its metadata (model args included) as keyword arguments too, hence `**_`.
    """
    import datasets

    data_dir = Path(world_qa_data) if world_qa_data else DATA_DIR
    files = {"test": data_dir / f"{bucket}.jsonl", "fewshot": data_dir / "fewshot.jsonl"}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"world_qa: {path} is missing; run `python evals/export_qa.py --world runs/<run>/world` first "
                "(or pass --metadata world_qa_data=<dir with the exported JSONL files>)"
            )
    return datasets.load_dataset("json", data_files={k: str(v) for k, v in files.items()})


def normalize(text: str) -> str:
    text = text.lower().translate(_APOSTROPHES).translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _contains(text: str, phrase: str) -> bool:
    return bool(phrase) and f" {phrase} " in f" {text} "


_REFUSALS = [normalize(p) for p in REFUSALS]


def grade(output: str, answers: list[str]) -> str:
    """'correct', 'not_attempted' or 'incorrect' for one model output against the accepted answers."""
    text = normalize(output)
    if any(_contains(text, normalize(a)) for a in answers if a):
        return "correct"
    if not text or any(_contains(text, p) for p in _REFUSALS):
        return "not_attempted"
    return "incorrect"


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    verdict = grade(results[0], [doc["answer"], *(doc.get("aliases") or [])])
    return {name: float(verdict == name) for name in ("correct", "incorrect", "not_attempted")}
