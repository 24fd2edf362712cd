"""Pretraining throughput: recipes/pretrain.py's loop against a minimal hand-written PyTorch loop.

Same model (the nanochat peer's shape by default: 4 layers × 256 wide, seq 512, batch 8), same packed world
data, same threads, in fp32 and in bf16 (autocast with the output layer in fp32, fp32 master weights: what `--mixed_precision auto`
picks on a device with native bf16); rounds alternate (raw fp32, ours fp32, raw bf16, ours bf16, ...) because this machine is
noisy, and each side's best round counts. Steady state only: the first `--warmup` steps of each run are not timed.
MFU is against the measured fp32 matmul peak (bf16's `mfu_bf16` against the measured bf16 peak). On a device
without native bf16 only fp32 is timed and `bf16_over_fp32` is 1.0. Last line: one JSON object (CONTRACTS §6).

Then the SmolLM2 SFT step (the packaged SmolLM2-135M-Instruct, converted once; TRL's SFTTrainer, one optimizer
step on a batch of `--sft_batch` conversations of `--sft_len` tokens, the LM head as the SmolLM2 recipes run it on a
CPU — in bf16 under bf16; `--trl_head`: TRL's fused head as it is, fp32 on a CPU) with `bf16` off and on,
alternating; the losses of both runs' first steps are printed side by side (same data, same seed). `--no_smollm2`
skips it.

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
    if args.precision == "bf16":  # as our loop does by default (fp32_lm_head)
        from posttrain.pretrain import fp32_output_layer

        fp32_output_layer(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model.train()
    times = []
    for step in range(args.steps):
        i = (step * args.batch) % (len(blocks) - args.batch)
        x = blocks[i : i + args.batch]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
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
        "--data_mix", str(REPO / "data_mixes/world_pretrain.yaml"), "--mixed_precision", args.precision,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    records = [json.loads(x) for x in (ckpt / "metrics.jsonl").read_text().splitlines()]
    timed = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first window has the warm-up
    return sum(timed) / len(timed)


def sft_steps(args) -> None:
    """(c) SmolLM2 SFT steps with TRL's SFTTrainer in one precision: prints mean step seconds (after the first
    two) and the logged losses as JSON."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    words = "the capital of that country is a city on a river with a long history of trade".split()
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: " + " ".join(words[: 3 + i % 10])},
                          {"role": "assistant", "content": " ".join((words * 20)[i % 7 : i % 7 + args.sft_len])}]}
            for i in range(args.sft_batch * args.sft_steps)]  # fmt: skip
    times, losses = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(round(logs["loss"], 4))

    cfg = SFTConfig(output_dir=str(Path(args.run_dir) / f"sft_{args.precision}"), max_steps=args.sft_steps,
                    per_device_train_batch_size=args.sft_batch, max_length=args.sft_len, logging_steps=1,
                    bf16=args.precision == "bf16", use_cpu=True, save_strategy="no", report_to="none",
                    learning_rate=1e-5, seed=0, dataloader_num_workers=0, gradient_checkpointing=False,
                    shuffle_dataset=False)  # fmt: skip
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Clock()])  # fmt: skip
    if not args.trl_head:  # as posttrain.sft.build_trainer does on a CPU
        from posttrain.sft import unfused_head_on_cpu

        unfused_head_on_cpu(trainer.model, fp32=False)  # as recipes/smollm2/*.yaml set it (fp32_lm_head: false)
    trainer.train()
    print(json.dumps({"step_s": sum(times[2:]) / len(times[2:]), "losses": losses}))


