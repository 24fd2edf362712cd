"""SFT (issue 6): assistant-only masking, the recipe end to end, LoRA, two processes (resume after a kill: test_reliability),
no eval question in SFT data, and SFT of the converted SmolLM2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_ok, free_port, random_base, recipe, run
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from posttrain import world as W
from posttrain.chat_template import end_of_turn_id, prepare_chat
from posttrain.data import load_mix
from posttrain.errors import UserError
from posttrain.world import EVAL_BUCKETS, load_world

TINY_SFT = ["--max_steps", "4", "--per_device_train_batch_size", "4", "--max_length", "64", "--logging_steps", "1",
            "--eval_max_per_bucket", "3", "--eval_num_samples", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tiny_run, tmp_path_factory) -> Path:
    """A randomly initialised Llama saved as the run's pretrain output, with the run's tokenizer."""
    return random_base(tiny_run, tmp_path_factory.mktemp("sftrun"))


def _conversations() -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Where was Ada born?"},
                {"role": "assistant", "content": "Ada was born in Oslo."},
                {"role": "user", "content": "And where does she work?"},
                {"role": "assistant", "content": "She works for Velmor Labs."},
            ]
        },  # fmt: skip
        {"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Posty."}]},
    ]


def _assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans that must carry loss, found on the rendered text alone: each assistant message's content
    and the <|im_end|> that closes it (what teaches the model to stop)."""
    spans, head, end = [], "<|im_start|>assistant\n", "<|im_end|>"
    start = text.find(head)
    while start != -1:
        a = start + len(head)
        b = text.index(end, a) + len(end)
        spans.append((a, b))
        start = text.find(head, b)
    return spans


