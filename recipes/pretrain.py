"""Pretrain a Llama model from scratch on a text mix, into runs/<run>/pretrain/.

python recipes/pretrain.py --config recipes/world/pretrain.yaml
accelerate launch --config_file accelerate_configs/ddp.yaml recipes/pretrain.py --config recipes/gpu/pretrain.yaml
... --resume_from_checkpoint latest     # continue after a kill
"""

import json
from pathlib import Path

from accelerate.utils import set_seed
from transformers import AutoTokenizer, GenerationConfig

from posttrain import checkpoint, hub
from posttrain.configs import PretrainConfig, parse_config, to_dict
from posttrain.data import load_mix, mix_hash, read_mix
from posttrain.errors import UserError, entrypoint
from posttrain.lineage import write_lineage
from posttrain.modeling import flops_per_token, init_model, param_counts, preset
from posttrain.packing import blocks, heldout_stream, pack, token_bytes
from posttrain.plots import loss_curves
from posttrain.pretrain import (
    bios_per_known,
    fp32_output_layer,
    grad_accumulation,
    make_accelerator,
    maybe_compile,
    names_scale,
    optimizer_for,
    plan,
    scheduler_for,
    set_threads,
    train,
)
from posttrain.report import build_report
from posttrain.runtime import process_state
from posttrain.tokenizer import tokenizer_hash
from posttrain.world import world_hash


def main():
    (cfg,) = parse_config(PretrainConfig)
    threads = set_threads(cfg)
    tok_dir = Path(cfg.tokenizer_dir or cfg.stage_dir("tokenizer"))
    world_dir = cfg.world_dir or cfg.stage_dir("world")
    out = cfg.output_dir or cfg.stage_dir("pretrain")
    ckpt_root = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else cfg.stage_dir("checkpoints/pretrain")
    if not (tok_dir / "tokenizer.json").is_file():
        raise UserError(f"{tok_dir}: no tokenizer (run recipes/tokenizer.py first)")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    mix = read_mix(cfg.data_mix)
    if mix.kind != "text":
        raise UserError(f"{cfg.data_mix}: pretraining reads a 'text' mix, not '{mix.kind}'")

    config = preset(
        cfg.depth, len(tokenizer), cfg.seq_len, aspect_ratio=cfg.aspect_ratio, hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        intermediate_size=cfg.intermediate_size, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    params, fpt = param_counts(config), flops_per_token(config, cfg.seq_len)
    accelerator = make_accelerator(cfg, grad_accumulation(cfg, process_state().num_processes))
    set_seed(cfg.seed)
    with accelerator.main_process_first():
        data = load_mix(mix, world_dir)
        if "test" not in data and not mix.streaming:
            raise UserError(f"{cfg.data_mix}: pretraining needs a validation split: set test_split_size")
        train_docs, val_docs = (data["train"], data["test"]) if "test" in data else heldout_stream(data["train"])
        train_set, val_set = pack(train_docs, tokenizer, cfg.seq_len), pack(val_docs, tokenizer, cfg.seq_len)
    epoch_tokens = None if mix.streaming else len(train_set) * cfg.seq_len
    budget = bios_per_known(mix, world_dir), names_scale(cfg, mix, world_dir)
    the_plan = plan(cfg, params["total"], accelerator.num_processes, epoch_tokens, *budget)
    accelerator.print(
        f"model: depth {cfg.depth}, width {config.hidden_size}, {params['total'] / 1e6:.2f}M parameters "
        f"({params['non_embedding'] / 1e6:.2f}M non-embedding), {fpt / 1e6:.1f} MFLOP/token; "
        f"data: {blocks(train_set)} train / {blocks(val_set)} val blocks of {cfg.seq_len}; {the_plan.note}; "
        f"{accelerator.num_processes} process(es) ({accelerator.distributed_type.value}) on {accelerator.device}, "
        f"{threads} threads each"
    )

    model = init_model(config, cfg.seed, cfg.attn_implementation)
    if cfg.fp32_lm_head:
        fp32_output_layer(model)
    optimizer = optimizer_for(model, cfg, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    model = maybe_compile(model, cfg)
    scheduler = scheduler_for(optimizer, cfg, the_plan.total_steps)
    if cfg.report_to:
        accelerator.init_trackers("posttrain-pretrain", config=to_dict(cfg))
    result = train(cfg, accelerator, model, optimizer, scheduler, train_set, val_set, token_bytes(tokenizer),
                   the_plan, fpt, ckpt_root)  # fmt: skip

    records = result.pop("records")
    summary = {k: v for k, v in result.items() if k != "peak_flops"}
    summary.update(parameters=params["total"], flops_per_token=fpt, processes=accelerator.num_processes)

    def extra(tmp):
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        parents = {
            "tokenizer": {"path": str(tok_dir), "hash": tokenizer_hash(tok_dir)[:16]},
            "world": {"path": str(world_dir), "hash": world_hash(world_dir)[:16]},
        }
        mix_info = {"path": cfg.data_mix, "hash": mix_hash(mix, world_dir)}
        write_lineage(tmp, "pretrain", to_dict(cfg), parents=parents, data_mix=mix_info, summary=summary)

    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.bos_token_id, tokenizer.eos_token_id],  # end of document or of a chat turn
        pad_token_id=tokenizer.pad_token_id,
    )
    checkpoint.export_hf(accelerator, model, tokenizer, out, generation, extra)
    accelerator.end_training()
    if accelerator.is_main_process:
        loss_curves(records, cfg.stage_dir("plots") / "pretrain_loss.png", "Pretraining")
        build_report(cfg.run_dir)
        hub.finish_stage(cfg, out)
        print(
            f"pretrain -> {out}: val loss {summary['val_loss']:.4f}, {summary['val_bpb']:.4f} bits/byte, "
            f"{summary['tokens_per_s']:,.0f} tokens/s, MFU {summary['mfu']:.1%} ({result['peak_source']})"
        )


if __name__ == "__main__":
    entrypoint(main)
