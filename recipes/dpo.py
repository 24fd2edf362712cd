"""DPO with TRL's DPOTrainer on the probe's preference pairs — the cheap alternative to reward model + PPO —
from the refusal model (its own frozen copy is the reference), into runs/<run>/dpo/ and eval/dpo.json.

python recipes/dpo.py --config recipes/world/dpo.yaml
accelerate launch --config_file accelerate_configs/ddp.yaml recipes/dpo.py --config recipes/world/dpo.yaml
"""

from accelerate.utils import set_seed
from trl import DPOTrainer, ModelConfig

from posttrain import hub, preferences, stages
from posttrain.configs import DPOStageConfig, parse_config
from posttrain.errors import entrypoint
from posttrain.pretrain import set_threads
from posttrain.report import build_report


def main():
    cfg, model_args = parse_config((DPOStageConfig, ModelConfig))
    threads = set_threads(cfg)
    set_seed(cfg.seed)
    resume = stages.resolve_resume(cfg)
    base = stages.base_model_path(cfg, model_args)
    mix, world_dir, data = preferences.load_pairs(cfg)
    model, tokenizer, changes = stages.load_model(base, cfg, model_args)

    trainer = preferences.build_trainer(DPOTrainer, cfg, model_args, model, tokenizer, data)
    trainer.accelerator.print(
        f"dpo: {base} ({model.num_parameters() / 1e6:.2f}M parameters{'; ' if changes else ''}{'; '.join(changes)}), "
        f"{len(data['train']):,} pairs from {mix.source_file}, beta {cfg.beta}, "
        f"{trainer.accelerator.num_processes} process(es) on {trainer.accelerator.device}, {threads} threads each"
    )
    trainer.train(resume_from_checkpoint=resume)

    out, done = stages.export(trainer, cfg, model_args, base, stages.mix_record(mix, world_dir))
    if cfg.eval_after:
        stages.evaluate_after(cfg, trainer.model, tokenizer, world_dir, trainer.accelerator)
    if trainer.accelerator.is_main_process:
        build_report(cfg.run_dir)
        hub.finish_stage(cfg, out)
        print(
            f"dpo -> {out}: {done['steps']} steps, train loss {done['train_loss']:.4f}, {done['train_runtime_s']:.0f} s"
        )
    trainer.accelerator.wait_for_everyone()
    trainer.end()


if __name__ == "__main__":
    entrypoint(main)
