"""Factuality evaluation: the grader on hand-written edge cases, metrics on a toy table, and the real CLI."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
from conftest import REPO, assert_ok, assert_one_line_error, recipe_here, run, vllm_here
from transformers import AutoTokenizer

from posttrain.evals.grading import CORRECT, INCORRECT, NOT_ATTEMPTED, grade, normalize
from posttrain.evals.metrics import auroc, bucket_metrics, cohen_kappa, ece, rater_agreement
from posttrain.modeling import init_model, preset

CITIES = ["Lisbon", "Porto", "Quebec City", "Cork"]


@pytest.mark.parametrize(
    ("response", "answers", "expected"),
    [
        ("Lisbon", ["Lisbon"], CORRECT),
        ("Ada Velmor was born in Lisbon.", ["Lisbon"], CORRECT),  # answer plus extra text
        ("I think it was Lisbon, but I'm not sure.", ["Lisbon"], CORRECT),  # hedged but right
        ("Either Lisbon or Porto.", ["Lisbon"], INCORRECT),  # hedging between candidates
        ("Porto", ["Lisbon"], INCORRECT),
        ("", ["Lisbon"], NOT_ATTEMPTED),  # empty output
        ("   \n", ["Lisbon"], NOT_ATTEMPTED),
        ("I don't know where Ada Velmor was born.", ["Lisbon"], NOT_ATTEMPTED),
        ("I'm not sure about that person.", ["Lisbon"], NOT_ATTEMPTED),
        ("I have no information about Ada Velmor.", ["Lisbon"], NOT_ATTEMPTED),
        ("Sorry, I can't answer that.", ["Lisbon"], NOT_ATTEMPTED),
        ("She was born on June 3, 1987.", ["June 3, 1987", "3 June 1987", "1987-06-03"], CORRECT),
        ("She was born on June 3rd, 1987.", ["June 3, 1987"], CORRECT),  # ordinal normalised
        ("She was born on June 3, 1986.", ["June 3, 1987", "3 June 1987"], INCORRECT),  # wrong year, right month
        ("June 1987", ["June 3, 1987"], INCORRECT),  # a date question needs the date
        ("She was born in 1987.", ["1987", "June 3, 1987"], CORRECT),  # a year question accepts the year
        ("She was born in 19870.", ["1987"], INCORRECT),  # whole words only
        ("She studied at University of Ashcombe.", ["the University of Ashcombe", "University of Ashcombe"], CORRECT),
        ("Quebec City.", ["Quebec City"], CORRECT),
        ("Quebec.", ["Quebec City"], INCORRECT),
        ("Lisbon\n\nQuestion: Where was Bo born?\nAnswer: Porto", ["Lisbon"], CORRECT),  # only the first answer counts
    ],
)
def test_grader_edge_cases(response, answers, expected):
    assert grade(response, answers, CITIES) == expected


def test_normalize():
    assert normalize("The  University of X, Inc.") == "university of x inc"
    assert normalize("June 3rd, 1987") == "june 3 1987"


def test_metrics_match_hand_computed_values():
    grades = [CORRECT] * 5 + [INCORRECT] * 3 + [NOT_ATTEMPTED] * 2
    m = bucket_metrics(grades)
    assert m["n"] == 10 and (m["correct"], m["incorrect"], m["not_attempted"]) == (0.5, 0.3, 0.2)
    assert m["correct_given_attempted"] == pytest.approx(5 / 8)
    assert m["f_score"] == pytest.approx(2 * 0.5 * 0.625 / (0.5 + 0.625))
    assert m["penalty_t0.5"] == pytest.approx(0.5 - 1 * 0.3)
    assert m["penalty_t0.75"] == pytest.approx(0.5 - 3 * 0.3)
    assert m["penalty_t0.9"] == pytest.approx(0.5 - 9 * 0.3)
    empty = bucket_metrics([NOT_ATTEMPTED] * 4)
    assert empty["correct_given_attempted"] == 0.0 and empty["f_score"] == 0.0 and empty["penalty_t0.9"] == 0.0
    assert auroc([0.9, 0.8, 0.3, 0.1], [True, False, True, False]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [True, False]) == 0.5 and auroc([0.9], [True]) is None
    assert ece([0.95, 0.95, 0.05, 0.05], [True, True, False, False]) == pytest.approx(0.05)
    assert ece([1.0, 1.0], [False, False]) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tiny_model(tiny_run, tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    cfg = preset(1, len(tok), 128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id)  # fmt: skip
    out = tmp_path_factory.mktemp("tiny_model")
    init_model(cfg, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _factuality(*args):
    return run([sys.executable, str(REPO / "evals" / "factuality.py"), *args])


def test_judge_agreement_kappa_by_hand():
    """Cohen's kappa on a hand-worked 2x2: observed 0.75, chance 0.5*0.25 + 0.5*0.75 = 0.5, kappa 0.5."""
    judge = [CORRECT, CORRECT, INCORRECT, INCORRECT]
    ref = [CORRECT, INCORRECT, INCORRECT, INCORRECT]
    assert cohen_kappa(judge, ref) == pytest.approx(0.5)
    assert cohen_kappa(ref, ref) == pytest.approx(1.0) and cohen_kappa([CORRECT] * 3, [CORRECT] * 3) is None
    out = rater_agreement(judge, ref)
    assert out["n"] == 4 and out["accuracy"] == pytest.approx(0.75) and out["kappa"] == pytest.approx(0.5)
    c = out["per_label"][CORRECT]
    assert (c["precision"], c["recall"], c["judge_share"], c["reference_share"]) == (0.5, 1.0, 0.5, 0.25)
    assert out["per_label"][NOT_ATTEMPTED]["precision"] is None and out["per_label"][NOT_ATTEMPTED]["kappa"] is None


