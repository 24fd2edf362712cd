"""Export a world's eval questions as JSONL for the lm-evaluation-harness tasks in evals/lm_eval_tasks/world_qa/.

python evals/export_qa.py --world runs/<run>/world [--output_dir evals/lm_eval_tasks/world_qa/data]

Writes known.jsonl, rare.jsonl and never_seen.jsonl (one per eval bucket; rows: question, answer, aliases, bucket,
attribute), candidates.json (every answer value of each attribute: the rivals the grader checks for hedging, as
posttrain's eval does) and fewshot.jsonl: the very shots posttrain's eval puts before a base model's question (`world_shots`, seed 0: one
training-split question per attribute with its answer sentence, never an eval fact), in that order, for
`lm_eval --num_fewshot 3` (the task takes the first N, so both evaluations send the same prompt).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets.utils.logging import disable_progress_bar

from posttrain import world as world_lib
from posttrain.errors import UserError, entrypoint
from posttrain.evals.factuality import world_shots

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "lm_eval_tasks" / "world_qa" / "data"
COLUMNS = ["question", "answer", "aliases", "bucket", "attribute"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, like every recipe
        raise UserError(message)


def export(world_dir: str | Path, output_dir: str | Path = DEFAULT_OUTPUT) -> dict[str, int]:
    """Write the JSONL files; returns rows per file."""
    world_dir = Path(world_dir)
    if not (world_dir / "dataset_dict.json").is_file() and (world_dir / "world" / "dataset_dict.json").is_file():
        world_dir = world_dir / "world"  # a run directory
    disable_progress_bar()
    world = world_lib.load_world(world_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    candidates = world_lib.answers_by_attribute(world["qa"])
    (output_dir / "candidates.json").write_text(json.dumps(candidates, ensure_ascii=False) + "\n")
    counts = {}
    for split, bucket in world_lib.EVAL_BUCKETS.items():
        ds = world_lib.qa_view(world, [split])
        ds = ds.add_column("bucket", [bucket] * len(ds))
        ds.select_columns(COLUMNS).to_json(output_dir / f"{bucket}.jsonl", lines=True, force_ascii=False)
        counts[bucket] = len(ds)
    shots = [{"question": q, "answer": a, "aliases": [], "bucket": "fewshot", "attribute": ""}
             for q, a in world_shots(world)]  # fmt: skip
    (output_dir / "fewshot.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in shots))
    counts["fewshot"] = len(shots)
    return counts


def main() -> None:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="a world directory (runs/<run>/world) or a run directory")
    parser.add_argument("--output_dir", default=str(DEFAULT_OUTPUT), help="where the JSONL files go")
    args = parser.parse_args()
    counts = export(args.world, args.output_dir)
    print(f"world QA -> {args.output_dir}: " + ", ".join(f"{name}.jsonl {n} rows" for name, n in counts.items()))


if __name__ == "__main__":
    entrypoint(main)
