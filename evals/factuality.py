"""Factuality of a model: correct / incorrect / not attempted per bucket, and calibration (CONTRACTS §5).

python evals/factuality.py --model runs/speedrun/sft --eval_set runs/speedrun --output runs/speedrun/eval/sft.json
python evals/factuality.py --model DIR --eval_set my_qa.jsonl --output out.json   # question, answer[, aliases, bucket]
accelerate launch evals/factuality.py ...                                          # questions split over processes
"""

import json
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.configs import FactualityConfig, parse_config
from posttrain.errors import UserError, entrypoint
from posttrain.evals import factuality as F
from posttrain.generation import auto_batch_size, generate
from posttrain.lineage import atomic_write_text
from posttrain.plots import reliability_diagram
from posttrain.report import build_report
from posttrain.runtime import process_state


def main():
    (cfg,) = parse_config(FactualityConfig)
    state = process_state()
    if not (Path(cfg.model) / "config.json").is_file():
        raise UserError(f"{cfg.model}: not a model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    dtype = torch.bfloat16 if state.device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(state.device)
    rows, shots = F.load_eval_set(cfg.eval_set, cfg.seed, cfg.max_per_bucket, cfg.split)
    style = F.prompt_style(cfg.model, tokenizer, cfg.prompt)
    prompts = F.build_prompts(rows, shots, style, tokenizer)
    torch.manual_seed(cfg.seed + state.process_index)
    batch_size = cfg.batch_size or auto_batch_size(model, 512 + cfg.max_new_tokens, cfg.num_samples)

    with state.split_between_processes(list(range(len(rows)))) as mine:
        greedy, samples = generate(
            model, tokenizer, [prompts[i] for i in mine], max_new_tokens=cfg.max_new_tokens,
            num_samples=cfg.num_samples, temperature=cfg.temperature, batch_size=batch_size,
            stop_strings=["\n"] if style == "fewshot" else None, desc=f"eval ({style})",
        )  # fmt: skip
        records = F.score([rows[i] for i in mine], greedy, samples)
    records = gather_object(records)
    if not state.is_main_process:
        return

    extra = {"prompt": style, "num_samples": cfg.num_samples, "temperature": cfg.temperature, "grader": "exact"}
    if cfg.judge:
        extra.update(F.apply_judge(records, cfg.judge, state.device, batch_size))
    result, bins = F.summarize(records, cfg.model, cfg.eval_set, extra)
    out = Path(cfg.output)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), F.markdown_table(result) + "\n")
    atomic_write_text(out.with_name(out.stem + "_samples.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    run_dir = out.parent.parent if out.parent.name == "eval" else None
    plot_dir = run_dir / "plots" if run_dir else out.parent
    reliability_diagram(bins, plot_dir / f"reliability_{out.stem}.png", f"Reliability: {out.stem}")
    if run_dir is not None:
        build_report(run_dir)
    print(f"factuality of {cfg.model} on {cfg.eval_set} ({style} prompt) -> {out}\n{F.markdown_table(result)}")


if __name__ == "__main__":
    entrypoint(main)
