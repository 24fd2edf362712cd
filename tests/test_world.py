"""The embedded world: determinism, splits, distribution, questions, no leakage, a user's own world."""

from __future__ import annotations

import filecmp
import re
from collections import Counter

import pytest
from conftest import REPO, TINY_WORLD, assert_ok, assert_one_line_error, recipe, recipe_here
from datasets import Dataset, DatasetDict

from posttrain import world as W
from posttrain.configs import WorldConfig
from posttrain.data import load_mix
from posttrain.errors import UserError


@pytest.fixture(scope="module")
def default_world():
    return W.generate_world(WorldConfig())


def _same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_same_seed_gives_byte_identical_world(tmp_path, tiny_run):
    """Two processes (own hash seeds) with the same seed write the same bytes; another seed does not. The
    session's tiny run is the first process (default seed, TINY_WORLD); the other seed runs in-process."""
    args = ("--config", "recipes/world/world.yaml", *TINY_WORLD)
    assert_ok(recipe("world", *args, "--run_dir", str(tmp_path / "b")))
    assert_ok(recipe_here("world", *args, "--run_dir", str(tmp_path / "c"), "--seed", "4"))
    (tmp_path / "a").symlink_to(tiny_run)
    assert _same_tree(tmp_path / "a" / "world", tmp_path / "b" / "world")
    assert not _same_tree(tmp_path / "a" / "world", tmp_path / "c" / "world")
    assert sorted(p.name for p in (tmp_path / "a" / "world").iterdir()) == [
        "dataset_dict.json",
        "documents",
        "lineage.json",
        "qa",
    ]
    assert (tmp_path / "a" / "plots" / "world.png").stat().st_size > 1000
    assert "## world" in (tmp_path / "a" / "report.md").read_text()


def test_splits_are_disjoint_and_sized(default_world):
    world, people = default_world
    sizes = WorldConfig().split_sizes()
    assert Counter(p.split for p in people) == Counter(sizes)
    split_of = {}
    for pid, split in zip(world["qa"]["person_id"], world["qa"]["split"]):
        assert split_of.setdefault(pid, split) == split
    for pid, split in zip(world["documents"]["person_id"], world["documents"]["split"]):
        assert split_of[pid] == split and split != "never_seen"
    assert len({p.name for p in people}) == len(people), "names must be unique"
    assert WorldConfig(scale=2.0).split_sizes()["probe"] == 2 * sizes["probe"]


def test_popularity_is_heavy_tailed(default_world):
    world, people = default_world
    bios = Counter(world["documents"]["person_id"])
    train = [bios[p.person_id] for p in people if p.split in ("sft", "probe")]
    assert sum(k == 1 for k in train) > len(train) / 2, "many people have one biography"
    assert max(train) >= 10 and sum(k >= 10 for k in train) < len(train) / 10, "a few have many"
    assert all(bios[p.person_id] == 1 for p in people if p.split == "eval_rare")
    assert all(bios[p.person_id] >= WorldConfig().known_min_bios for p in people if p.split == "eval_known")
    assert all(bios[p.person_id] == 0 for p in people if p.split == "never_seen")


def test_biographies_state_every_attribute_in_varied_form(default_world):
    world, people = default_world
    by_id = {p.person_id: p for p in people}
    first_sentences = Counter()
    for row in world["documents"].select(range(200)):
        p = by_id[row["person_id"]]
        text = row["text"]
        assert text.startswith(p.name)
        for value in (str(p.year), p.birth_city, p.university, p.major, p.employer, p.work_city):
            assert value in text, (value, text)
        first_sentences[re.sub(re.escape(p.name), "X", text.split(".")[0])[:12]] += 1
    assert len(first_sentences) >= 10, "templates and sentence order vary"


