"""The run report, `runs/<run>/report.md`, rebuilt from the stages' lineage records and plots."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.lineage import atomic_write_text, read_lineage

STAGES = ("world", "tokenizer", "pretrain", "sft", "probe", "refusal", "reward", "ppo", "grpo", "dpo")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def build_report(run_dir: str | Path) -> Path:
    """Write report.md: one section per finished stage, its summary numbers, and the run's plots."""
    run_dir = Path(run_dir)
    lines = [f"# Run report: `{run_dir.name}`", ""]
    for stage in STAGES:
        record = read_lineage(run_dir / stage)
        if record is None:
            continue
        lines.append(f"## {stage}")
        mix = record.get("data_mix")
        if mix:
            lines.append(f"- data mix: `{mix.get('path')}` (hash `{mix.get('hash')}`)")
        for parent, info in record.get("parents", {}).items():
            lines.append(f"- parent {parent}: `{info.get('path')}` (hash `{info.get('hash', '-')}`)")
        for key, value in record.get("summary", {}).items():
            lines.append(f"- {key}: {_fmt(value)}")
        lines.append("")
    evals = sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else []
    if evals:
        lines += [
            "## Factuality",
            "",
            "| stage | bucket | n | correct | incorrect | not attempted | F |",
            "|---|---|---|---|---|---|---|",
        ]
        for path in evals:
            result = json.loads(path.read_text())
            for bucket, m in result.get("buckets", {}).items():
                lines.append(
                    f"| {path.stem} | {bucket} | {m['n']} | {m['correct']:.3f} | {m['incorrect']:.3f} | "
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
