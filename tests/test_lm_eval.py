"""The lm-evaluation-harness tasks in evals/lm_eval_tasks/: the export, the grader, and a real offline lm_eval run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, run

TASKS = REPO / "evals" / "lm_eval_tasks"
BUCKETS = {"known": "eval_known", "rare": "eval_rare", "never_seen": "never_seen"}


def _utils():
    spec = importlib.util.spec_from_file_location("world_qa_utils", TASKS / "world_qa" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(world: Path, out: Path):
    return run([sys.executable, str(REPO / "evals" / "export_qa.py"), "--world", str(world), "--output_dir", str(out)])


def test_grader_on_hand_written_outputs():
    utils = _utils()
    aliases = ["October 27, 1963", "27 October 1963", "1963-10-27"]
    assert utils.grade("Finn was born on 27 October 1963.", aliases) == "correct"
    assert utils.grade(" october 27 1963", aliases) == "correct"  # case and punctuation do not matter
    assert utils.grade("The university is Quarry Hill College!", ["Quarry Hill College"]) == "correct"
    assert utils.grade("I don't know.", aliases) == "not_attempted"
    assert utils.grade("I’m not aware of that person", aliases) == "not_attempted"
    assert utils.grade("", aliases) == "not_attempted"
    assert utils.grade("He was born in 1964.", aliases) == "incorrect"
    assert utils.grade("Portsmouth", ["Porto"]) == "incorrect"  # whole words only
    doc = {"question": "Where was Ada born?", "answer": "Lisbon", "aliases": ["Lisbon"], "bucket": "known"}
    assert utils.process_results(doc, ["Lisbon"]) == {"correct": 1.0, "incorrect": 0.0, "not_attempted": 0.0}
    assert utils.process_results(doc, ["I do not know"]) == {"correct": 0.0, "incorrect": 0.0, "not_attempted": 1.0}
    assert utils.process_results(doc, ["Porto"]) == {"correct": 0.0, "incorrect": 1.0, "not_attempted": 0.0}


def test_export_rejects_a_missing_world(tmp_path):
    proc = _export(tmp_path / "nope", tmp_path / "data")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr
    assert not (tmp_path / "data").exists()


def test_export_and_lm_eval_offline(tiny_run, tmp_path):
    from transformers import AutoTokenizer

    from posttrain.modeling import init_model, preset
    from posttrain.world import load_world

    # The task folder is copied so that the data lands beside the copy's utils.py: nothing is written into the repo.
    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS, tasks, ignore=shutil.ignore_patterns("data", "__pycache__"))
    data = tasks / "world_qa" / "data"
    assert_ok(_export(tiny_run / "world", data))
    qa = load_world(tiny_run / "world")["qa"]
    for bucket, split in BUCKETS.items():
        rows = [json.loads(line) for line in (data / f"{bucket}.jsonl").read_text().splitlines()]
        assert len(rows) == qa["split"].count(split) > 0
        assert set(rows[0]) == {"question", "answer", "aliases", "bucket", "attribute"} and rows[0]["bucket"] == bucket
        assert rows[0]["answer"] in rows[0]["aliases"]
    shots = [json.loads(line) for line in (data / "fewshot.jsonl").read_text().splitlines()]
    train_questions = {q for q, s in zip(qa["question"], qa["split"]) if s in ("sft", "probe")}
    assert len(shots) == 3 and all(s["question"] in train_questions for s in shots)
    candidates = json.loads((data / "candidates.json").read_text())
    assert rows[0]["answer"] in candidates[rows[0]["attribute"]]

    ckpt = tmp_path / "ckpt"
    tok = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    cfg = preset(
        1, len(tok), 128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    init_model(cfg, seed=0).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)

    out = tmp_path / "lm_eval_out"
    lm_eval = Path(sys.executable).parent / "lm_eval"
    args = [str(lm_eval), "--model", "hf", "--model_args", f"pretrained={ckpt},dtype=float32"]
    args += ["--include_path", str(tasks), "--tasks", "world_qa_known", "--limit", "5", "--device", "cpu"]
    args += ["--output_path", str(out), "--log_samples"]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    proc = run(args, cwd=tmp_path, env=env, timeout=120)
    assert_ok(proc)

    (results_file,) = out.glob("**/results_*.json")
    results = json.loads(results_file.read_text())
    scores = results["results"]["world_qa_known"]
    rates = [scores[f"{m},none"] for m in ("correct", "incorrect", "not_attempted")]
    assert all(0.0 <= r <= 1.0 for r in rates) and sum(rates) == pytest.approx(1.0)
    assert results["n-samples"]["world_qa_known"]["effective"] == 5
    (samples_file,) = out.glob("**/samples_world_qa_known_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == 5
    prompt = samples[0]["arguments"]["gen_args_0"]["arg_0"]
    assert prompt == f"<|endoftext|>Question: {samples[0]['doc']['question']}\nAnswer:"  # 0-shot: BOS + question
    assert samples[0]["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"] == 32


@pytest.mark.parametrize("style", ["chat", "fewshot"])
def test_lm_eval_grades_as_our_eval(tiny_run, tmp_path, style):
    """lm-eval (the library, offline) and evals/factuality.py on the same tiny checkpoint and the same questions,
    greedy, fp32, one prompt a batch: the same prompt text, the same answer and the same grade for every question —
    a chat model through `world_qa_chat_*` with --apply_chat_template, a base model through `world_qa_*` 3-shot."""
    from transformers import AutoTokenizer

    from posttrain.chat_template import prepare_chat
    from posttrain.evals.grading import extract_answer
    from posttrain.generation import render
    from posttrain.modeling import init_model, preset

    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS, tasks, ignore=shutil.ignore_patterns("data", "__pycache__"))
    assert_ok(_export(tiny_run / "world", tasks / "world_qa" / "data"))

    ckpt = tmp_path / "ckpt"
    tok = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    cfg = preset(
        1, len(tok), 128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model = init_model(cfg, seed=3)
    if style == "chat":
        prepare_chat(model, tok)
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)

    ours = tmp_path / "eval" / "ours.json"
    args = ["--model", str(ckpt), "--eval_set", str(tiny_run), "--output", str(ours), "--prompt", style]
    args += ["--num_samples", "0", "--batch_size", "1", "--mixed_precision", "no", "--max_per_bucket", "1000"]
    assert_ok(run([sys.executable, str(REPO / "evals" / "factuality.py"), *args], timeout=300))
    records = [json.loads(line) for line in ours.with_name("ours_samples.jsonl").read_text().splitlines()]
    by_question = {r["question"]: r for r in records if r["bucket"] == "known"}

    task = "world_qa_chat_known" if style == "chat" else "world_qa_known"
    out = tmp_path / "lm_eval_out"
    lm_eval = Path(sys.executable).parent / "lm_eval"
    cmd = [str(lm_eval), "--model", "hf", "--model_args", f"pretrained={ckpt},dtype=float32", "--batch_size", "1"]
    cmd += ["--include_path", str(tasks), "--tasks", task, "--limit", "12", "--device", "cpu"]
    cmd += ["--output_path", str(out), "--log_samples"]
    cmd += ["--apply_chat_template"] if style == "chat" else ["--num_fewshot", "3"]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    assert_ok(run(cmd, cwd=tmp_path, env=env, timeout=300))
    (samples_file,) = out.glob(f"**/samples_{task}_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == 12

    from posttrain.evals.factuality import build_prompts, load_eval_set

    _, shots = load_eval_set(str(tiny_run))
    for s in samples:
        mine = by_question[s["doc"]["question"]]
        (prompt,) = build_prompts([mine], shots, style, tok)
        assert s["arguments"]["gen_args_0"]["arg_0"] == render(tok, prompt)
        assert extract_answer(s["resps"][0][0]) == mine["response"], s["resps"]
        verdict = next(m for m in ("correct", "incorrect", "not_attempted") if s[m] == 1.0)
        assert verdict == mine["grade"], (s["resps"], mine)