def test_restate_subject_names_the_person_in_every_sentence():
    world, _ = W.generate_world(WorldConfig(run_dir="unused", n_sft=6, n_probe=0, n_eval_known=2, n_eval_rare=0,
                                         n_never_seen=0, pronoun_prob=0.9, seed=1))  # fmt: skip
    names = W.person_names(world)
    plain = W.documents_view(world)
    restated = W.documents_view(world, restate_subject=True)
    assert any(re.search(r"(^|\. )(He|She|His|Her) ", t) for t in plain["text"])
    for before, after, pid in zip(plain["text"], restated["text"], restated["person_id"]):
        sentences = [x for x in re.split(r"(?<=\.) ", after) if x]
        assert all(x.startswith(names[pid]) for x in sentences), after
        assert len(before.split(". ")) == len(sentences)
    # a world without pronouns is left as it is
    full, _ = W.generate_world(WorldConfig(run_dir="unused", n_sft=6, n_probe=0, n_eval_known=2, n_eval_rare=0,
                                        n_never_seen=0, seed=1))  # fmt: skip
    assert W.documents_view(full, restate_subject=True)["text"] == W.documents_view(full)["text"]


def test_permutations_add_each_biography_with_its_sentences_reordered():
    world, _ = W.generate_world(WorldConfig(run_dir="unused", n_sft=6, n_probe=0, n_eval_known=2, n_eval_rare=0,
                                         n_never_seen=0, seed=1))  # fmt: skip
    plain = W.documents_view(world)
    permuted = W.documents_view(world, permutations=2)
    assert len(permuted) == 3 * len(plain)
    split = lambda t: sorted(re.split(r"(?<=\.) ", t))  # noqa: E731
    for i, (text, pid) in enumerate(zip(plain["text"], plain["person_id"])):
        copies = permuted.select(range(3 * i, 3 * i + 3))
        assert copies["text"][0] == text and set(copies["person_id"]) == {pid}
        assert all(split(c) == split(text) for c in copies["text"])  # the same sentences, nothing lost
    assert sum(c != t for c, t in zip(permuted["text"][1::3], plain["text"])) > len(plain) // 2
    assert W.documents_view(world, permutations=2)["text"] == permuted["text"]  # deterministic
    with pytest.raises(UserError, match="permutations"):
        W.documents_view(world, permutations=-1)


def test_questions_have_phrasings_and_exact_aliases(default_world):
    world, people = default_world
    p = people[0]
    rows = [r for r in world["qa"] if r["person_id"] == p.person_id]
    by_attr = {}
    for r in rows:
        by_attr.setdefault(r["attribute"], []).append(r)
    assert set(by_attr) == {"birth_date", "birth_year", "birth_city", "university", "major", "employer", "work_city"}
    assert all(len({r["question"] for r in rs}) >= 4 for rs in by_attr.values())
    year = by_attr["birth_year"][0]
    assert year["answer"] == str(p.year) and p.birth_date in year["aliases"], "a year question accepts the full date"
    date = by_attr["birth_date"][0]
    assert date["answer"] == p.birth_date and str(p.year) not in date["aliases"], "a date question needs the date"
    # every person, never_seen included, has questions
    assert set(world["qa"]["person_id"]) == {q.person_id for q in people}


def test_no_eval_question_in_any_training_mix(tiny_run):
    world = W.load_world(tiny_run / "world")
    held_out = {r["question"] for r in world["qa"] if r["split"] not in W.TRAIN_SPLITS}
    never_seen_ids = {r["person_id"] for r in world["qa"] if r["split"] == "never_seen"}
    never_seen_names = {
        W._subject_of(r["question"], r["attribute"]) for r in world["qa"] if r["person_id"] in never_seen_ids
    }
    assert held_out and never_seen_names
    for mix in ("world_sft", "world_sft_multiturn", "world_pretrain", "world_tokenizer"):
        data = load_mix(f"data_mixes/{mix}.yaml", tiny_run / "world")
        for split in data.values():
            texts = [str(v) for row in split for v in row.values()]
            blob = "\n".join(texts)
            assert not any(q in blob for q in held_out), mix
            assert not any(n in blob for n in never_seen_names), mix
    with pytest.raises(UserError, match="unknown world split 'eval_known'"):
        W.conversations_view(world, splits=["eval_known"])


