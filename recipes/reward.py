"""Reward modelling with TRL's RewardTrainer on the probe's preference pairs, into runs/<run>/reward/.

A one-output sequence-classification head on the SFT model (loads with AutoModelForSequenceClassification),
trained with the pairwise loss; held-out prompts' pairs measure its accuracy, per pair type
(runs/<run>/reward/pairwise_accuracy.json).

python recipes/reward.py --config recipes/world/reward.yaml
python recipes/reward.py --config recipes/world/reward.yaml --data_mix data_mixes/hub_preferences_ultrafeedback.yaml
accelerate launch --config_file accelerate_configs/ddp.yaml recipes/reward.py --config recipes/world/reward.yaml
"""

import json

from accelerate.utils import set_seed
from trl import ModelConfig, RewardTrainer

from posttrain import hub, preferences, stages
from posttrain.configs import RewardStageConfig, parse_config
from posttrain.errors import entrypoint
from posttrain.lineage import atomic_write_text
from posttrain.pretrain import set_threads
from posttrain.report import build_report


def main():
    cfg, model_args = parse_config((RewardStageConfig, ModelConfig))
    threads = set_threads(cfg)
    set_seed(cfg.seed)
    resume = stages.resolve_resume(cfg)
    base = stages.base_model_path(cfg, model_args)
    mix, world_dir, data = preferences.load_pairs(cfg)
    model, tokenizer = preferences.load_reward_model(base)

    trainer = preferences.build_trainer(RewardTrainer, cfg, model_args, model, tokenizer, data)
    trainer.accelerator.print(
        f"reward: {base} + a reward head ({model.num_parameters() / 1e6:.2f}M parameters), {len(data['train']):,} "
        f"pairs from {mix.source_file} ({len(data.get('test', [])):,} held out), "
        f"{trainer.accelerator.num_processes} process(es) on {trainer.accelerator.device}, {threads} threads each"
    )
    trainer.train(resume_from_checkpoint=resume)

    acc = {}
    if trainer.accelerator.is_main_process and "test" in data:
        scorer = preferences.RewardScorer(trainer.model, tokenizer, max_length=cfg.max_length or 256)
        acc = preferences.pairwise_accuracy(scorer, data["test"])
        print(
            "held-out pairwise accuracy: " + ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in acc.items())
        )
    more = {f"heldout_accuracy_{k}": v["accuracy"] for k, v in acc.items()}
    out, done = stages.export(trainer, cfg, model_args, base, stages.mix_record(mix, world_dir), more)
    if trainer.accelerator.is_main_process:
        atomic_write_text(out / "pairwise_accuracy.json", json.dumps(acc, indent=2) + "\n")
        build_report(cfg.run_dir)
        hub.finish_stage(cfg, out)
        print(
            f"reward -> {out}: {done['steps']} steps, train loss {done['train_loss']:.4f}, {done['train_runtime_s']:.0f} s"
        )
    trainer.accelerator.wait_for_everyone()
    trainer.end()


if __name__ == "__main__":
    entrypoint(main)
