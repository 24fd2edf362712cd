"""PPO (posttrain.ppo) against the learned reward model, logging the gold reward beside it, into runs/<run>/ppo/.

Policy and frozen reference: the refusal model; reward: runs/<run>/reward (recipes/reward.py); value model
initialised from the reward model. plots/ppo_rewards.png shows the proxy (reward model) and the gold reward
(the factuality grade against the world) per step: proxy up while gold falls is the policy gaming the reward model.

python recipes/ppo.py --config recipes/world/ppo.yaml
accelerate launch --config_file accelerate_configs/ddp.yaml recipes/ppo.py --config recipes/world/ppo.yaml
... --resume_from_checkpoint latest     # continue after a kill
"""

from accelerate.utils import set_seed

from posttrain import hub, ppo, rl, stages
from posttrain.configs import PPOStageConfig, parse_config
from posttrain.errors import entrypoint
from posttrain.plots import reward_curves
from posttrain.preferences import RewardScorer, load_reward_model
from posttrain.pretrain import set_threads
from posttrain.report import build_report


def main():
    (cfg,) = parse_config(PPOStageConfig)
    threads = set_threads(cfg)
    set_seed(cfg.seed)
    accelerator = ppo.make_accelerator(cfg.mixed_precision)
    world_dir = cfg.world_dir or f"{cfg.run_dir}/world"
    dataset = rl.prompt_dataset(rl.question_rows(cfg.run_dir, world_dir, cfg.prompts, cfg.prompt_splits),
                                cfg.max_prompts, cfg.seed, cfg.answerable_share)  # fmt: skip
    policy_path = rl.stage_dir(cfg.run_dir, cfg.model_name_or_path or cfg.parent)
    reward_path = rl.stage_dir(cfg.run_dir, cfg.reward_model)
    policy, tokenizer = ppo.load_policy(policy_path)
    ref_policy, _ = ppo.load_policy(policy_path)
    reward_model, reward_tokenizer = load_reward_model(reward_path)
    value_model, _ = load_reward_model(rl.stage_dir(cfg.run_dir, cfg.value_model or cfg.reward_model))
    scorer = RewardScorer(reward_model.to(accelerator.device), reward_tokenizer)

    trainer = ppo.PPOTrainer(cfg, accelerator, policy, ref_policy, value_model, tokenizer, list(dataset),
                             reward_fn=lambda prompts, answers, rows: scorer(prompts, answers),
                             gold_fn=ppo.gold_reward_fn(cfg.confidence_target))  # fmt: skip
    trainer.resume(cfg.resume_from_checkpoint)
    accelerator.print(
        f"ppo: policy {policy_path} ({policy.num_parameters() / 1e6:.2f}M parameters), reward {reward_path}, "
        f"{len(dataset):,} prompts ({cfg.prompts}), {cfg.max_steps} steps of {cfg.batch_size} prompts, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}, {threads} threads each"
    )
    history = trainer.train()

    out = ppo.export(trainer, cfg, policy_path, reward_path, rl.prompts_record(cfg, dataset))
    if accelerator.is_main_process:
        plot = reward_curves([h["step"] for h in history],
                             {"gold (factuality)": [h["gold"] for h in history],
                              "proxy (reward model)": [h["score"] for h in history]},
                             f"{cfg.run_dir}/plots/{cfg.stage}_rewards.png",
                             f"{cfg.stage}: gold vs proxy reward per step")  # fmt: skip
        last = history[-1] if history else {}
        print(f"ppo -> {out}: {trainer.step} steps; last proxy {last.get('score', float('nan')):.3f}, gold "
              f"{last.get('gold') or float('nan'):.3f}, kl {last.get('kl', float('nan')):.3f}; plot {plot}")  # fmt: skip
    if cfg.eval_after:
        stages.evaluate_after(cfg, trainer._unwrapped().policy, tokenizer, world_dir, trainer.accelerator)
    if accelerator.is_main_process:
        build_report(cfg.run_dir)
        hub.finish_stage(cfg, out)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    entrypoint(main)
