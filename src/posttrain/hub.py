"""Model cards and Hub upload for a stage folder (`runs/<run>/<stage>/`), with `huggingface_hub`.

The card is built from what the folders record — the stage's `lineage.json` (config, parents, data mix, summary),
its parents' records back to the world, and `eval/<stage>.json` — never from memory. The token comes only from
the standard login (`hf auth login` / `HF_TOKEN`, read by `huggingface_hub` itself): it is never an argument here,
never printed, and never written into a card or record.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import filter_repo_objects

from posttrain.errors import UserError
from posttrain.lineage import atomic_write_text, read_lineage

# Never uploaded: trainer state (optimizer, scheduler, RNG), temporary files of an atomic write, checkpoints.
IGNORE_PATTERNS = ["*.tmp", "*.tmp/*", "optimizer.pt", "scheduler.pt", "rng_state*", "training_args.bin",
                   "checkpoint-*", "checkpoint-*/*", ".*"]  # fmt: skip
# Config keys left out of a card: tokens and Hub plumbing (values are masked by transformers already; the keys
# add nothing a reader needs), and paths of this machine's checkpoints.
_HIDDEN_KEYS = ("token", "hub_", "push_to_hub", "output_dir", "logging_dir")
_METRICS = (("correct", "correct"), ("not_attempted", "not attempted"), ("incorrect", "incorrect"),
            ("penalty_t0.75", "penalty score t=0.75"))  # fmt: skip


def lineage_chain(stage_dir: str | Path) -> list[dict]:
    """The stage and its ancestors, newest first: `{"stage", "path", "hash", "data_mix"}` from each lineage.json."""
    chain, seen = [], set()
    path, hash_ = Path(stage_dir), None
    while path is not None and str(path) not in seen:
        seen.add(str(path))
        record = read_lineage(path)
        if record is None:  # a Hub model or a folder we did not write: the chain ends with its name
            chain.append({"stage": "external", "path": str(path), "hash": hash_, "data_mix": None})
            break
        chain.append({"stage": record["stage"], "path": str(path), "hash": hash_, "data_mix": record.get("data_mix")})
        parents = record.get("parents", {})
        parent = parents.get("model") or parents.get("tokenizer") or parents.get("world")
        path, hash_ = (Path(parent["path"]), parent.get("hash")) if parent else (None, None)
    return chain


def check_repo_id(repo_id: str | None) -> None:
    """A Hub repo id is ORG/NAME: checked when a config is parsed (before training) and again by `push`."""
    if not repo_id or repo_id.count("/") != 1:
        raise UserError(f"hub_model_id must be ORG/NAME, got '{repo_id}'")


def eval_results(buckets: dict) -> list[EvalResult]:
    """`model-index` entries from the buckets of `eval/<stage>.json` (CONTRACTS §5): per bucket, correct / not
    attempted / incorrect rates and the penalty score at t = 0.75."""
    entries = []
    for bucket, m in buckets.items():
        for key, label in _METRICS:
            if key in m:
                entries.append(EvalResult(
                    task_type="question-answering", task_name="Factual QA (SimpleQA grading)",
                    dataset_type="posttrain/world", dataset_name=f"posttrain world: {bucket}", dataset_split=bucket,
                    metric_type=key, metric_name=f"{label} ({bucket})", metric_value=round(float(m[key]), 4),
                ))  # fmt: skip
    return entries


def _public_config(config: dict) -> dict:
    return {k: v for k, v in sorted(config.items()) if not any(h in k for h in _HIDDEN_KEYS)}


def build_card(stage_dir: str | Path, repo_id: str | None = None, run_dir: str | Path | None = None) -> ModelCard:
    """A model card for a stage folder: lineage, data mixes with hashes, training config, eval results."""
    stage_dir = Path(stage_dir)
    record = read_lineage(stage_dir)
    if record is None:
        raise UserError(f"{stage_dir}: no lineage.json — not a folder written by a posttrain stage")
    stage = record["stage"]
    run_dir = Path(run_dir) if run_dir else stage_dir.parent
    name = repo_id or f"{run_dir.name}-{stage}"
    eval_json = run_dir / "eval" / f"{stage}.json"
    buckets = json.loads(eval_json.read_text()).get("buckets", {}) if eval_json.is_file() else {}
    results = eval_results(buckets)
    chain = lineage_chain(stage_dir)
    external = [c["path"] for c in chain if c["stage"] == "external" and not Path(c["path"]).exists()]
    data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation", license="apache-2.0",
        tags=["posttrain", stage, "factuality"], model_name=name, eval_results=results or None,
        base_model=external[0] if external else None,  # only a Hub id is a valid base_model
    )  # fmt: skip
    lines = [f"# {name}", "", f"A `{stage}` checkpoint made with posttrain "
             f"(`recipes/{'sft' if stage == 'refusal' else stage}.py`). It loads with "
             f"`AutoModelForCausalLM.from_pretrained` (a reward model: `AutoModelForSequenceClassification`).", "",
             "## Lineage (newest first)", "", "| stage | folder | hash | data mix | mix hash |", "|---|---|---|---|---|"]  # fmt: skip
    for c in chain:
        mix = c["data_mix"] or {}
        lines.append(f"| {c['stage']} | `{c['path']}` | `{c['hash'] or '-'}` | `{mix.get('path', '-')}` | "
                     f"`{mix.get('hash', '-')}` |")  # fmt: skip
    if results:
        lines += [
            "",
            "## Factuality (`evals/factuality.py`)",
            "",
            "| bucket | correct | incorrect | not attempted | penalty t=0.75 |",
            "|---|---|---|---|---|",
        ]
        for bucket, m in buckets.items():
            lines.append(f"| {bucket} | {m['correct']:.3f} | {m['incorrect']:.3f} | {m['not_attempted']:.3f} | "
                         f"{m['penalty_t0.75']:.3f} |")  # fmt: skip
    summary = record.get("summary") or {}
    if summary:
        lines += ["", "## Training summary", ""] + [f"- {k}: {v}" for k, v in summary.items()]
    lines += ["", "## Training config", "", "```json", json.dumps(_public_config(record.get("config", {})),
              indent=1, default=str), "```", ""]  # fmt: skip
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_card(stage_dir: str | Path, repo_id: str | None = None, run_dir: str | Path | None = None) -> None:
    """The card as the folder's README.md (atomically), where `from_pretrained` users and the Hub read it."""
    atomic_write_text(Path(stage_dir) / "README.md", str(build_card(stage_dir, repo_id, run_dir)))


