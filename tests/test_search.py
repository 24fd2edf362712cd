"""Search when unsure (issue 24): the BM25 index over the run's corpus, tool calls in the chat template (rendered
and parsed with transformers), the probe's search conversations, the search stage and its eval with the tool."""

from __future__ import annotations

import json

import pytest
from conftest import assert_ok, random_base, recipe, recipe_here
from transformers import AutoTokenizer

from posttrain import world as W
from posttrain.chat_template import enable_tools
from posttrain.tools import (
    NO_RESULTS,
    SearchIndex,
    citations,
    corpus_docs,
    format_hits,
    parse_reply,
    run_index,
    search_tool,
    tool_call,
)


@pytest.fixture(scope="module")
def world(tiny_run):
    return W.load_world(tiny_run / "world")


def test_index_finds_a_person_by_name_with_stable_ids_and_survives_save_and_load(world, tmp_path):
    names = W.person_names(world)
    docs = corpus_docs(world)
    index = SearchIndex.build(docs)
    row = next(r for r in world["documents"] if r["split"] == "eval_rare")  # one biography: exactly one hit names it
    name = names[row["person_id"]]
    hits = index.search(name, k=3)
    assert hits and hits[0].text == row["text"] and docs[hits[0].doc_id]["text"] == row["text"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and hits[-1].score > 0
    index.save(tmp_path / "idx")
    again = SearchIndex.load(tmp_path / "idx")
    assert [(h.doc_id, h.score) for h in again.search(name, k=3)] == [(h.doc_id, h.score) for h in hits]
    assert index.search("", k=2) == [] and format_hits([], 100) == NO_RESULTS


def test_the_runs_index_is_built_once_and_saved_beside_it(tiny_run, tmp_path):
    built = run_index(tmp_path, tiny_run / "world")
    assert (tmp_path / "search_index" / "docs.jsonl").is_file() and len(built.docs) == len(
        W.load_world(tiny_run / "world")["documents"]
    )
    loaded = run_index(tmp_path, tmp_path / "no_world_needed_now")
    assert loaded.docs == built.docs


def test_results_are_whole_sentences_within_the_token_budget(world):
    index = SearchIndex.build(corpus_docs(world))
    name = W.person_names(world)[world["documents"][0]["person_id"]]
    text = format_hits(index.search(name, k=3), budget_tokens=25)
    assert text.startswith("[doc ") and sum(len(line.split()) - 2 for line in text.splitlines()) <= 25
    assert all(line.rstrip().endswith((".", "!", "?")) for line in text.splitlines()), "whole sentences only"
    assert citations(text) and all(0 <= d < len(world["documents"]) for d in citations(text))


def test_tool_calls_render_in_the_template_and_parse_back(tiny_run):
    tok = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    plain = [{"role": "user", "content": "Where was Ada born?"}, {"role": "assistant", "content": "In Dunmere."}]
    assert tok.apply_chat_template(plain, tokenize=False) == (
        "<|endoftext|><|im_start|>user\nWhere was Ada born?<|im_end|>\n<|im_start|>assistant\nIn Dunmere.<|im_end|>\n"
    ), "a conversation without tools renders as plain ChatML, byte for byte"
    assert enable_tools(tok) == [], "posttrain's tokenizer renders and parses tool calls already"
    search = search_tool(SearchIndex.build([{"id": 7, "text": "Ada Velmor was born in Dunmere."}]))
    conv = [plain[0], tool_call("Ada Velmor"), {"role": "tool", "name": "search", "content": search("Ada Velmor")},
            {"role": "assistant", "content": "Ada Velmor was born in Dunmere [doc 7]."}]  # fmt: skip
    text = tok.apply_chat_template(conv, tools=[search], tokenize=False)
    assert '"name": "search"' in text.split("<|im_start|>user")[0], "the tool's schema is listed before the turns"
    assert '<tool_call>{"name": "search", "arguments": {"query": "Ada Velmor"}}</tool_call><|im_end|>' in text
    assert "<|im_start|>tool\n[doc 7] Ada Velmor was born in Dunmere.<|im_end|>" in text
    call = parse_reply(tok, '<tool_call>{"name": "search", "arguments": {"query": "Ada Velmor"}}</tool_call>')
    assert call["tool_calls"][0]["function"] == {"name": "search", "arguments": {"query": "Ada Velmor"}}
    assert parse_reply(tok, "In Dunmere [doc 7].")["content"] == "In Dunmere [doc 7]."
    assert parse_reply(tok, '<tool_call>{"name": "sea')["content"].startswith("<tool_call>"), "malformed: plain text"
    # only the assistant's turns are trained: the tool's output is masked out
    enc = tok.apply_chat_template(
        conv, tools=[search], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    assert "<tool_call>" in trained and "[doc 7]." in trained and "Ada Velmor was born in Dunmere. " not in trained
    assert "[doc 7] Ada Velmor" not in trained


def test_smollm2_template_gains_tool_calls(converted):
    tok = AutoTokenizer.from_pretrained(converted)
    changes = enable_tools(tok)
    assert changes, "SmolLM2's own ChatML drops tool calls: swapped for posttrain's, with a response template"
    msgs = [{"role": "user", "content": "hi"}, tool_call("Lisbon")]
    assert '"query": "Lisbon"' in tok.apply_chat_template(msgs, tokenize=False)


@pytest.mark.slow
def test_search_stage_end_to_end(tiny_run, tmp_path):
    """SFT → probe (writes search conversations over the run's index) → the search stage → its eval with the tool."""
    from test_sft import TINY_SFT

    run_dir = random_base(tiny_run, tmp_path / "run")
    assert_ok(recipe_here("recipes/sft.py", "--config", "recipes/world/sft.yaml", "--run_dir", str(run_dir), *TINY_SFT))
    assert_ok(recipe("probe", "--config", "recipes/world/probe.yaml", "--run_dir", str(run_dir), "--num_samples", "2",
                     "--max_new_tokens", "6", "--gate_baselines", "false", "--search_sft", "true"))  # fmt: skip
    stats = json.loads((run_dir / "probe" / "summary.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "probe" / "search_sft.jsonl").read_text().splitlines()]
    assert len(rows) == stats["search_sft"] > 0 and (run_dir / "search_index" / "docs.jsonl").is_file()
    docs = {
        d["id"]: d["text"] for d in map(json.loads, (run_dir / "search_index" / "docs.jsonl").read_text().splitlines())
    }
    judged = {
        j["question"]: j for j in map(json.loads, (run_dir / "probe" / "judgments.jsonl").read_text().splitlines())
    }
    kinds = set()
    for r in rows:
        assert json.loads(r["tools"])[0]["function"]["name"] == "search"
        m = r["messages"]
        j = judged.get(m[0]["content"])
        if len(m) == 4:  # searched: the cited document states the answer; a stranger's search ends in a refusal
            assert m[1]["tool_calls"][0]["function"]["arguments"]["query"] and m[2]["role"] == "tool"
            cited = citations(m[3]["content"])
            if cited:
                kinds.add("cited")
                assert j["answer"] in docs[cited[0]] and j["name"] in docs[cited[0]]
            else:
                kinds.add("declined")
                assert j is None or j["split"] == "stranger" or j["label"] != "known"
            if j is not None and j["split"] == "stranger":
                assert not cited, "nothing found about a stranger is cited"
        elif j is not None:
            kinds.add("answered")
            assert j["label"] == "known"
    assert {"cited", "declined"} <= kinds
    proc = recipe("sft", "--config", "recipes/world/search.yaml", "--run_dir", str(run_dir), *TINY_SFT,
                  "--max_length", "384", "--eval_max_per_bucket", "4")  # fmt: skip
    assert_ok(proc)
    result = json.loads((run_dir / "eval" / "search.json").read_text())
    tool = result["tool"]
    assert tool["name"] == "search" and set(tool["searches_per_question"]) == {"known", "rare", "never_seen"}
    assert all(0 <= v <= 1 for v in tool["searches_per_question"].values())
    records = [json.loads(x) for x in (run_dir / "eval" / "search_samples.jsonl").read_text().splitlines()]
    assert all("searched" in r and "cited" in r for r in records)
    assert "search" in (run_dir / "report.md").read_text()
    # GRPO with the tool: TRL runs the call, the tool's result goes into the completion, rewards read the final answer
    from test_rl import TINY_GRPO

    assert_ok(recipe("grpo", "--config", "recipes/world/search_grpo.yaml", "--run_dir", str(run_dir), *TINY_GRPO,
                     "--max_completion_length", "96", "--eval_max_per_bucket", "4", "--eval_num_samples", "0"))  # fmt: skip
    steps, rewards = json.loads((run_dir / "search_grpo" / "rewards.json").read_text())
    assert steps and {"factuality", "format", "citation", "search_cost"} <= set(rewards)
    assert all(v is None or v <= 0 for v in rewards["search_cost"]) and all(
        -1 <= v <= 1 for v in rewards["citation"] if v is not None
    )
    assert json.loads((run_dir / "eval" / "search_grpo.json").read_text())["tool"]["name"] == "search"
