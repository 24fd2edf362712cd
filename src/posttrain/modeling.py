"""Model presets: one `depth` knob → a stock `LlamaConfig`, its parameter count and training FLOPs per token.

As in nanochat, width grows with depth (`hidden = depth × aspect_ratio`), so one number scales the model from a
CPU toy (depth 4: 256 wide, ~3M non-embedding parameters) to a GPU run (depth 20: 1280 wide, ~400M with a 32k
vocabulary). Every checkpoint is a plain `LlamaForCausalLM`: `AutoModelForCausalLM.from_pretrained` loads it with
no remote code.
"""

from __future__ import annotations

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


def preset(
    depth: int,
    vocab_size: int,
    max_seq_len: int,
    *,
    aspect_ratio: int = 64,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool = False,
    rope_theta: float = 10000.0,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> LlamaConfig:
    """A Llama config from depth; any explicit size overrides the derived one.

    - hidden = depth × aspect_ratio (rounded to a multiple of 64);
    - head dim 64 below 1024 wide, 128 from there (heads = hidden / head_dim), full multi-head attention;
    - SwiGLU MLP of 8/3 × hidden (rounded to 64): the same FLOPs as a 4× two-matrix MLP;
    - vocabulary padded to a multiple of 64 (faster matmuls; the extra rows are never produced by the tokenizer);
    - init: normal(0, 0.02) as in GPT-2/Llama (transformers' `initializer_range`), untied embeddings as in nanochat.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    hidden = hidden_size or _round_up(depth * aspect_ratio, 64)
    head_dim = 64 if hidden < 1024 else 128
    heads = num_attention_heads or max(1, hidden // head_dim)
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    return LlamaConfig(
        vocab_size=_round_up(vocab_size, 64),
        hidden_size=hidden,
        intermediate_size=intermediate_size or _round_up(8 * hidden / 3, 64),
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_key_value_heads=num_key_value_heads or heads,
        max_position_embeddings=max_seq_len,
        rope_theta=rope_theta,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def param_counts(config: LlamaConfig) -> dict[str, int]:
    """Parameters: total, input embedding, and the rest (the ones that cost FLOPs, lm_head included)."""
    h, v, i, layers = config.hidden_size, config.vocab_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h  # q,o + k,v + SwiGLU + two RMSNorms
    embedding = v * h
    lm_head = 0 if config.tie_word_embeddings else v * h
    body = layers * per_layer + h  # final norm
    return {"total": embedding + lm_head + body, "embedding": embedding, "non_embedding": body + v * h}


def flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 × matmul parameters + 12 × layers × hidden × seq_len for
    attention scores, as in the PaLM paper / nanochat's estimate."""
    n = param_counts(config)["non_embedding"]
    return 6.0 * n + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def init_model(config: LlamaConfig, seed: int, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """A freshly initialised model; the same seed gives the same weights."""
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    return LlamaForCausalLM(config)
