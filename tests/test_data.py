"""Data mixes: TRL's DatasetMixtureConfig plus the world, renames and hashes; bad mixes give one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, assert_ok, assert_one_line_error, recipe, recipe_here
from datasets import IterableDataset

from posttrain.data import DataMix, load_mix, mix_hash, read_mix
from posttrain.errors import UserError

MIXES = sorted((REPO / "data_mixes").glob("*.yaml"))


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _mix(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mix.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", MIXES, ids=[p.stem for p in MIXES])
def test_shipped_mixes_validate_offline(path):
    mix = read_mix(path)  # schema only: Hub mixes are not downloaded
    assert isinstance(mix, DataMix) and mix.datasets and mix.description


def test_world_mixes_load_with_required_columns(tiny_run):
    expected = {"world_pretrain": ["text"], "world_tokenizer": ["text"], "world_sft": ["messages"],
                "world_sft_multiturn": ["messages"]}  # fmt: skip
    for name, columns in expected.items():
        data = load_mix(REPO / "data_mixes" / f"{name}.yaml", tiny_run / "world")
        assert data["train"].column_names == columns and len(data["train"]) > 0
    qa = load_mix(REPO / "data_mixes" / "world_eval.yaml", tiny_run / "world")["train"]
    assert {"question", "answer", "aliases", "split"} <= set(qa.column_names)
    assert set(qa["split"]) == {"eval_known", "eval_rare", "never_seen"}


def test_mix_is_deterministic_and_hashed(tiny_run, tmp_path):
    a = load_mix(REPO / "data_mixes" / "world_pretrain.yaml", tiny_run / "world")
    b = load_mix(REPO / "data_mixes" / "world_pretrain.yaml", tiny_run / "world")
    assert a["train"]["text"] == b["train"]["text"] and a["test"]["text"] == b["test"]["text"]
    mix = read_mix(REPO / "data_mixes" / "world_pretrain.yaml")
    h = mix_hash(mix, tiny_run / "world")
    assert h == mix_hash(read_mix(REPO / "data_mixes" / "world_pretrain.yaml"), tiny_run / "world") and len(h) == 16
    mix.seed = 1
    assert mix_hash(mix, tiny_run / "world") != h
    local = _mix(
        tmp_path,
        f"kind: text\ndatasets:\n  - path: json\n    data_files: {_jsonl(tmp_path / 'a.jsonl', [{'text': 'x'}, {'text': 'y'}])}\n",
    )
    h1 = mix_hash(read_mix(local))
    _jsonl(tmp_path / "a.jsonl", [{"text": "x"}, {"text": "changed"}])
    assert mix_hash(read_mix(local)) != h1, "the hash follows the data, not only the config"


def test_renames_fractions_and_simpleqa_problem(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"body": f"a{i}", "id": i} for i in range(40)])
    b = _jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}"} for i in range(10)])
    mix = _mix(
        tmp_path,
        f"""kind: text
datasets:
  - {{path: json, data_files: {a}, columns: [body], rename_columns: {{body: text}}, fraction: 0.5}}
  - {{path: json, data_files: {b}, fraction: 0.5}}
