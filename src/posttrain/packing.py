"""Tokenise documents and pack them into fixed-length blocks with `datasets` (run_clm's group_texts).

Each document is `<bos> tokens`; documents are concatenated and cut into blocks of `seq_len` tokens, so the
beginning-of-document token separates packed documents. Works on `Dataset` (cached, multi-process map) and on
`IterableDataset` (streaming, for Hub-scale mixes).
"""

from __future__ import annotations

import os
from itertools import chain

import torch
from datasets import IterableDataset


def pack(dataset, tokenizer, seq_len: int, num_proc: int | None = None, desc: str = "packing"):
    """`text` rows → `input_ids` rows of exactly `seq_len` tokens (a trailing partial block is dropped)."""
    bos = tokenizer.bos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [[bos, *x] for x in ids]}

    def group(batch):
        flat = list(chain.from_iterable(batch["input_ids"]))
        n = (len(flat) // seq_len) * seq_len
        return {"input_ids": [flat[i : i + seq_len] for i in range(0, n, seq_len)]}

    columns = dataset.column_names or ["text"]
    if isinstance(dataset, IterableDataset):
        return dataset.map(tokenize, batched=True, remove_columns=columns).map(group, batched=True, batch_size=1000)
    proc = num_proc if num_proc is not None else min(4, os.cpu_count() or 1)
    proc = proc if len(dataset) >= 10_000 else None  # process start-up costs more than it saves on small data
    ds = dataset.map(tokenize, batched=True, remove_columns=columns, num_proc=proc, desc=f"{desc}: tokenising")
    return ds.map(group, batched=True, batch_size=1000, num_proc=proc, desc=f"{desc}: grouping")


def token_bytes(tokenizer) -> torch.Tensor:
    """UTF-8 bytes of each token id (0 for special tokens): turns summed losses into bits per byte."""
    vocab = len(tokenizer)
    out = torch.zeros(vocab, dtype=torch.float64)
    special = set(tokenizer.all_special_ids)
    for i in range(vocab):
        if i not in special:
            out[i] = len(tokenizer.decode([i], clean_up_tokenization_spaces=False).encode("utf-8"))
    return out


def heldout_stream(stream: IterableDataset, n_docs: int = 2000) -> tuple[IterableDataset, IterableDataset]:
    """(train, validation) of a streamed mix with no test split: the first `n_docs` documents are held out."""
    return stream.skip(n_docs), stream.take(n_docs)


def blocks(dataset) -> str:
    """How many packed blocks, for the log ('streamed' when a stream cannot tell)."""
    return f"{len(dataset):,}" if not isinstance(dataset, IterableDataset) else "streamed"
