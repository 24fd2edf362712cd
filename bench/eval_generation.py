"""Evaluation generation: batched (left padding, KV cache, one `generate` per batch) against one question at a time.

Same model (a depth-4 world model, random weights so every answer runs to max_new_tokens on both sides), same
questions through the chat template, greedy; rounds alternate because this machine is noisy; best of each side.
Last line: one JSON object (CONTRACTS §6).

    python bench/eval_generation.py [--questions 128] [--batch 64] [--max_new_tokens 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import add_common_args, random_world_model  # bench/_common.py (scripts run from bench/)

from posttrain.generation import generate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    add_common_args(p, max_new_tokens=16)
    args = p.parse_args()
    model, tok, prompts = random_world_model(args)
    kw = {"max_new_tokens": args.max_new_tokens, "desc": "bench"}
    generate(model, tok, prompts[:4], batch_size=4, **kw)  # warm-up
    batched, single = [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        out_b, _ = generate(model, tok, prompts, batch_size=args.batch, **kw)
        batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out_s, _ = generate(model, tok, prompts, batch_size=1, **kw)
        single.append(time.perf_counter() - t0)
        same = sum(a.text == b.text for a, b in zip(out_b, out_s)) / len(prompts)
        print(f"round {r + 1}: batched {batched[-1]:.2f} s, one at a time {single[-1]:.2f} s, same answers {same:.0%}")
    n = len(prompts)
    result = {
        "batched_q_s": round(n / min(batched), 1),
        "single_q_s": round(n / min(single), 1),
        "ratio": round(min(single) / min(batched), 1),
        "same_answers": round(same, 3),
        "shape": f"{n} questions, batch {args.batch}, {args.max_new_tokens} new tokens, depth 4, {args.threads} threads",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