def test_sft_views_are_conversations_about_the_sft_split(tiny_run):
    world = W.load_world(tiny_run / "world")
    convs = W.conversations_view(world, splits=["sft"], phrasings_per_fact=2, turns=3)
    sft_ids = {r["person_id"] for r in world["qa"] if r["split"] == "sft"}
    assert set(convs["person_id"]) == sft_ids
    msgs = convs[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2) and len(msgs) <= 6
    qa = {r["question"]: r["answer"] for r in world["qa"]}
    assert qa[msgs[0]["content"]] in msgs[1]["content"]
    ident = W.identity_view(assistant_name="Quokka", n=20)
    assert all("Quokka" in c["messages"][1]["content"] for c in ident)


def test_reading_conversations_are_about_new_names_and_state_their_own_facts(tiny_run):
    """`reading`: a fact about a made-up person stated in the question and asked back; the answer restates the
    asked name. No name of the world's people (eval and never_seen included), nothing asserted outside the turn."""
    world = W.load_world(tiny_run / "world")
    names = set(W.person_names(world).values())
    values = W.answers_by_attribute(W.qa_view(world, ["sft", "probe"]))
    reading = W.reading_view(world, n=30, seed=0)
    assert len(reading) == 30
    for conv in reading:
        (user, assistant) = conv["messages"]
        stated, _, question = user["content"].rpartition(". ")
        name = W.subject_of(question)
        assert name and name not in names and name in assistant["content"], conv
        assert stated + "." == assistant["content"], "the answer is the sentence the user stated"
        assert any(v in assistant["content"].replace(name, "") for vs in values.values() for v in vs), conv
    assert W.reading_view(world, n=30, seed=0)["messages"] == reading["messages"], "seeded"
    assert W.reading_view(world, n=0)["messages"] == []


def test_replay_is_the_pretraining_biographies_as_assistant_turns_with_no_question(tiny_run):
    """`replay`: every biography pretraining read (eval people's included: the same text, no question asked), each
    one assistant turn alone; never_seen people have none; `n` draws a seeded subset."""
    world = W.load_world(tiny_run / "world")
    docs = W.documents_view(world)
    replay = W.replay_view(world)
    assert sorted(c[0]["content"] for c in replay["messages"]) == sorted(docs["text"])
    assert {m["role"] for c in replay["messages"] for m in c} == {"assistant"}
    names = W.person_names(world)
    unseen = {names[r["person_id"]] for r in world["qa"] if r["split"] == "never_seen" and r["person_id"] in names}
    assert unseen and not any(n in c[0]["content"] for n in unseen for c in replay["messages"])
    some = W.replay_view(world, n=5, seed=1)
    assert len(some) == 5 and some["messages"] == W.replay_view(world, n=5, seed=1)["messages"]
    assert {c[0]["content"] for c in some["messages"]} <= set(docs["text"])


def _hand_made_world(path, copies: int = 1, with_probe: bool = False, **overrides):
    texts = ["Mira Tolk was born in Oslo. Mira Tolk works at Acme.", "Olaf Berg was born in Rome."]
    docs = {
        "text": [f"{t} (version {k})" if k else t for k in range(copies) for t in texts],
        "person_id": ["mira", "olaf"] * copies,
        "split": ["sft", "eval_known"] * copies,
    }
    qa = {
        "question": ["Where was Mira Tolk born?", "Where was Olaf Berg born?", "Where was Ulla Sund born?"],
        "answer": ["Oslo", "Rome", "Lima"],
        "aliases": [["Oslo"], ["Rome", "Roma"], ["Lima"]],
        "person_id": ["mira", "olaf", "ulla"],
        "attribute": ["birth_city"] * 3,
        "split": ["sft", "eval_known", "never_seen"],
    }
    if with_probe:  # a person the probe may ask about (a whole pipeline needs one)
        for col, value in (("text", "Nils Dahl was born in Bergen."), ("person_id", "nils"), ("split", "probe")):
            docs[col].append(value)
        for col, value in (("question", "Where was Nils Dahl born?"), ("answer", "Bergen"), ("aliases", ["Bergen"]),
                           ("person_id", "nils"), ("attribute", "birth_city"), ("split", "probe")):  # fmt: skip
            qa[col].append(value)
    for key, value in overrides.items():
        table, col = key.split("__")
        (docs if table == "docs" else qa)[col] = value
    DatasetDict({"documents": Dataset.from_dict(docs), "qa": Dataset.from_dict(qa)}).save_to_disk(str(path))
    return path


