"""Probe sampling: K sampled answers per question, batched (many prompts × K sequences per `generate`, left
padding, KV cache) against one answer at a time (one prompt, one sample per `generate` call).

Same model (a depth-4 world model, random weights so every answer runs to max_new_tokens on both sides), same
questions through the chat template, temperature 1; rounds alternate because this machine is noisy; best of each
side. Last line: one JSON object (CONTRACTS §6) with answers per second and the ratio (issue 7: ≥ 10× on CPU).

    python bench/probe_throughput.py [--questions 128] [--samples 8] [--batch 64] [--single_questions 8]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import add_common_args, random_world_model  # bench/_common.py (scripts run from bench/)

from posttrain.generation import generate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--batch", type=int, default=64, help="prompts per batch (each carries --samples sequences)")
    p.add_argument("--single_questions", type=int, default=8, help="questions answered one sample at a time")
    add_common_args(p, max_new_tokens=24)
    args = p.parse_args()
    model, tok, prompts = random_world_model(args)
    kw = {"max_new_tokens": args.max_new_tokens, "greedy_pass": False, "desc": "bench"}
    generate(model, tok, prompts[:4], num_samples=2, batch_size=4, **kw)  # warm-up
    batched, single = [], []
    n_single = args.single_questions * args.samples
    for r in range(args.rounds):
        torch.manual_seed(r)
        t0 = time.perf_counter()
        _, out = generate(model, tok, prompts, num_samples=args.samples, batch_size=args.batch, **kw)
        batched.append(len(prompts) * args.samples / (time.perf_counter() - t0))
        assert all(len(s) == args.samples for s in out)
        t0 = time.perf_counter()
        for prompt in prompts[: args.single_questions]:
            for _ in range(args.samples):
                generate(model, tok, [prompt], num_samples=1, batch_size=1, **kw)
        single.append(n_single / (time.perf_counter() - t0))
        print(f"round {r + 1}: batched {batched[-1]:.1f} answers/s, one at a time {single[-1]:.1f} answers/s")
    result = {
        "batched_answers_s": round(max(batched), 1),
        "single_answers_s": round(max(single), 1),
        "ratio": round(max(batched) / max(single), 1),
        "shape": f"{len(prompts)} questions x {args.samples} samples, batch {args.batch} prompts, "
        f"{args.max_new_tokens} new tokens, depth 4, {args.threads} threads",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
