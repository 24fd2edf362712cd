"""Validation loss (nats/token) and bits per byte of any checkpoint on a text mix.

    python evals/perplexity.py --model runs/speedrun/pretrain --run_dir runs/speedrun [--data_mix data_mixes/x.yaml]

Bits per byte are comparable across tokenizers (special tokens excluded); the same computation as pretraining's
validation (`posttrain.pretrain.evaluate`).
"""

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.configs import PerplexityConfig, parse_config
from posttrain.data import load_mix, read_mix
from posttrain.errors import UserError, entrypoint
from posttrain.lineage import atomic_write_text
from posttrain.packing import pack, token_bytes
from posttrain.pretrain import evaluate
from posttrain.runtime import use_cpu


def main():
    (cfg,) = parse_config(PerplexityConfig)
    if not (Path(cfg.model) / "config.json").is_file():
        raise UserError(f"{cfg.model}: not a model directory (no config.json)")
    mix = read_mix(cfg.data_mix)
    if mix.kind != "text":
        raise UserError(f"{cfg.data_mix}: perplexity reads a 'text' mix, not '{mix.kind}'")
    accelerator = Accelerator(cpu=use_cpu())
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).to(accelerator.device)
    data = load_mix(mix, cfg.world_dir or cfg.stage_dir("world"))
    docs = data[cfg.split] if cfg.split in data else data["train"]
    blocks = pack(docs, tokenizer, cfg.seq_len)
    if len(blocks) == 0:
        raise UserError(f"{cfg.data_mix}: too little text for one block of {cfg.seq_len} tokens")
    result = evaluate(model, blocks, cfg, accelerator, token_bytes(tokenizer))
    result.update(model=cfg.model, data_mix=cfg.data_mix, split=cfg.split if cfg.split in data else "train")
    if cfg.output and accelerator.is_main_process:
        atomic_write_text(cfg.output, json.dumps(result, indent=2) + "\n")
    accelerator.print(f"{cfg.model} on {cfg.data_mix} [{result['split']}]: loss {result['val_loss']:.4f} nats/token, "
                      f"{result['val_bpb']:.4f} bits/byte")  # fmt: skip


if __name__ == "__main__":
    entrypoint(main)
