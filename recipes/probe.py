"""Self-probing (Llama 3 §4.3.6): ask the SFT model about its own pretraining data, judge its sampled answers,
and write refusal SFT conversations and preference pairs into runs/<run>/probe/.

python recipes/probe.py --config recipes/world/probe.yaml
python recipes/probe.py --config recipes/world/probe.yaml --data_mix data_mixes/hub_pretrain_fineweb_edu.yaml \
    --generator model --generator_model runs/smollm2/base --judge llm --judge_model runs/smollm2/base   # free text
accelerate launch recipes/probe.py ...     # questions split over processes
Then: python recipes/sft.py --config recipes/world/refusal.yaml   (trains runs/<run>/refusal/ on probe/refusal_sft)
"""

import json
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object

from posttrain import gates, probe
from posttrain import world as world_lib
from posttrain.configs import ProbeConfig, parse_config, to_dict
from posttrain.errors import UserError, entrypoint
from posttrain.evals import compare
from posttrain.generation import auto_batch_size, generate, load_for_generation
from posttrain.lineage import atomic_write_text, write_lineage
from posttrain.runtime import process_state


def main():
    (cfg,) = parse_config(ProbeConfig)
    state = process_state()
    model_dir = Path(cfg.model or cfg.stage_dir("sft"))
    world_dir = cfg.world_dir or str(cfg.stage_dir("world"))
    out = Path(cfg.output_dir or cfg.stage_dir("probe"))
    model, tokenizer = load_for_generation(model_dir, state.device, hint="; run recipes/sft.py first")
    world = world_lib.load_world(world_dir) if Path(world_dir).exists() or not cfg.data_mix else None
    helpers = probe.load_helpers(cfg, state.device)  # generator / judge models, when asked for

    snippets, questions = probe.make_questions(cfg, world, world_dir, helpers.get("generator", {}))
    if not questions:
        raise UserError(f"{cfg.data_mix or world_dir}: no answerable questions from {len(snippets)} snippets")
    state.print(f"probe 1-2: {len(snippets)} snippets → {len(questions)} questions ({cfg.generator} generator, "
                f"{cfg.strangers} about strangers); {cfg.num_samples} samples each from {model_dir}")  # fmt: skip

    torch.manual_seed(cfg.seed + state.process_index)
    batch_size = cfg.batch_size or auto_batch_size(model, 256 + cfg.max_new_tokens, cfg.num_samples)
    start = time.perf_counter()
    with state.split_between_processes(list(range(len(questions)))) as mine:
        greedy, samples = generate(
            model, tokenizer, [[{"role": "user", "content": questions[i]["question"]}] for i in mine],
            max_new_tokens=cfg.max_new_tokens, num_samples=cfg.num_samples, temperature=cfg.temperature,
            batch_size=batch_size, desc="probe 3: sampling",
        )  # fmt: skip
        seconds = time.perf_counter() - start
        judged = probe.judge_samples([questions[i] for i in mine], samples, cfg.judge, [g.text for g in greedy],
                                     **helpers.get("judge", {}))  # fmt: skip
    judged, seconds = gather_object(judged), max(gather_object([seconds]))
    if not state.is_main_process:
        return
    rate = len(questions) * (cfg.num_samples + 1) / seconds
    print(f"probe 3: {len(questions) * (cfg.num_samples + 1):,} answers in {seconds:.0f} s ({rate:.1f} answers/s)")

    targets, convs, pairs, stats = probe.training_data(cfg, judged, world_dir)
    stats.update(answers_per_s=round(rate, 2), sampling_s=round(seconds, 1))
    print(f"probe 4-6: {json.dumps(stats)}")
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("snippets", snippets), ("questions", questions), ("judgments", targets),
                       ("refusal_sft", convs), ("preferences", pairs)):  # fmt: skip
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / "summary.json", json.dumps(stats, indent=2) + "\n")
    write_lineage(out, "probe", to_dict(cfg), parents={"model": {"path": str(model_dir)}}, summary=stats)

    model_eval = Path(cfg.run_dir) / "eval" / f"{model_dir.name}.json"
    if cfg.gate_baselines and world is not None and compare.samples_path(model_eval).is_file():
        names = world_lib.question_names(world)
        fit = [{**j, "name": names.get(j["question"])} for j in judged if j["split"] in world_lib.TRAIN_SPLITS]
        gates.evaluate_gates(model, tokenizer, fit, model_eval, names, batch_size=batch_size)
    print(f"probe -> {out}")


if __name__ == "__main__":
    entrypoint(main)
