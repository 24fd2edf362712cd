"""Byte-level BPE tokenizer with chat special tokens and a chat template, trained with `tokenizers`.

The recipe follows nanochat / GPT-4: a regex pre-tokenization split (GPT-4's pattern, with digits in groups of
up to three), then byte-level BPE, so any text round-trips exactly. The result is saved as a
`PreTrainedTokenizerFast` that `AutoTokenizer.from_pretrained` loads, with a ChatML-style template whose
assistant turns are wrapped in `{% generation %}` markers: TRL's `assistant_only_loss=True` (via
`return_assistant_tokens_mask`) then trains on assistant tokens only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# GPT-4's split pattern (as in tiktoken's cl100k_base), as used by nanochat.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
BOS = "<|endoftext|>"  # starts every document and every conversation; separates packed documents
END_OF_TURN = "<|im_end|>"  # ends every chat turn: the eos token, so `generate` stops after an answer
PAD = "<|pad|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [BOS, PAD, IM_START, END_OF_TURN]

# ChatML with {% generation %} around what the assistant says (its content, tool calls and end-of-turn token).
# The bos token starts a conversation unless it is <|im_start|> itself (SmolLM2's tokenizer), where it would double.
# Tool calls in the Hermes/Qwen2.5 form most open chat models and TRL's parsers know: `tools` are listed in a system turn, an assistant turn's `tool_calls` are
# written as <tool_call>{"name": ..., "arguments": {...}}</tool_call>, a `tool` message is its own turn. A
# conversation without tools renders exactly as plain ChatML.
_BOS_LINE = "{%- if bos_token and bos_token != '<|im_start|>' %}{{- bos_token }}{%- endif %}"
_CHAT_BODY = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- 'Tools:' }}{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    '{{- \'\nTo call one, reply <tool_call>{"name": ..., "arguments": {...}}</tool_call>.<|im_end|>\n\' }}'
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' }}"
    "{%- generation %}{{- message['content'] or '' }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- set f = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>' + ({'name': f['name'], 'arguments': f['arguments']} | tojson) + '</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
CHAT_TEMPLATE = _BOS_LINE + _CHAT_BODY


def chatml_template(default_system: str | None = None) -> str:
    """posttrain's ChatML; with `default_system`, the system message that a conversation without one (and without
    tools) gets, as a base model's own template may write it (SmolLM2: "You are a helpful AI assistant named SmolLM,
    trained by Hugging Face"). A trained model then sees the prompt its parent was probed and evaluated with."""
    if not default_system:
        return CHAT_TEMPLATE
    literal = json.dumps(default_system)  # a Jinja string literal: the same escapes as JSON's
    return (_BOS_LINE + "{%- if not tools and messages[0]['role'] != 'system' %}"
            "{{- '<|im_start|>system\n' + " + literal + " + '<|im_end|>\n' }}{%- endif %}" + _CHAT_BODY)  # fmt: skip


def is_chatml_template(template: str | None) -> bool:
    """Whether `template` is posttrain's ChatML (with or without a default system message)."""
    return bool(template) and template.startswith(_BOS_LINE) and template.endswith(_CHAT_BODY)


# How `tokenizer.parse_response` reads a reply written in CHAT_TEMPLATE's form back into a message (transformers'
# response templates; the same shape as TRL's qwen3_template): text content, then any <tool_call> JSON objects.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def train_bpe(texts: Iterable[str], vocab_size: int, show_progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE `tokenizers.Tokenizer` (special tokens included in `vocab_size`)."""
    tok = Tokenizer(models.BPE(byte_fallback=False, unk_token=None, fuse_unk=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def wrap(tok: Tokenizer, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """The transformers tokenizer: special tokens, chat template, left padding for batched generation."""
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.response_template = RESPONSE_TEMPLATE  # tokenizer.parse_response reads tool calls back
    return hf


def bytes_per_token(tokenizer, texts: Iterable[str]) -> dict:
    """Compression on held-out text: UTF-8 bytes per token (higher is better)."""
    n_bytes = n_tokens = n_texts = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        n_texts += 1
    return {"texts": n_texts, "bytes": n_bytes, "tokens": n_tokens, "bytes_per_token": n_bytes / max(1, n_tokens)}


def text_iterator(dataset, limit: int | None = None, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of `text` from a Dataset or IterableDataset (streams Hub-scale mixes), at most `limit` texts."""
    n = 0
    for batch in dataset.iter(batch_size=batch_size):
        texts = batch["text"]
        if limit is not None:
            texts = texts[: max(0, limit - n)]
        if not texts:
            return
        n += len(texts)
        yield texts


def tokenizer_hash(path) -> str:
    """Hash of a saved tokenizer (vocabulary, merges, special tokens, chat template)."""
    from posttrain.lineage import folder_hash

    return folder_hash(path, ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))