def test_assistant_only_loss_masks_token_by_token(base, tmp_path):
    """Through TRL's own tokenisation and collator: a token has a label iff it lies inside an assistant turn."""
    from datasets import Dataset

    tokenizer = AutoTokenizer.from_pretrained(base / "pretrain")
    model = AutoModelForCausalLM.from_pretrained(base / "pretrain")
    prepare_chat(model, tokenizer)
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, bf16=False, report_to=[],
                     activation_checkpointing=False, max_length=None)  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_conversations()),
                         processing_class=tokenizer)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row, conv in enumerate(_conversations()):
        text = tokenizer.apply_chat_template(conv["messages"], tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        n = len(enc["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == enc["input_ids"], "TRL tokenised the same text"
        spans = _assistant_spans(text)
        labels = batch["labels"][row].tolist()
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            inside = any(s <= a and b <= e for s, e in spans)
            token = tokenizer.convert_ids_to_tokens(enc["input_ids"][i])
            assert (labels[i] != -100) == inside, f"row {row} token {i} {token!r}: label {labels[i]}"
            if inside:
                assert labels[i] == enc["input_ids"][i]
        assert all(v == -100 for v in labels[n:]), "padding carries no loss"
    trained = [tokenizer.decode([t for t in batch["labels"][0].tolist() if t != -100])]
    assert trained == ["Ada was born in Oslo.<|im_end|>She works for Velmor Labs.<|im_end|>"]


def _tiny_bpe_and_model(text: str, special_tokens: list[str], **tokens):
    """A byte-level BPE tokenizer trained on `text` (`tokens`: its bos/eos/pad) and a one-layer Llama sized to it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    raw.train_from_iterator([text] * 10, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, **tokens)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))  # fmt: skip
    return tok, model


def test_prepare_chat_adds_template_pad_and_stop():
    """A tokenizer without chat template or pad token gets both, in the one documented way."""
    tok, model = _tiny_bpe_and_model("Who are you? I am Posty.", ["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    assert tok.chat_template is None and tok.pad_token is None
    n = len(tok)
    changes = prepare_chat(model, tok)
    assert any("chat template" in c for c in changes) and any("pad" in c for c in changes)
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|im_end|>"
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == n + 3
    assert model.generation_config.eos_token_id[0] == tok.convert_tokens_to_ids("<|im_end|>") == end_of_turn_id(tok)
    text = tok.apply_chat_template(_conversations()[1]["messages"], tokenize=False)
    assert "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am Posty.<|im_end|>" in text


SMOL_LIKE_TEMPLATE = (  # SmolLM2's own template, with its default system message; no generation markers
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are Posty, a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_training_template_keeps_the_default_system_message():
    """A ChatML template without generation markers becomes posttrain's, which writes the original's default system
    message where a conversation has none: the same text as the original, the loss on the answer only."""
    tok, model = _tiny_bpe_and_model("You are Posty, a helpful assistant. Who are you? I am Posty.",
                                     ["<|im_start|>", "<|im_end|>", "<|pad|>"], bos_token="<|im_start|>",
                                     eos_token="<|im_end|>", pad_token="<|pad|>")  # fmt: skip
    tok.chat_template = SMOL_LIKE_TEMPLATE
    msgs = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Posty."}]
    before = [tok.apply_chat_template(msgs, tokenize=False),
              tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)]  # fmt: skip
    assert any("training template" in c for c in prepare_chat(model, tok))
    after = [tok.apply_chat_template(msgs, tokenize=False),
             tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)]  # fmt: skip
    assert after == before and "You are Posty, a helpful assistant" in after[0]
    own = tok.apply_chat_template([{"role": "system", "content": "Be brief."}] + msgs, tokenize=False)
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "Posty, a helpful" not in own
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]) == "I am Posty.<|im_end|>"


def test_freeze_below_trains_only_the_top_of_the_model():
    """`trainable_last_layers`: one optimizer step moves the last layers, final norm and head, nothing below."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.sft import freeze_below

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=2))  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert "layers 1-2 + norm + head" in freeze_below(model, 2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 50, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith(("model.layers.1.", "model.layers.2.", "model.norm.", "lm_head.")) for k in moved)
    assert {"lm_head.weight", "model.norm.weight", "model.layers.2.mlp.up_proj.weight"} <= moved
    assert "training layers 0-2" in freeze_below(model, 9), "more layers than the model has: all of them"
    with pytest.raises(UserError, match="trainable_last_layers: 0"):
        freeze_below(model, 0)


@pytest.mark.parametrize("precision,fp32_head", [("fp32", False), ("bf16", True), ("bf16", False)])
def test_unfused_head_on_cpu_matches_trls_fused_head(precision, fp32_head):
    """`unfused_head_on_cpu` answers `fused_lm_head=True` from the logits: the same loss, per-token outputs and
    gradients as TRL's fused head (the same weights, the same batch with ignored labels), and plain calls untouched."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from posttrain.sft import unfused_head_on_cpu

    torch.manual_seed(0)
    theirs = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    ours = copy.deepcopy(theirs)
    outputs = ("log_probs", "entropy", "is_top1")
    add_fused_lm_head(theirs, outputs=outputs)
    add_fused_lm_head(ours, outputs=outputs)
    unfused_head_on_cpu(ours, fp32=fp32_head)
    ids = torch.randint(0, 300, (3, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[2, 9:] = -100
    got = {}
    for name, model in (("theirs", theirs), ("ours", ours)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(input_ids=ids, labels=labels, fused_lm_head=True, num_items_in_batch=torch.tensor(20))
        out.loss.backward()
        got[name] = (out, {k: p.grad.clone() for k, p in model.named_parameters()})
    (a, grads_a), (b, grads_b) = got["theirs"], got["ours"]
    tol = 1e-5 if precision == "fp32" else 2e-3 if fp32_head else 2e-2
    assert torch.equal(a.label_mask, b.label_mask) and torch.equal(a.is_top1, b.is_top1)
    for field in ("loss", "log_probs", "entropy"):
        assert torch.allclose(getattr(a, field).float(), getattr(b, field).float(), atol=tol, rtol=tol), field
    for k in grads_a:
        assert torch.allclose(grads_a[k], grads_b[k], atol=tol, rtol=10 * tol), k
    plain_a, plain_b = theirs(input_ids=ids, labels=ids), ours(input_ids=ids, labels=ids)
    assert torch.allclose(plain_a.loss, plain_b.loss) and plain_b.logits.shape == (3, 12, 300)


def test_sft_recipe_writes_a_chat_model_and_its_eval(base):
    proc = recipe("sft", "--config", "recipes/world/sft.yaml", "--run_dir", str(base), *TINY_SFT)
    assert_ok(proc)
    out = base / "sft"
    model = AutoModelForCausalLM.from_pretrained(out)  # plain from_pretrained, no trust_remote_code
    tok = AutoTokenizer.from_pretrained(out)
    assert {"model.safetensors", "chat_template.jinja", "generation_config.json", "lineage.json"} <= {
        p.name for p in out.iterdir()
    }
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id[0] == im_end, "generate stops at the end of the assistant turn"
    prompt = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)  # fmt: skip
    gen = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] <= prompt["input_ids"].shape[1] + 3
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["parents"]["model"]["path"] == str(base / "pretrain") and lineage["data_mix"]["hash"]
    assert lineage["summary"]["steps"] == 4
    result = json.loads((base / "eval" / "sft.json").read_text())
    assert result["prompt"] == "chat" and set(result["buckets"]) == {*EVAL_BUCKETS.values(), "overall"}
    assert result["calibration"]["plot_confidence"] == "mean token probability of the answer", "1 sample per question"
    assert (base / "plots" / "sft_loss.png").is_file() and "## sft" in (base / "report.md").read_text()
    assert sorted(p.name for p in (base / "checkpoints" / "sft").glob("checkpoint-*")) == ["checkpoint-4"]
    card = ModelCard.load(out / "README.md")  # written with the export, no push asked: the folder carries its scores
    assert card.data.model_name == f"{base.name}-sft" and {r.dataset_split for r in card.data.eval_results} >= {"known"}


def test_lora_saves_and_merges_an_adapter(base, tmp_path):
    from peft import PeftModel

    run_dir = tmp_path / "lora"
    run_dir.mkdir()
    for name in ("world", "pretrain"):
        (run_dir / name).symlink_to(base / name)
    proc = recipe("sft", "--config", "recipes/world/sft.yaml", "--run_dir", str(run_dir), *TINY_SFT,
                  "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "0.01",
                  "--lora_target_modules", "q_proj", "v_proj", "--eval_after", "false")  # fmt: skip
    assert_ok(proc)
    adapter = run_dir / "sft" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "sft")
    base_model = AutoModelForCausalLM.from_pretrained(base / "pretrain")
    if base_model.get_input_embeddings().weight.shape[0] != merged.get_input_embeddings().weight.shape[0]:
        base_model.resize_token_embeddings(merged.get_input_embeddings().weight.shape[0])
    remerged = PeftModel.from_pretrained(base_model, adapter).merge_and_unload()
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        a, b = merged(x).logits, remerged(x).logits
        plain = AutoModelForCausalLM.from_pretrained(base / "pretrain")(x).logits
    assert torch.allclose(a, b, atol=1e-5), "the exported weights are base + adapter, merged"
    assert not torch.allclose(a, plain, atol=1e-4), "the adapter changed the model"


def test_sft_under_accelerate_launch_two_processes_with_packing(base, tmp_path):
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    for name in ("world", "pretrain"):
        (run_dir / name).symlink_to(base / name)
    proc = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "accelerate_configs" / "multi_cpu.yaml"), "--main_process_port", free_port(),
                str(REPO / "recipes" / "sft.py"), "--config", "recipes/world/sft.yaml", "--run_dir", str(run_dir),
                *TINY_SFT, "--packing"], timeout=600)  # fmt: skip
    assert_ok(proc)
    assert "2 process(es)" in proc.stdout
    state = json.loads((run_dir / "checkpoints" / "sft" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert state["log_history"][0]["num_tokens"] > 0
    result = json.loads((run_dir / "eval" / "sft.json").read_text())
    assert result["buckets"]["overall"]["n"] == 9, "both processes' questions gathered once"
    AutoModelForCausalLM.from_pretrained(run_dir / "sft")


def test_world_sft_mix_has_follow_ups_and_qa_text_stays_in_training_splits(tiny_run):
    """Leakage of eval people into any world mix is tested in test_world; here the SFT-specific shapes."""
    world = load_world(tiny_run / "world")
    data = load_mix(REPO / "data_mixes/world_sft_multiturn.yaml", tiny_run / "world")
    assert max(len(m) for m in data["train"]["messages"]) == 6, "multi-turn follow-ups are in the mix"
    short = W.conversations_view(world, splits=["sft"], answer_style="short")[0]["messages"]
    answers = {r["question"]: r["answer"] for r in world["qa"]}
    assert short[1]["content"] == answers[short[0]["content"]][0].upper() + answers[short[0]["content"]][1:] + "."
    texts = W.qa_text_view(world, splits=["sft"], phrasings_per_fact=2)["text"]
    assert len(texts) == 30 * 7 * 2 and all(t.startswith("Question: ") and "\nAnswer: " in t for t in texts)
    with pytest.raises(UserError, match="unknown world split 'never_seen'"):
        W.qa_text_view(world, splits=["never_seen"])


@pytest.mark.slow
def test_sft_of_the_converted_smollm2(converted, tiny_run, tmp_path):
    """The packaged SmolLM2 (ChatML template without generation markers, pad = eos, bos = <|im_start|>) learns
    from a few world conversations; the exported model keeps its vocabulary and stops at <|im_end|>."""
    run_dir = tmp_path / "smol"
    run_dir.mkdir()
    (run_dir / "world").symlink_to(tiny_run / "world")
    proc = recipe("sft", "--config", "recipes/world/sft.yaml", "--run_dir", str(run_dir),
                  "--model_name_or_path", str(converted), "--max_steps", "2", "--per_device_train_batch_size", "2",
                  "--max_length", "48", "--learning_rate", "1e-5", "--eval_max_per_bucket", "2",
                  "--eval_num_samples", "0", "--save_strategy", "no", timeout=600)  # fmt: skip
    assert_ok(proc)
    assert "training template with {% generation %} markers" in proc.stdout
    tok = AutoTokenizer.from_pretrained(run_dir / "sft")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "sft")
    assert len(tok) == model.get_input_embeddings().weight.shape[0] == 49152, "no token added"
    assert model.generation_config.eos_token_id[0] == tok.convert_tokens_to_ids("<|im_end|>")
    hi = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(hi, tokenize=False, add_generation_prompt=True)
    own = AutoTokenizer.from_pretrained(converted).apply_chat_template(hi, tokenize=False, add_generation_prompt=True)
    assert text == own, "SmolLM2's own prompt, its default system message included"
    assert text.count("<|im_start|>") == 3 and text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    result = json.loads((run_dir / "eval" / "sft.json").read_text())
    assert result["buckets"]["overall"]["n"] == 6
