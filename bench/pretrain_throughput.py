"""Pretraining throughput: recipes/pretrain.py's loop against a minimal hand-written PyTorch loop.

Same model (the nanochat peer's shape by default: 4 layers × 256 wide, seq 512, batch 8, fp32), same packed world
data, same threads; rounds alternate (raw, ours, raw, ours, ...) because this machine is noisy, and each side's
best round counts. Steady state only: the first `--warmup` steps of each run are not timed. MFU is against the
measured fp32 matmul peak. Last line: one JSON object (CONTRACTS §6).

    python bench/pretrain_throughput.py [--steps 30] [--rounds 2] [--depth 4] [--seq_len 512] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, make_world_run  # bench/_common.py (scripts run from bench/)


def raw_loop(args) -> None:
    """(a) The baseline: forward, backward, AdamW step. Prints tokens/s of the timed steps as JSON."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from posttrain.modeling import init_model, preset
    from posttrain.packing import pack

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(Path(args.run_dir) / "tokenizer")
    docs = load_from_disk(str(Path(args.run_dir) / "world"))["documents"]
    blocks = pack(docs, tok, args.seq_len).with_format("torch")["input_ids"]
    model = init_model(preset(args.depth, len(tok), args.seq_len), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model.train()
    times = []
    for step in range(args.steps):
        i = (step * args.batch) % (len(blocks) - args.batch)
        x = blocks[i : i + args.batch]
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t0)
    timed = times[args.warmup :]
    print(json.dumps({"tok_s": len(timed) * args.batch * args.seq_len / sum(timed)}))


def ours(args) -> float:
    """(b) recipes/pretrain.py, same model and batch (no accumulation), its own logged steady-state tokens/s."""
    ckpt = Path(args.run_dir) / "bench_ckpt"
    cmd = [
        sys.executable, str(REPO / "recipes" / "pretrain.py"), "--config", str(REPO / "recipes/world/pretrain.yaml"),
        "--run_dir", args.run_dir, "--output_dir", str(Path(args.run_dir) / "bench_out"), "--checkpoint_dir", str(ckpt),
        "--depth", str(args.depth), "--seq_len", str(args.seq_len), "--per_device_batch_size", str(args.batch),
        "--global_batch_tokens", str(args.batch * args.seq_len), "--max_steps", str(args.steps),
        "--log_every", str(args.warmup), "--eval_every", "0", "--save_every", "0", "--num_threads", str(args.threads),
        "--data_mix", str(REPO / "data_mixes/world_pretrain.yaml"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    records = [json.loads(x) for x in (ckpt / "metrics.jsonl").read_text().splitlines()]
    timed = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first window has the warm-up
    return sum(timed) / len(timed)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run_dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw:
        return raw_loop(args)

    import torch

    from posttrain.modeling import flops_per_token, preset
    from posttrain.throughput import measured_cpu_peak

    with tempfile.TemporaryDirectory() as tmp:
        args.run_dir = tmp
        make_world_run(tmp)
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(Path(tmp) / "tokenizer"))
        raw_runs, our_runs = [], []
        for r in range(args.rounds):
            raw_cmd = [sys.executable, __file__, "--raw", "--run_dir", tmp] + [
                f"--{k}={getattr(args, k)}" for k in ("steps", "warmup", "depth", "seq_len", "batch", "threads")
            ]
            out = subprocess.run(raw_cmd, check=True, cwd=REPO, capture_output=True, text=True).stdout
            raw_runs.append(json.loads(out.strip().splitlines()[-1])["tok_s"])
            our_runs.append(ours(args))
            print(f"round {r + 1}: raw {raw_runs[-1]:,.0f} tok/s, ours {our_runs[-1]:,.0f} tok/s", flush=True)
    torch.set_num_threads(args.threads)
    peak = measured_cpu_peak()
    fpt = flops_per_token(preset(args.depth, vocab, args.seq_len), args.seq_len)
    raw, mine = max(raw_runs), max(our_runs)
    result = {
        "ours_tok_s": round(mine),
        "raw_tok_s": round(raw),
        "ratio": round(mine / raw, 3),
        "mfu": round(fpt * mine / peak, 3),
        "raw_mfu": round(fpt * raw / peak, 3),
        "peak_gflops": round(peak / 1e9, 1),
        "flops_per_token": round(fpt),
        "shape": f"depth {args.depth}, seq {args.seq_len}, batch {args.batch}, fp32, {args.threads} threads",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