def smollm2_sft(args, tmp: str) -> dict:
    """Both precisions of `sft_steps`, alternating rounds; the best round of each counts."""
    model_dir = Path(tmp) / "smollm2"
    subprocess.run([sys.executable, "-m", "posttrain.smollm2", "--output_dir", str(model_dir)], check=True,
                   cwd=REPO, capture_output=True)  # fmt: skip
    best, losses = {}, {}
    for r in range(args.rounds):
        for prec in ("no", "bf16"):
            cmd = [sys.executable, __file__, "--sft", "--run_dir", tmp, "--model_dir", str(model_dir),
                   f"--precision={prec}"] + [f"--{k}={getattr(args, k)}" for k in
                                             ("threads", "sft_steps", "sft_batch", "sft_len")]  # fmt: skip
            cmd += ["--trl_head"] if args.trl_head else []
            out = json.loads(subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
                             .stdout.strip().splitlines()[-1])  # fmt: skip
            best[prec] = min(best.get(prec, float("inf")), out["step_s"])
            losses[prec] = out["losses"]
            print(f"round {r + 1} SmolLM2 SFT {'fp32' if prec == 'no' else prec}: {out['step_s']:.2f} s/step, "
                  f"losses {out['losses']}", flush=True)  # fmt: skip
    return {
        "smollm2_sft_step_s_fp32": round(best["no"], 3),
        "smollm2_sft_step_s_bf16": round(best["bf16"], 3),
        "smollm2_sft_bf16_speedup": round(best["no"] / best["bf16"], 3),
        "smollm2_sft_losses_fp32": losses["no"],
        "smollm2_sft_losses_bf16": losses["bf16"],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    p.add_argument("--no_smollm2", action="store_true", help="Skip the SmolLM2 SFT step timing.")
    p.add_argument("--sft_steps", type=int, default=6)
    p.add_argument("--sft_batch", type=int, default=8)
    p.add_argument("--sft_len", type=int, default=128)
    p.add_argument("--trl_head", action="store_true",
                   help="Time the SmolLM2 step with TRL's fused LM head as it is (our SFT stage answers it from the "
                        "logits on a CPU: posttrain.sft.unfused_head_on_cpu).")  # fmt: skip
    p.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sft", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run_dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw:
        return raw_loop(args)
    if args.sft:
        return sft_steps(args)

    import torch

    from posttrain.modeling import flops_per_token, preset
    from posttrain.runtime import native_bf16
    from posttrain.throughput import measured_cpu_peak

    precisions = ["no", "bf16"] if native_bf16("cpu") else ["no"]
    runs = {(side, prec): [] for side in ("raw", "ours") for prec in precisions}
    with tempfile.TemporaryDirectory() as tmp:
        args.run_dir = tmp
        make_world_run(tmp)
        from transformers import AutoTokenizer

        vocab = len(AutoTokenizer.from_pretrained(Path(tmp) / "tokenizer"))
        for r in range(args.rounds):
            for prec in precisions:
                args.precision = prec
                raw_cmd = [sys.executable, __file__, "--raw", "--run_dir", tmp, f"--precision={prec}"] + [
                    f"--{k}={getattr(args, k)}" for k in ("steps", "warmup", "depth", "seq_len", "batch", "threads")
                ]
                out = subprocess.run(raw_cmd, check=True, cwd=REPO, capture_output=True, text=True).stdout
                runs["raw", prec].append(json.loads(out.strip().splitlines()[-1])["tok_s"])
                runs["ours", prec].append(ours(args))
                name = "fp32" if prec == "no" else prec
                print(f"round {r + 1} {name}: raw {runs['raw', prec][-1]:,.0f} tok/s, "
                      f"ours {runs['ours', prec][-1]:,.0f} tok/s", flush=True)  # fmt: skip
        sft = {} if args.no_smollm2 or "bf16" not in precisions else smollm2_sft(args, tmp)
    torch.set_num_threads(args.threads)
    peak = measured_cpu_peak()
    fpt = flops_per_token(preset(args.depth, vocab, args.seq_len), args.seq_len)
    best = {key: max(v) for key, v in runs.items()}
    raw, mine = best["raw", "no"], best["ours", "no"]
    result = {
        "ours_tok_s": round(mine),
        "raw_tok_s": round(raw),
        "ratio": round(mine / raw, 3),
        "mfu": round(fpt * mine / peak, 3),
        "raw_mfu": round(fpt * raw / peak, 3),
        "peak_gflops": round(peak / 1e9, 1),
        "flops_per_token": round(fpt),
        "bf16_over_fp32": 1.0,
        "shape": f"depth {args.depth}, seq {args.seq_len}, batch {args.batch}, {args.threads} threads",
    }
    if "bf16" in precisions:
        peak16 = measured_cpu_peak(dtype=torch.bfloat16)
        ours16, raw16 = best["ours", "bf16"], best["raw", "bf16"]
        result.update({
            "ours_bf16_tok_s": round(ours16),
            "raw_bf16_tok_s": round(raw16),
            "ratio_bf16": round(ours16 / raw16, 3),
            "bf16_over_fp32": round(ours16 / mine, 3),
            "mfu_bf16": round(fpt * ours16 / peak16, 3),
            "peak_bf16_gflops": round(peak16 / 1e9, 1),
        })  # fmt: skip
    print(json.dumps({**result, **sft}))


if __name__ == "__main__":
    main()