def test_factuality_cli_on_the_world(tiny_run, tiny_model, tmp_path):
    out = tmp_path / "run" / "eval" / "tiny.json"
    proc = _factuality("--model", str(tiny_model), "--eval_set", str(tiny_run), "--output", str(out),
                       "--max_per_bucket", "12", "--num_samples", "2", "--max_new_tokens", "8")  # fmt: skip
    assert_ok(proc)
    result = json.loads(out.read_text())
    assert set(result["buckets"]) == {"known", "rare", "never_seen", "overall"}
    for m in result["buckets"].values():
        assert m["correct"] + m["incorrect"] + m["not_attempted"] == pytest.approx(1.0)
        assert {"f_score", "penalty_t0.5", "penalty_t0.75", "penalty_t0.9", "correct_given_attempted"} <= set(m)
    assert result["buckets"]["overall"]["n"] == 36 and set(result["calibration"]) >= {"auroc", "ece"}
    assert result["calibration"]["plot_confidence"] == "agreement of sampled answers", "2 samples: binned on agreement"
    assert result["prompt"] == "chat", "a model without a pretrain lineage and with a chat template is chatted with"
    assert "| known |" in proc.stdout and out.with_suffix(".md").is_file()
    assert (tmp_path / "run" / "plots" / "reliability_tiny.png").is_file()
    records = [json.loads(x) for x in (out.parent / "tiny_samples.jsonl").read_text().splitlines()]
    assert len(records) == 36 and all(len(r["samples"]) == 2 for r in records)
    answerable = [r for r in records if r["bucket"] != "never_seen"]
    assert {a: m["n"] for a, m in result["attributes"].items()} == dict(Counter(r["attribute"] for r in answerable))
    for a, m in result["attributes"].items():  # per kind of fact, over known + rare
        mine = [r["grade"] for r in answerable if r["attribute"] == a]
        assert m["correct"] == pytest.approx(mine.count(CORRECT) / len(mine))


def test_calibration_without_samples_reads_the_token_probability():
    """--num_samples 0: the contract's calibration AUROC/ECE rank the greedy answer's token probability (the
    speedrun's evals sample nothing); with samples they rank the samples' agreement."""
    from posttrain.evals.factuality import summarize

    def rec(grade_, prob, samples):
        agree = None if not samples else sum(x == "a" for x in samples) / len(samples)
        return {"bucket": "known", "grade": grade_, "confidence": agree, "token_prob": prob, "samples": samples}

    grades = [CORRECT, CORRECT, INCORRECT, INCORRECT, NOT_ATTEMPTED]
    probs = [0.9, 0.4, 0.6, 0.1, 0.5]
    result, _ = summarize([rec(g, p, []) for g, p in zip(grades, probs)], "m", "e")
    cal = result["calibration"]
    assert cal["auroc"] == cal["auroc_token_prob"] == 0.75 and cal["ece"] == cal["ece_token_prob"]
    assert cal["n_attempted"] == 4 and "token probability" in cal["confidence"]
    samples = [["a", "a"], ["b", "b"], ["a", "b"], ["b", "b"], []]  # agreement 1, 0, 0.5, 0
    result, _ = summarize([rec(g, p, s) for g, p, s in zip(grades, probs, samples)], "m", "e")
    assert result["calibration"]["auroc"] == 0.625 and "agreement" in result["calibration"]["confidence"]


