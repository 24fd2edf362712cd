"""Self-probing (Llama 3 §4.3.6): ask the SFT model about its own pretraining data, judge its sampled answers,
and write refusal SFT conversations and preference pairs into runs/<run>/probe/.

python recipes/probe.py --config recipes/world/probe.yaml
accelerate launch recipes/probe.py ...     # questions split over processes
Then: python recipes/sft.py --config recipes/world/refusal.yaml   (trains runs/<run>/refusal/ on probe/refusal_sft)
"""

import json
import random
from pathlib import Path

import torch
from accelerate.utils import gather_object

from posttrain import probe
from posttrain import world as world_lib
from posttrain.configs import ProbeConfig, parse_config, to_dict
from posttrain.data import load_mix
from posttrain.errors import UserError, entrypoint
from posttrain.generation import auto_batch_size, generate, load_for_generation
from posttrain.lineage import atomic_write_text, write_lineage
from posttrain.runtime import process_state


def main():
    (cfg,) = parse_config(ProbeConfig)
    state = process_state()
    model_dir = Path(cfg.model or cfg.stage_dir("sft"))
    world_dir = cfg.world_dir or str(cfg.stage_dir("world"))
    out = Path(cfg.output_dir or cfg.stage_dir("probe"))
    if cfg.generator not in probe.QUESTION_GENERATORS:
        raise UserError(f"generator must be one of {', '.join(probe.QUESTION_GENERATORS)}, got '{cfg.generator}'")
    model, tokenizer = load_for_generation(model_dir, state.device, hint="; run recipes/sft.py first")
    world = world_lib.load_world(world_dir)
    snippets = probe.world_snippets(world, cfg.splits, cfg.snippets_per_person, cfg.seed)
    questions = probe.QUESTION_GENERATORS[cfg.generator](snippets, world, seed=cfg.seed)
    if not questions:
        raise UserError(f"{world_dir}: no answerable questions about splits {cfg.splits}")
    state.print(f"probe: {len(snippets)} snippets → {len(questions)} questions about {cfg.splits}; "
                f"{cfg.num_samples} samples each from {model_dir}")  # fmt: skip

    torch.manual_seed(cfg.seed + state.process_index)
    batch_size = cfg.batch_size or auto_batch_size(model, 256 + cfg.max_new_tokens, cfg.num_samples)
    with state.split_between_processes(list(range(len(questions)))) as mine:
        _, samples = generate(
            model, tokenizer, [[{"role": "user", "content": questions[i]["question"]}] for i in mine],
            max_new_tokens=cfg.max_new_tokens, num_samples=cfg.num_samples, temperature=cfg.temperature,
            batch_size=batch_size, desc="probe samples", greedy_pass=False,
        )  # fmt: skip
        judged = probe.judge_samples([questions[i] for i in mine], samples, cfg.judge)
    judged = gather_object(judged)
    if not state.is_main_process:
        return

    rule = probe.LabelRule(cfg.known_min, cfg.unknown_max, cfg.wrong_min)
    targets = probe.training_targets(judged, rule, cfg.mixed, cfg.seed)
    convs = probe.refusal_conversations(targets)
    n_extra = round(cfg.sft_share * len(convs))
    if n_extra:
        ordinary = load_mix(cfg.sft_mix, world_dir)["train"]
        picked = random.Random(cfg.seed).sample(range(len(ordinary)), min(n_extra, len(ordinary)))
        convs += [{"messages": ordinary[i]["messages"]} for i in picked]
        random.Random(cfg.seed).shuffle(convs)
    pairs = probe.preference_pairs(targets)
    stats = {
        **probe.summary(targets),
        "refusal_sft": len(convs),
        "ordinary_sft_added": n_extra,
        "preferences": len(pairs),
    }

    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("questions", questions),
        ("judgments", targets),
        ("refusal_sft", convs),
        ("preferences", pairs),
    ):
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / "summary.json", json.dumps(stats, indent=2) + "\n")
    write_lineage(out, "probe", to_dict(cfg), parents={"model": {"path": str(model_dir)}}, summary=stats)
    print(f"probe -> {out}: {json.dumps(stats)}")


if __name__ == "__main__":
    entrypoint(main)