def upload_files(stage_dir: str | Path) -> list[str]:
    """The files an upload of `stage_dir` sends (relative paths), with the same filter `upload_folder` applies."""
    stage_dir = Path(stage_dir)
    files = sorted(p.relative_to(stage_dir).as_posix() for p in stage_dir.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS))


def push(stage_dir: str | Path, repo_id: str, revision: str | None = None, private: bool = False,
         dry_run: bool = False, run_dir: str | Path | None = None) -> list[str]:  # fmt: skip
    """Write the card into `stage_dir/README.md` and upload the folder (a branch when `revision` is set).
    `dry_run`: only list the files. Any Hub or network failure is one UserError line; local files stay as they are."""
    stage_dir = Path(stage_dir)
    if not (stage_dir / "config.json").is_file():
        raise UserError(f"{stage_dir}: no config.json — nothing to push (run the stage first)")
    check_repo_id(repo_id)
    write_card(stage_dir, repo_id, run_dir)
    files = upload_files(stage_dir)
    where = f"{repo_id}{f'@{revision}' if revision else ''}"
    if dry_run:
        print(f"dry run: would upload {len(files)} files from {stage_dir} to {where}:")
        for f in files:
            print(f"  {f}")
        return files
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=stage_dir, revision=revision, ignore_patterns=IGNORE_PATTERNS,
                          commit_message=f"posttrain: {stage_dir.name}")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 — network, auth and Hub errors all end the same way, in one line
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UserError(f"push of {stage_dir} to {where} failed ({type(exc).__name__}: {first}); "
                        f"the local checkpoint is intact") from exc  # fmt: skip
    print(f"pushed {len(files)} files from {stage_dir} to https://huggingface.co/{repo_id}"
          f"{f'/tree/{revision}' if revision else ''}")  # fmt: skip
    return files


def finish_stage(cfg, stage_dir: str | Path) -> None:
    """A training recipe's last step: the stage folder gets its model card (README.md, written with every export
    as alignment-handbook does, so a folder inspected locally or loaded by another tool carries its lineage and
    scores), then the push when `--push_to_hub` was given (`push` writes the card itself, before any upload)."""
    if cfg.hub_push_requested():
        push_if_asked(cfg, stage_dir)
    else:
        write_card(stage_dir, run_dir=cfg.run_dir)


def push_if_asked(cfg, stage_dir: str | Path) -> None:
    """A recipe's last step: push its exported folder when `--push_to_hub` was given (config: `HubPush`)."""
    if cfg.hub_push_requested():
        push(stage_dir, cfg.hub_model_id, cfg.hub_revision, cfg.hub_private, cfg.dry_run, cfg.run_dir)
