"""One way to generate: batched, left-padded, KV-cached, stopping at end-of-turn (or a stop string).

Evaluation, probe sampling and RL rollouts all call `generate`, so a speed-up or a fix lands everywhere at once.
Prompts are either chat conversations (rendered with the tokenizer's chat template) or plain strings (few-shot
prompts for base models).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from posttrain.decline import decline_id, step_scores
from posttrain.runtime import autocast, resolve_precision


@dataclass
class Generation:
    text: str
    mean_token_prob: float | None = None  # greedy only: mean probability of the generated tokens
    decline_prob: float | None = None  # models with a decline token: its largest probability along the answer
    decline_margin: float | None = None  # ... and its largest logit margin over the best other token (raw logits)


def render(tokenizer, prompt) -> str:
    """A chat conversation (list of messages) through the chat template; a string as it is."""
    if isinstance(prompt, str):
        return prompt
    if not tokenizer.chat_template:
        from posttrain.errors import UserError

        raise UserError(f"{tokenizer.name_or_path}: the tokenizer has no chat template, so a conversation cannot be "
                        "rendered (a base model: ask it with --prompt fewshot, or SFT it first)")  # fmt: skip
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    for tok in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")):
        if isinstance(tok, int) and tok >= 0 and tok != tokenizer.unk_token_id and tok not in ids:
            ids.append(tok)
    return ids


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list,
    *,
    max_new_tokens: int = 32,
    num_samples: int = 0,
    temperature: float = 1.0,
    batch_size: int = 64,
    stop_strings: list[str] | None = None,
    desc: str = "generating",
    greedy_pass: bool = True,
    precision: str = "auto",
    backend: str = "hf",
    seed: int = 0,
) -> tuple[list[Generation | None], list[list[str]]]:
    """Greedy answer (with its mean token probability; skipped when not `greedy_pass`) and `num_samples` sampled
    answers for every prompt.

    Prompts are sorted by length so batches carry little padding; results come back in the input order. An fp32
    model generates under bf16 autocast where the device computes bf16 natively (`precision` auto; `no` keeps fp32).
    `backend` vllm: the same answers from a vLLM engine over the model's saved directory (GPU; `pip install
    posttrain[vllm]`), for the probe's and the evals' sampling at scale; `seed` seeds its sampling.
    """
    if backend == "vllm":
        return _generate_vllm(model, tokenizer, prompts, max_new_tokens, num_samples, temperature, stop_strings,
                              greedy_pass, seed)  # fmt: skip
    if model.dtype != torch.float32:
        precision = "no"  # a model loaded in bf16/fp16 already computes in it
    with autocast(resolve_precision(precision, model.device), model.device):
        return _generate(model, tokenizer, prompts, max_new_tokens, num_samples, temperature, batch_size,
                         stop_strings, desc, greedy_pass)  # fmt: skip


def _generate(model, tokenizer, prompts, max_new_tokens, num_samples, temperature, batch_size, stop_strings, desc,
              greedy_pass):  # fmt: skip
    texts = [render(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    greedy: list[Generation | None] = [None] * len(texts)
    samples: list[list[str]] = [[] for _ in texts]
    stops = eos_ids(model, tokenizer)
    tid = decline_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    tokenizer.padding_side = "left"
    common = {"max_new_tokens": max_new_tokens, "eos_token_id": stops, "pad_token_id": pad}
    if stop_strings:
        common.update(stop_strings=stop_strings, tokenizer=tokenizer)
    model.eval()
    bar = tqdm(total=len(texts), desc=desc, unit="q")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        width = enc["input_ids"].shape[1]
        if greedy_pass:
            out = model.generate(**enc, do_sample=False, output_scores=True, return_dict_in_generate=True,
                                 output_logits=tid is not None, **common)  # fmt: skip
            scores = [s.float() for s in out.scores]  # bf16 logits under autocast: normalise in fp32
            probs = model.compute_transition_scores(out.sequences, scores, normalize_logits=True).exp()
            new = out.sequences[:, width:]
            is_stop = torch.isin(new, torch.tensor(stops, device=new.device)).long()
            steps_live = (is_stop.cumsum(1) - is_stop) == 0  # every step up to and including the stop
            dprob, dmargin = step_scores(out.logits, tid, steps_live) if tid is not None else ([None] * len(idx),) * 2
            for row, i in enumerate(idx):
                live = ~torch.isin(new[row], torch.tensor(stops + [pad], device=new.device))
                p = probs[row][live[: probs.shape[1]]]
                greedy[i] = Generation(
                    tokenizer.decode(new[row], skip_special_tokens=True),
                    p.mean().item() if p.numel() else None,
                    dprob[row],
                    dmargin[row],
                )
        if num_samples:
            expanded, cache = shared_prefill(model, enc, num_samples)
            out = model.generate(**expanded, cache=cache, do_sample=True, temperature=temperature, top_k=0, **common)
            dec = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            for row, i in enumerate(idx):
                samples[i] = dec[row * num_samples : (row + 1) * num_samples]
        bar.update(len(idx))
    bar.close()
    return greedy, samples


@functools.lru_cache(maxsize=2)
def _vllm_engine(path: str, seed: int):
    """One engine per model directory and seed: the greedy pass and the samples share it. Its own GPU memory
    share (half), so that the transformers model the caller keeps for scoring fits beside it."""
    from vllm import LLM

    return LLM(model=path, seed=seed, gpu_memory_utilization=0.5)


def _generate_vllm(model, tokenizer, prompts, max_new_tokens, num_samples, temperature, stop_strings, greedy_pass,
                   seed):  # fmt: skip
    """`generate` through vLLM: the model's directory (`name_or_path`, so a model trained in memory must be saved
    first), rendered prompts in, the same (greedy, samples) out. The decline token's per-step scores need the full
    logits, which vLLM does not return: they stay None (the hf backend computes them)."""
    from pathlib import Path

    from accelerate import PartialState
    from vllm import SamplingParams

    from posttrain.errors import UserError

    if PartialState().num_processes > 1:
        raise UserError("generation_backend vllm runs in one process (vLLM spreads over the GPUs itself): "
                        "run the script with python, not accelerate launch")  # fmt: skip
    path = str(model.name_or_path)
    if not (Path(path) / "config.json").is_file():
        raise UserError(f"generation_backend vllm: {path} is not a saved model directory (save the model first)")
    llm = _vllm_engine(path, seed)
    texts = [render(tokenizer, p) for p in prompts]
    stops = eos_ids(model, tokenizer)
    common = {"max_tokens": max_new_tokens, "stop": stop_strings, "stop_token_ids": stops}
    greedy: list[Generation | None] = [None] * len(texts)
    if greedy_pass:
        outs = llm.generate(texts, SamplingParams(temperature=0.0, logprobs=0, **common), use_tqdm=True)
        for i, out in enumerate(outs):
            done = out.outputs[0]
            lps = [step[tok].logprob for tok, step in zip(done.token_ids, done.logprobs or []) if tok not in stops]
            mean = sum(math.exp(x) for x in lps) / len(lps) if lps else None
            greedy[i] = Generation(done.text, mean)
    samples: list[list[str]] = [[] for _ in texts]
    if num_samples:
        params = SamplingParams(n=num_samples, temperature=temperature, **common)
        for i, out in enumerate(llm.generate(texts, params, use_tqdm=True)):
            samples[i] = [o.text for o in out.outputs]
    return greedy, samples


def shared_prefill(model, enc, copies: int):
    """The prompts' KV cache computed once and repeated `copies` times, with the inputs repeated to match: K
    samples of a prompt share its prefill. (`generate(num_return_sequences=K)` repeats the prompt before the
    prefill, which then costs K times as much: a quarter of the probe's sampling time at K = 8 on CPU.) The last
    prompt token is left out of the cache, so `generate` computes the first new token's logits itself."""
    from transformers import DynamicCache

    mask = enc["attention_mask"]
    cache = DynamicCache(config=model.config)
    if enc["input_ids"].shape[1] > 1:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: as generate counts positions
        model(input_ids=enc["input_ids"][:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
              cache=cache, use_cache=True)  # fmt: skip
        cache.batch_repeat_interleave(copies)
    expanded = {
        "input_ids": enc["input_ids"].repeat_interleave(copies, 0),
        "attention_mask": mask.repeat_interleave(copies, 0),
    }
    return expanded, cache


def load_causal_lm(path: str, dtype, revision: str | None = None, attn_implementation: str | None = None, **kwargs):
    """(model, tokenizer) from a directory or Hub id (`kwargs` to `from_pretrained`: a quantization config). What
    cannot load (truncated weights, no network for a Hub id, a bad config) or does not fit together (a tokenizer
    from another model) is one UserError naming the path."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain.errors import UserError

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            path, revision=revision, dtype=dtype, attn_implementation=attn_implementation, **kwargs
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise UserError(f"{path}: cannot load the model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer.vocab_size > rows:  # added tokens may outgrow the embeddings (SFT resizes); a base vocabulary may not
        raise UserError(f"{path}: the tokenizer ({tokenizer.vocab_size:,} tokens) does not belong to this model "
                        f"(embeddings for {rows:,}): token ids would index past the embeddings")  # fmt: skip
    return model, tokenizer


def load_for_generation(path, device, hint: str = ""):
    """(model, tokenizer) of a saved causal LM for inference: bf16 on CUDA, fp32 elsewhere."""
    from pathlib import Path

    from posttrain.errors import UserError

    if not (Path(path) / "config.json").is_file():
        raise UserError(f"{path}: not a model directory (no config.json){hint}")
    model, tokenizer = load_causal_lm(path, torch.bfloat16 if device.type == "cuda" else torch.float32)
    return model.to(device), tokenizer


def auto_batch_size(model, max_len: int, num_samples: int = 0, free_bytes: int | None = None) -> int:
    """Prompts per batch: 64 on CPU; on a GPU, as many as the KV cache of 60 % of free memory holds (each
    prompt carries 1 + num_samples sequences of up to `max_len` tokens), between 16 and 1024."""
    if free_bytes is None:
        if model.device.type != "cuda":
            return 64
        free_bytes, _ = torch.cuda.mem_get_info(model.device)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    per_seq = 2 * cfg.num_hidden_layers * kv_heads * head_dim * max_len * model.dtype.itemsize
    return int(max(16, min(1024, 0.6 * free_bytes // (per_seq * (1 + num_samples)))))
