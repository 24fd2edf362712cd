"""Data loading and grading for the world_qa lm-evaluation-harness tasks.

Grading is posttrain's own (`posttrain.evals.grading.grade`), so that a checkpoint gets the same verdict here as in
`evals/factuality.py`: **correct** when the answer states an accepted answer (the answer or an alias, as whole words
after normalisation) and names no rival value of the same attribute (hedging between two cities is not correct);
**not_attempted** when it is empty or declines; **incorrect** otherwise. The three rates add up to 1.
"""

from __future__ import annotations

import json
from pathlib import Path

try:
    from posttrain.evals.grading import grade as _grade
except ImportError as exc:  # the tasks ship with posttrain and grade as it does
    raise ImportError("world_qa tasks need posttrain installed (pip install -e . in the posttrain checkout)") from exc

DATA_DIR = Path(__file__).resolve().parent / "data"
_CANDIDATES: dict[str, list[str]] = {}  # attribute -> every answer value, read by load_bucket from candidates.json


def load_bucket(bucket: str, world_qa_data: str | None = None, **_) -> dict:
    """The task's dataset (`custom_dataset`): {"test": <bucket>.jsonl, "fewshot": fewshot.jsonl}.

    Files are read from `world_qa_data` (`lm_eval --metadata world_qa_data=DIR`) or else from data/ next to this
    file, whatever the working directory; `python evals/export_qa.py --world runs/<run>/world` writes them.
    lm-eval passes its metadata (model args included) as keyword arguments too, hence `**_`.
    """
    import datasets

    data_dir = Path(world_qa_data) if world_qa_data else DATA_DIR
    files = {"test": data_dir / f"{bucket}.jsonl", "fewshot": data_dir / "fewshot.jsonl"}
    for path in [*files.values(), data_dir / "candidates.json"]:
        if not path.is_file():
            raise FileNotFoundError(
                f"world_qa: {path} is missing; run `python evals/export_qa.py --world runs/<run>/world` first "
                "(or pass --metadata world_qa_data=<dir with the exported files>)"
            )
    _CANDIDATES.update(json.loads((data_dir / "candidates.json").read_text()))
    return datasets.load_dataset("json", data_files={k: str(v) for k, v in files.items()})


def grade(output: str, answers: list[str], candidates: list[str] | None = None) -> str:
    """'correct', 'not_attempted' or 'incorrect' for one model output (posttrain's grader)."""
    return _grade(output, answers, candidates)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    answers = list(dict.fromkeys([str(doc["answer"]), *map(str, doc.get("aliases") or [])]))
    verdict = grade(results[0], answers, _CANDIDATES.get(doc.get("attribute") or ""))
    return {name: float(verdict == name) for name in ("correct", "incorrect", "not_attempted")}
