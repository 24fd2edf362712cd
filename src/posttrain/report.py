"""The run report, `runs/<run>/report.md` (nanochat's report card, for our pipeline), rebuilt from the stages'
lineage records, `eval/*.json` and plots — never from memory. `python -m posttrain.report runs/<run>` rebuilds it
and prints its factuality table (the speedrun's last line)."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from posttrain.lineage import atomic_write_text, read_lineage

STAGES = ("world", "tokenizer", "pretrain", "base", "sft", "probe", "refusal", "reward", "ppo", "grpo", "dpo", "search")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


# (seconds, tokens) keys in the stages' summaries
_TIME_KEYS = ("train_seconds", "train_runtime_s", "sampling_s", "seconds")
_TOKEN_KEYS = ("tokens",)


def environment() -> list[str]:
    """Versions and device, for the report's head (no host names, paths or environment variables)."""
    import torch

    versions = []
    for pkg in ("torch", "transformers", "trl", "accelerate", "datasets", "peft"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            continue
    device = (f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
              else f"CPU, {os.cpu_count()} cores ({platform.machine()})")  # fmt: skip
    return [f"- python {sys.version.split()[0]}, " + ", ".join(versions), f"- device: {device}"]


def eval_results(run_dir: Path) -> dict[str, dict]:
    """eval/<stage>.json by stage, in pipeline order (gates and other evals after the stages)."""
    paths = sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else []
    order = {s: i for i, s in enumerate(STAGES)}
    paths.sort(key=lambda p: (order.get(p.stem, len(STAGES)), p.stem))
    return {p.stem: json.loads(p.read_text()) for p in paths}


def factuality_table(results: dict[str, dict]) -> list[str]:
    """One row per stage, side by side: what a reader compares first, with the SFT-relative numbers (vs_base for RL
    stages, else vs_parent) and the decline ranking (CONTRACTS §5) where the eval has them."""
    lines = ["| stage | known correct | known not attempted | rare correct | never_seen hallucination | "
             "penalty t=0.75 (overall) | kept | Δ wrong − right | decline AUROC vs SFT wrong | "
             "decline AUROC never_seen |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for stage, result in results.items():
        b = result.get("buckets", {})
        known, rare, never = b.get("known", {}), b.get("rare", {}), b.get("never_seen", {})
        halluc = 1 - never["not_attempted"] if "not_attempted" in never else None
        vs, d = result.get("vs_base") or result.get("vs_parent") or {}, result.get("decline", {})
        cells = [known.get("correct"), known.get("not_attempted"), rare.get("correct"), halluc,
                 b.get("overall", {}).get("penalty_t0.75"), vs.get("known_correct", {}).get("kept"),
                 vs.get("refusal_shift", {}).get("delta"), d.get("auroc_vs_sft_wrong"),
                 d.get("auroc_never_seen")]  # fmt: skip
        lines.append(f"| {stage} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return lines


def build_report(run_dir: str | Path) -> Path:
    """Write report.md: environment, time and tokens per stage, the factuality of every stage side by side, one
    section per finished stage with its summary numbers, and the run's plots (the factuality bars redrawn here)."""
    run_dir = Path(run_dir)
    lines = [f"# Run report: `{run_dir.name}`", "", "## Environment", *environment(), ""]
    records = {stage: read_lineage(run_dir / stage) for stage in STAGES}
    records = {k: v for k, v in records.items() if v is not None}
    lines += ["## Time and tokens per stage", "", "| stage | seconds | tokens |", "|---|---|---|"]
    for stage, record in records.items():
        summary = record.get("summary", {})
        secs = next((summary[k] for k in _TIME_KEYS if isinstance(summary.get(k), (int, float))), None)
        toks = next((summary[k] for k in _TOKEN_KEYS if isinstance(summary.get(k), (int, float))), None)
        lines.append(f"| {stage} | {'-' if secs is None else f'{secs:.0f}'} | {'-' if toks is None else f'{toks:,}'} |")
    lines.append("")
    full = eval_results(run_dir)
    results = {stage: r.get("buckets", {}) for stage, r in full.items()}
    if results:
        from posttrain.plots import factuality_bars

        factuality_bars(results, run_dir / "plots" / "factuality.png")
        lines += ["## Factuality, stage by stage", "", *factuality_table(full), ""]
    for stage, record in records.items():
        lines.append(f"## {stage}")
        mix = record.get("data_mix")
        if mix:
            lines.append(f"- data mix: `{mix.get('path')}` (hash `{mix.get('hash')}`)")
        for parent, info in record.get("parents", {}).items():
            lines.append(f"- parent {parent}: `{info.get('path')}` (hash `{info.get('hash', '-')}`)")
        for key, value in record.get("summary", {}).items():
            lines.append(f"- {key}: {_fmt(value)}")
        lines.append("")
    if results:
        lines += [
            "## Factuality per bucket",
            "",
            "| stage | bucket | n | correct | incorrect | not attempted | F |",
            "|---|---|---|---|---|---|---|",
        ]
        for stage, buckets in results.items():
            # a kind of fact held out of training (issue 22 item 4) gets its own row: known + rare questions of it
            held = {f"known + rare, {a} (held out of training)": full[stage].get("attributes", {}).get(a)
                    for a in full[stage].get("held_out_attributes", [])}  # fmt: skip
            for bucket, m in {**buckets, **{k: v for k, v in held.items() if v}}.items():
                lines.append(
                    f"| {stage} | {bucket} | {m['n']} | {m['correct']:.3f} | {m['incorrect']:.3f} | "
                    f"{m['not_attempted']:.3f} | {m['f_score']:.3f} |"
                )
        lines.append("")
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    if plots:
        lines.append("## Plots")
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
        lines.append("")
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    run_dir = Path((argv or sys.argv[1:] or ["runs/speedrun"])[0])
    path = build_report(run_dir)
    print("\n".join(factuality_table(eval_results(run_dir))))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
