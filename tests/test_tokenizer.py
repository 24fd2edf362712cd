"""The BPE tokenizer: exact round trip, special tokens, chat template masking (through TRL), compression."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from posttrain.tokenizer import BOS, END_OF_TURN, IM_START, PAD

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Where was Ada Velmor born?"},
    {"role": "assistant", "content": "Ada Velmor was born in Lisbon."},
    {"role": "user", "content": "And her year of birth?"},
    {"role": "assistant", "content": "I don't know."},
]


@pytest.fixture(scope="module")
def tok(tiny_run):
    return AutoTokenizer.from_pretrained(tiny_run / "tokenizer")


@pytest.mark.parametrize(
    "text",
    [
        "Ada Velmor was born on June 3, 1987 in Lisbon.",
        "  leading spaces, tabs\tand\nnewlines\n\n",
        "unicode: café, naïve, 東京, emoji 🚀🔥, math ∑∞",
        "digits 1234567890 and 3.14159 and -42",
        "",
    ],
)
def test_round_trip_is_exact(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_special_tokens_and_generation_defaults(tok):
    assert tok.bos_token == BOS and tok.eos_token == END_OF_TURN and tok.pad_token == PAD
    for special in (BOS, END_OF_TURN, PAD, IM_START):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.padding_side == "left", "batched generation pads on the left"
    assert tok.pad_token_id != tok.eos_token_id
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(f"{IM_START}assistant\n") and prompt.startswith(BOS)


def test_assistant_mask_covers_exactly_the_assistant_turns(tok):
    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == f"Ada Velmor was born in Lisbon.{END_OF_TURN}I don't know.{END_OF_TURN}"
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "Where was Ada Velmor born?" in untrained and "Answer briefly." in untrained


def test_trl_sft_trains_on_assistant_tokens_only(tok, tmp_path):
    """The real TRL path: SFTTrainer with assistant_only_loss=True masks everything but assistant turns."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )
    args = SFTConfig(
        output_dir=str(tmp_path),
        assistant_only_loss=True,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to=[],
        max_steps=1,
        per_device_train_batch_size=1,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"messages": [CONVERSATION]}), processing_class=tok
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    trained = tok.decode(labels[labels != -100].tolist())
    assert trained == f"Ada Velmor was born in Lisbon.{END_OF_TURN}I don't know.{END_OF_TURN}"
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_compression_is_recorded(tiny_run):
    record = json.loads((tiny_run / "tokenizer" / "lineage.json").read_text())
    assert record["summary"]["heldout_bytes_per_token"] > 3.0
    assert (
        record["parents"]["world"]["hash"]
        == json.loads((tiny_run / "world" / "lineage.json").read_text())["summary"]["hash"]
    )
    assert len(record["data_mix"]["hash"]) == 16