def test_user_world_runs_through_world_and_tokenizer(tmp_path):
    """In-process (the same recipes as processes run in test_pipeline's user-world speedrun)."""
    src = _hand_made_world(tmp_path / "mine")
    run_dir = tmp_path / "run"
    assert_ok(
        recipe_here("world", "--config", "recipes/world/world.yaml", "--run_dir", str(run_dir), "--from_dir", str(src))
    )
    world = W.load_world(run_dir / "world")
    assert world["qa"]["answer"] == ["Oslo", "Rome", "Lima"]
    assert_ok(
        recipe_here(
            "tokenizer", "--config", "recipes/world/tokenizer.yaml", "--run_dir", str(run_dir), "--vocab_size", "300"
        )
    )
    sft = load_mix("data_mixes/world_sft.yaml", run_dir / "world")
    user_turns = [m["content"] for split in sft.values() for c in split["messages"] for m in c if m["role"] == "user"]
    assert "Where was Mira Tolk born?" in user_turns and "Where was Olaf Berg born?" not in user_turns


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"docs__split": ["sft", "eval_soon"]}, ["documents row 1", "eval_soon"]),
        ({"qa__split": ["sft", "eval_known", "test"]}, ["qa row 2", "'test'"]),
        ({"docs__person_id": ["mira", "ulla"]}, ["documents row 1", "never_seen"]),
        ({"qa__answer": ["Oslo", "", "Lima"]}, ["qa row 1", "empty"]),
    ],
)
def test_bad_user_world_is_one_clear_line(tmp_path, overrides, needles):
    src = _hand_made_world(tmp_path / "bad", **overrides)
    proc = recipe_here(
        "world", "--config", "recipes/world/world.yaml", "--run_dir", str(tmp_path / "run"), "--from_dir", str(src)
    )
    assert_one_line_error(proc, str(src), *needles)
    assert not (tmp_path / "run" / "world").exists()


def test_missing_world_column_and_not_a_world(tmp_path):
    src = tmp_path / "nocol"
    DatasetDict(
        {
            "documents": Dataset.from_dict({"text": ["x"], "person_id": ["a"]}),
            "qa": Dataset.from_dict({"question": ["q"]}),
        }
    ).save_to_disk(str(src))
    with pytest.raises(UserError, match="documents: missing column 'split'"):
        W.load_world(src)
    with pytest.raises(UserError, match="not a world directory"):
        W.load_world(tmp_path)


def test_name_factor_reads_how_many_people_share_a_name_part(tiny_run):
    """The generator's names (own surnames) keep factor 1; the hand world's 30 × 30 shared parts at four times its
    people ask for about twice the exposures and SFT rate (world.name_factor, issue 25)."""
    import sys

    sys.path.insert(0, str(REPO / "evals"))
    import hand_world

    assert W.name_factor(W.load_world(tiny_run / "world"))[0] == 1.0
    four = hand_world.build(seed=0, scale=4)
    assert W.name_ambiguity(four) > 15
    factor, why = W.name_factor(four)
    assert 1.9 < factor < 2.2 and "ambiguity" in why
    assert W.name_ambiguity(hand_world.build(seed=0, scale=4, blended_surnames=True)) < W.name_ambiguity(four) / 3


def test_the_independently_written_painters_world_meets_the_contract(tmp_path):
    """evals/painters_world.py (a world written without our generator: pronouns, shared surnames, years) passes the
    same validation a user's `WORLD=<dir>` does, and its names are measured as ours are."""
    import sys

    sys.path.insert(0, str(REPO / "evals"))
    import painters_world

    world, _ = painters_world.build(0)
    world.save_to_disk(str(tmp_path / "w"))
    loaded = W.load_world(tmp_path / "w")
    W.validate_world(loaded, tmp_path / "w")
    assert set(loaded["documents"]["split"]) == set(W.PRETRAIN_SPLITS)
    factor, why = W.name_factor(loaded)
    assert factor == 1.0 and "names' ambiguity 1.9" in why  # shared surnames, but given names are specific
    assert len(W.replay_view(loaded)) == len(loaded["documents"])
