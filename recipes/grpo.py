"""GRPO with TRL's GRPOTrainer on the world's questions, rewarding honesty, into runs/<run>/grpo/.

The policy (the refusal model) samples a group of answers per question; rewards from `posttrain.rewards`:
the factuality reward (+1 right, 0 "I don't know", -t/(1-t) wrong, graded against the world) and a format reward;
and/or a learned reward model (`--reward_model reward`), with the factuality grade logged beside it as the gold
reward (weight 0) and both plotted in plots/grpo_rewards.png. Ends with the factuality eval (eval/grpo.json).

python recipes/grpo.py --config recipes/world/grpo.yaml
python recipes/grpo.py --config recipes/world/grpo_rm.yaml        # RLHF: the learned reward model, gold logged
accelerate launch --config_file accelerate_configs/ddp.yaml recipes/grpo.py --config recipes/world/grpo.yaml
"""

import json

from accelerate.utils import set_seed
from trl import ModelConfig

from posttrain import hub, rl, stages
from posttrain.configs import GRPOStageConfig, parse_config
from posttrain.errors import entrypoint
from posttrain.lineage import atomic_write_text
from posttrain.pretrain import set_threads
from posttrain.report import build_report


def main():
    cfg, model_args = parse_config((GRPOStageConfig, ModelConfig))
    threads = set_threads(cfg)
    set_seed(cfg.seed)
    resume = stages.resolve_resume(cfg)
    base = stages.base_model_path(cfg, model_args)
    world_dir = cfg.world_dir or f"{cfg.run_dir}/world"
    rows = rl.question_rows(cfg.run_dir, world_dir, cfg.prompts, cfg.prompt_splits)
    dataset = rl.prompt_dataset(rows, cfg.max_prompts, cfg.seed, cfg.answerable_share)
    model, tokenizer, changes = stages.load_model(base, cfg, model_args)
    funcs, names, reward_classes = rl.reward_functions(cfg)

    trainer = rl.build_grpo_trainer(cfg, model, tokenizer, dataset, funcs, reward_classes)
    trainer.accelerator.print(
        f"grpo: {base} ({model.num_parameters() / 1e6:.2f}M parameters{'; ' if changes else ''}{'; '.join(changes)}), "
        f"{len(dataset):,} prompts ({cfg.prompts}), rewards {', '.join(names)} (weights {trainer.reward_weights.tolist()}), "
        f"{cfg.num_generations} samples per prompt, {trainer.accelerator.num_processes} process(es) on "
        f"{trainer.accelerator.device}, {threads} threads each"
    )
    trainer.train(resume_from_checkpoint=resume)

    steps, rewards = rl.reward_history(trainer.state.log_history, names)
    more = {f"{n}_first_last": [v[0], v[-1]] for n, v in rewards.items() if v}
    out, done = stages.export(trainer, cfg, model_args, base, rl.prompts_record(cfg, dataset), more)
    if trainer.accelerator.is_main_process:
        plot = rl.plot_rewards(steps, rewards, cfg.run_dir, cfg.stage)
        atomic_write_text(out / "rewards.json", json.dumps([steps, rewards]) + "\n")
        print(f"grpo -> {out}: {done['steps']} steps, {done['train_runtime_s']:.0f} s; rewards plotted in {plot}")
    if cfg.eval_after:
        stages.evaluate_after(cfg, trainer.model, tokenizer, world_dir, trainer.accelerator)
    if trainer.accelerator.is_main_process:
        build_report(cfg.run_dir)
        hub.finish_stage(cfg, out)
    trainer.accelerator.wait_for_everyone()
    trainer.end()


if __name__ == "__main__":
    entrypoint(main)