""",
    )
    train = load_mix(mix)["train"]
    assert train.column_names == ["text"]
    assert sum(t.startswith("a") for t in train["text"]) == 10 == sum(t.startswith("b") for t in train["text"])
    qa = _jsonl(tmp_path / "qa.jsonl", [{"problem": "Who?", "answer": "Me", "topic": "x"}])
    data = load_mix(_mix(tmp_path, f"kind: qa\ndatasets:\n  - {{path: json, data_files: {qa}}}\n"))
    assert data["train"][0] == {"question": "Who?", "answer": "Me"}


def test_streaming_mix(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"text": f"t{i}"} for i in range(5)])
    data = load_mix(_mix(tmp_path, f"kind: text\nstreaming: true\ndatasets:\n  - {{path: json, data_files: {a}}}\n"))
    assert isinstance(data["train"], IterableDataset)
    assert sorted(r["text"] for r in data["train"]) == [f"t{i}" for i in range(5)]
    big = _jsonl(tmp_path / "big.jsonl", [{"text": f"big{i}"} for i in range(400)])
    mixed = _mix(
        tmp_path,
        f"kind: text\nstreaming: true\ndatasets:\n  - {{path: json, data_files: {big}, fraction: 0.8}}\n"
        f"  - {{path: json, data_files: {a}, fraction: 0.2}}\n",
    )
    rows = [r["text"] for r in load_mix(mixed)["train"]]
    assert sum(r.startswith("big") for r in rows) == 400, "every row of the largest source, once"
    small = sum(r.startswith("t") for r in rows)
    assert 40 < small < 200, f"the small source is repeated to about its share: {small}"
    assert any(r.startswith("t") for r in rows[:20]), "interleaved, not appended"


def _bad_cases(tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    good = _jsonl(tmp_path / "good.jsonl", [{"text": "hello"}])
    wrong = _jsonl(tmp_path / "wrong.jsonl", [{"body": "hello"}])
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    (tmp_path / "empty.jsonl").write_text("")
    return {
        "missing_column": (
            f"kind: text\ndatasets:\n  - {{path: json, data_files: {wrong}}}\n",
            ["source 0 (json:", "missing column 'text'"],
        ),
        "bad_json_row": (
            f"kind: text\ndatasets:\n  - {{path: json, data_files: {tmp_path / 'broken.jsonl'}}}\n",
            ["source 0 (json:", "broken.jsonl line 2 is not valid JSON"],
        ),
        "missing_file": (
            f"kind: text\ndatasets:\n  - {{path: json, data_files: {tmp_path / 'nope.jsonl'}}}\n",
            ["source 0 (json:", "nope.jsonl"],
        ),
        "empty": (
            f"kind: text\ndatasets:\n  - {{path: json, data_files: {tmp_path / 'empty.jsonl'}}}\n",
            ["source 0 (json:", "no rows"],
        ),
        "unknown_source_key": (
            f"kind: text\ndatasets:\n  - {{path: json, data_files: {good}, colums: [text]}}\n",
            ["source 0", "unknown key 'colums'"],
        ),
        "unknown_mix_key": (
            f"kind: text\nstreem: true\ndatasets:\n  - {{path: json, data_files: {good}}}\n",
            ["unknown key 'streem'"],
        ),
        "partial_fraction": (
            f"kind: text\ndatasets:\n  - {{path: json, data_files: {good}, fraction: 0.5}}\n  - {{path: json, data_files: {good}}}\n",
            ["'fraction' must be set for all sources or none"],
        ),
        "unknown_kind": (f"kind: images\ndatasets:\n  - {{path: json, data_files: {good}}}\n", ["kind 'images'"]),
        "bad_world_view": (
            "kind: text\ndatasets:\n  - {path: world, name: bios}\n",
            ["source 0 (world/bios)", "name: one of"],
        ),
        "bad_world_split": (
            "kind: text\ndatasets:\n  - {path: world, name: documents, world_splits: [train]}\n",
            ["unknown world split 'train'"],
        ),
        "rename_missing": (
            f"kind: text\ndatasets:\n  - {{path: json, data_files: {wrong}, rename_columns: {{content: text}}}}\n",
            ["cannot rename missing column 'content'"],
        ),
        "columns_lack_required": (
            f"kind: text\ndatasets:\n  - {{path: json, data_files: {good}, columns: [body]}}\n",
            ["give no 'text' column"],
        ),
        "no_sources": ("kind: text\ndatasets: []\n", ["'datasets' must be a non-empty list"]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing_column",
        "bad_json_row",
        "missing_file",
        "empty",
        "unknown_source_key",
        "unknown_mix_key",
        "partial_fraction",
        "unknown_kind",
        "bad_world_view",
        "bad_world_split",
        "rename_missing",
        "columns_lack_required",
        "no_sources",
    ],
)
def test_bad_mix_names_file_source_and_column(tmp_path, tiny_run, case):
    text, needles = _bad_cases(tmp_path)[case]
    mix = _mix(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_mix(mix, tiny_run / "world")
    message = str(info.value)
    assert str(mix) in message
    for needle in needles:
        assert needle in message, message


def test_tokenizer_recipe_rejects_bad_mixes(tmp_path, tiny_run):
    wrong = _jsonl(tmp_path / "wrong.jsonl", [{"body": "hello"}])
    mix = _mix(tmp_path, f"kind: text\ndatasets:\n  - {{path: json, data_files: {wrong}}}\n")
    out = tmp_path / "tok"
    proc = recipe_here(
        "tokenizer", "--config", "recipes/world/tokenizer.yaml", "--data_mix", str(mix), "--output_dir", str(out)
    )
    assert proc.returncode == 2
    assert_one_line_error(proc, str(mix), "source 0 (json:", "missing column 'text'")
    assert not out.exists()
    proc = recipe_here(
        "tokenizer",
        "--config",
        "recipes/world/tokenizer.yaml",
        "--data_mix",
        "data_mixes/world_sft.yaml",
        "--run_dir",
        str(tiny_run),
        "--output_dir",
        str(out),
    )
    assert_one_line_error(proc, "data_mixes/world_sft.yaml", "'text' mix, not 'conversations'")


def test_hub_source_without_network_is_one_line(tmp_path):
    mix = _mix(tmp_path, "kind: text\ndatasets:\n  - {path: no-such-user/no-such-dataset, split: train}\n")
    proc = recipe(
        "tokenizer",
        "--config",
        "recipes/world/tokenizer.yaml",
        "--data_mix",
        str(mix),
        "--output_dir",
        str(tmp_path / "tok"),
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert_one_line_error(proc, "no-such-user/no-such-dataset", "cannot load")


def test_tokenizer_trains_on_a_local_streaming_mix(tmp_path):
    texts = [{"text": f"Person {i} was born in city number {i % 7} and studied topic {i % 5}."} for i in range(300)]
    data = _jsonl(tmp_path / "t.jsonl", texts)
    mix = _mix(tmp_path, f"kind: text\nstreaming: true\ndatasets:\n  - {{path: json, data_files: {data}}}\n")
    out = tmp_path / "tok"
    proc = recipe(
        "tokenizer",
        "--config",
        "recipes/world/tokenizer.yaml",
        "--data_mix",
        str(mix),
        "--output_dir",
        str(out),
        "--run_dir",
        str(tmp_path),
        "--vocab_size",
        "400",
        "--heldout_texts",
        "50",
    )
    assert_ok(proc)
    assert "over 50 texts" in proc.stdout and (out / "tokenizer.json").is_file()