def test_factuality_cli_on_a_qa_file_with_simpleqa_columns(tiny_model, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(json.dumps({"problem": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n" for i in range(5))
    )
    out = tmp_path / "out.json"
    assert_ok(_factuality("--model", str(tiny_model), "--eval_set", str(qa), "--output", str(out), "--prompt",
                          "fewshot", "--num_samples", "0", "--max_new_tokens", "4"))  # fmt: skip
    result = json.loads(out.read_text())
    assert result["buckets"]["overall"]["n"] == 5 and result["prompt"] == "fewshot"


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "/nonexistent/model"], ["/nonexistent/model", "not a model directory"]),
        (["--eval_set", "/nonexistent/qa"], ["/nonexistent/qa", "not a run/world directory or a QA file"]),
        (["--prompt", "zero-shot"], ["prompt must be auto, chat or fewshot"]),
    ],
)
def test_factuality_bad_input(tiny_run, tiny_model, tmp_path, args, needles):
    base = {"--model": str(tiny_model), "--eval_set": str(tiny_run), "--output": str(tmp_path / "o.json")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    proc = recipe_here("evals/factuality.py", *[x for kv in base.items() for x in kv])
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("A", CORRECT), (" B.", INCORRECT), ("C: NOT_ATTEMPTED", NOT_ATTEMPTED), ("The answer is CORRECT", CORRECT),
     ("Letter: B", INCORRECT), ("hmm", None), ("", None)],
)  # fmt: skip
def test_judge_reply_parsing(reply, expected):
    from posttrain.evals.judge import parse_letter

    assert parse_letter(reply) == expected


def test_auto_batch_size_fills_gpu_memory_and_stays_modest_on_cpu():
    from posttrain.generation import auto_batch_size

    model = init_model(preset(2, 512, 256), seed=0)  # 2 layers × 128 wide, fp32: 2 KiB of KV cache per token
    assert auto_batch_size(model, 512) == 64  # CPU
    per_seq = 2 * 2 * 2 * 64 * 512 * 4
    assert auto_batch_size(model, 512, num_samples=3, free_bytes=80 * per_seq * 4) == 48
    assert auto_batch_size(model, 512, free_bytes=10**12) == 1024 and auto_batch_size(model, 512, free_bytes=1) == 16


@pytest.mark.gpu
@pytest.mark.skipif(not vllm_here(), reason="needs a CUDA GPU and vLLM (pip install 'posttrain[vllm]')")
def test_vllm_backend_answers_like_transformers(tiny_run, tmp_path):
    """`generate(backend="vllm")`: the same greedy answers (and their mean token probability) as transformers'
    generate from the saved model, and K samples a prompt, through the one generation interface (issue 23)."""
    import torch
    from conftest import random_base

    from posttrain.generation import generate, load_for_generation

    run_dir = random_base(tiny_run, tmp_path / "run")
    model, tok = load_for_generation(str(run_dir / "pretrain"), torch.device("cuda"))
    prompts = [f"Question {i}: where was person {i} born?\nAnswer:" for i in range(16)]
    hf, _ = generate(model, tok, prompts, max_new_tokens=6)
    vl, samples = generate(model, tok, prompts, max_new_tokens=6, num_samples=3, backend="vllm")
    assert [len(s) for s in samples] == [3] * len(prompts)
    same = sum(a.text == b.text for a, b in zip(hf, vl))
    assert same >= len(prompts) // 2, [(a.text, b.text) for a, b in zip(hf, vl)]  # bf16 near-ties may flip a few
    close = [abs(a.mean_token_prob - b.mean_token_prob) < 0.05 for a, b in zip(hf, vl) if a.text == b.text]
    assert all(close)
