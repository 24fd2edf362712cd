"""Supervised fine-tuning on conversations with TRL's SFTTrainer, into runs/<run>/sft/ (+ eval/sft.json).

python recipes/sft.py --config recipes/world/sft.yaml
python recipes/sft.py --config recipes/world/sft.yaml --use_peft --lora_r 16       # LoRA; adapter kept in sft/adapter
python recipes/sft.py --config recipes/world/sft.yaml --model_name_or_path runs/smollm2-base   # any HF causal LM
accelerate launch --config_file accelerate_configs/ddp.yaml recipes/sft.py --config recipes/world/sft.yaml \
    --data_mix data_mixes/hub_sft_smoltalk.yaml --model_name_or_path HuggingFaceTB/SmolLM2-360M   # GPUs, Hub data
... --resume_from_checkpoint latest     # continue after a kill
python recipes/sft.py --config recipes/world/refusal.yaml --rounds 2   # refusal: probe → train, twice
"""

from accelerate.utils import set_seed
from trl import ModelConfig

from posttrain import decline, hub, sft, stages
from posttrain.configs import SFTStageConfig, parse_config
from posttrain.errors import entrypoint
from posttrain.pretrain import set_threads
from posttrain.report import build_report
from posttrain.runtime import process_state


def main():
    cfg, model_args = parse_config((SFTStageConfig, ModelConfig))
    threads = set_threads(cfg)
    set_seed(cfg.seed)
    resume = stages.resolve_resume(cfg)
    base = stages.base_model_path(cfg, model_args)
    note = sft.adapt_to_names(cfg)
    if note and process_state().is_main_process:
        print(note)
    for round_ in range(1, cfg.rounds + 1):
        if round_ > 1:  # refusal rounds: re-probe the model just trained, then train it on the new targets
            base, resume = sft.reprobe(cfg, round_), None
        mix, world_dir, data = sft.load_conversations(cfg)
        model, tokenizer, changes = stages.load_model(base, cfg, model_args)
        if cfg.decline_token and decline.add_decline_token(model, tokenizer):
            fit = None if resume else decline.fit_decline_row(model, tokenizer, data["train"], seed=cfg.seed)
            changes.append(f"added the decline token {decline.DECLINE_TOKEN}" + (f", row fitted: {fit}" if fit else ""))

        trainer = sft.build_trainer(cfg, model_args, model, tokenizer, data)
        trainer.accelerator.print(
            f"{cfg.stage}{f' round {round_}/{cfg.rounds}' if cfg.rounds > 1 else ''}: {base} "
            f"({model.num_parameters() / 1e6:.2f}M parameters{'; ' if changes else ''}{'; '.join(changes)}), "
            f"{sft.describe(data['train'])} from {cfg.data_mix}, "
            f"{trainer.accelerator.num_processes} process(es) on {trainer.accelerator.device}, {threads} threads each"
        )
        trainer.train(resume_from_checkpoint=resume)

        fit = sft.operating_point(cfg, trainer.accelerator.unwrap_model(trainer.model), tokenizer)
        more = {"operating_point": fit} if fit else None
        out, done = stages.export(trainer, cfg, model_args, base, stages.mix_record(mix, world_dir), more)
        if cfg.eval_after:
            stages.evaluate_after(cfg, trainer.model, tokenizer, world_dir, trainer.accelerator)
        if trainer.accelerator.is_main_process:
            build_report(cfg.run_dir)
            if round_ == cfg.rounds:
                hub.finish_stage(cfg, out)
            print(f"{cfg.stage} -> {out}: {done['steps']} steps, {done['tokens']:,} tokens, train loss "
                  f"{done['train_loss']:.4f}, {done['train_runtime_s']:.0f} s")  # fmt: skip
        trainer.accelerator.wait_for_everyone()  # no process tears the group down while another still reports
        trainer.end()


if __name__ == "__main__":
    entrypoint(main)
