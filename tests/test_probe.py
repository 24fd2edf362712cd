"""Self-probing (issue 7, first part): snippets, questions, judgments, labels, datasets; the recipe end to end."""

from __future__ import annotations

import json
import random

import pytest
from conftest import REPO, assert_ok, random_base, recipe, recipe_here
from transformers import AutoTokenizer

from posttrain import probe
from posttrain.configs import ProbeConfig, parse_config
from posttrain.errors import UserError
from posttrain.evals.grading import is_abstention
from posttrain.world import load_world


@pytest.fixture(scope="module")
def world(tiny_run):
    return load_world(tiny_run / "world")


def test_snippets_and_questions_stay_in_training_splits(world):
    snippets = probe.world_snippets(world, ["probe"], per_person=2, seed=0)
    probe_people = {p for p, s in zip(world["documents"]["person_id"], world["documents"]["split"]) if s == "probe"}
    assert {s["person_id"] for s in snippets} == probe_people
    questions = probe.world_questions(snippets, world, seed=0)
    assert questions and {q["split"] for q in questions} == {"probe"}
    assert len({(q["person_id"], q["attribute"]) for q in questions}) == len(questions), "de-duplicated"
    assert all(q["answer"] in q["context"] for q in questions), "only facts the snippet states"
    for bad in (["eval_known"], ["never_seen"]):
        with pytest.raises(UserError, match="unknown world split"):
            probe.world_snippets(world, bad)


def test_strangers_are_new_names_made_of_the_worlds_own_parts(world):
    from posttrain import world as world_lib

    names = world_lib.person_names(world)
    assert len(names) == len(set(world["qa"]["person_id"])), "every person's name recovered from the questions"
    taken = set(names.values())
    firsts = {n.rsplit(" ", 1)[0] for n in taken}
    lasts = {n.rsplit(" ", 1)[1] for n in taken}
    strangers = world_lib.stranger_questions(world, 40, seed=0)
    assert len(strangers) == 40 and len({s["name"] for s in strangers}) == 40
    for s in strangers:
        first, last = s["name"].rsplit(" ", 1)
        assert s["name"] not in taken and first in firsts and last in lasts, s  # never_seen people included
        assert s["name"] in s["question"] and s["split"] == "stranger" and s["answer"] == ""
        assert not any(n in s["question"] for n in taken), "no real person's name left in the question"
    # every informative answer about a stranger is wrong, an abstention is an abstention
    graded = probe.judge_samples(strangers[:1], [["X was born in Oslo.", "I don't know."]])
    assert graded[0]["grades"] == ["incorrect", "not_attempted"]
    firsts_lasts = len(firsts) * len(lasts) - len(taken)
    assert len(world_lib.stranger_questions(world, 10**6)) == firsts_lasts // 2, "a small world gives what it has"
    # a world with few new combinations asks several questions about each new name, about different attributes
    many = world_lib.stranger_questions(world, 10**6, per_name=3)
    assert len(many) == 3 * (firsts_lasts // 2)
    by_name = {}
    for s in many:
        by_name.setdefault(s["name"], set()).add(s["attribute"])
    assert len(by_name) == firsts_lasts // 2 and all(len(a) == 3 for a in by_name.values())
    reading = world_lib.reading_view(world, n=firsts_lasts)  # more than the names it has: ~2 questions a name
    assert len(reading) == firsts_lasts


def test_names_of_a_users_own_world_come_from_what_its_questions_share():
    from datasets import Dataset, DatasetDict

    from posttrain import world as world_lib

    qa = Dataset.from_list([
        {"question": "When did Dr. Mara O. Quill found the lighthouse?", "answer": "1901", "aliases": [],
         "person_id": "a", "attribute": "founded", "split": "sft"},
        {"question": "Which island was Dr. Mara O. Quill born on?", "answer": "Skye", "aliases": [],
         "person_id": "a", "attribute": "island", "split": "sft"},
        {"question": "Who taught Tom Reyes to sail?", "answer": "his aunt", "aliases": [],
         "person_id": "b", "attribute": "teacher", "split": "probe"},
        {"question": "Where does Tom Reyes keep his boat?", "answer": "Oban", "aliases": [],
         "person_id": "b", "attribute": "harbour", "split": "probe"},
    ])  # fmt: skip
    world = DatasetDict({"qa": qa, "documents": Dataset.from_list([{"text": "x", "person_id": "a", "split": "sft"}])})
    assert world_lib.person_names(world) == {"a": "Dr. Mara O. Quill", "b": "Tom Reyes"}
    strangers = world_lib.stranger_questions(world, 2, seed=0)
    # two new combinations exist; a small world gives at most half of them
    assert len(strangers) == 1
    assert strangers[0]["name"] in {"Dr. Mara O. Reyes", "Tom Quill"}
    assert strangers[0]["question"].count(strangers[0]["name"]) == 1 and strangers[0]["answer"] == ""


def test_model_question_parsing_and_the_answerable_filter():
    reply = "Question: Where was Ada Velmor born?\nAnswer: Lisbon."
    assert probe.parse_question(reply) == ("Where was Ada Velmor born?", "Lisbon")
    assert probe.parse_question("Ada Velmor was born in Lisbon.") is None
    assert probe.parse_question("Question: Ada Velmor\nAnswer: Lisbon") is None, "not a question"
    ctx = "Ada Velmor was born in Lisbon. She works for Granary Bank."
    assert probe.answerable("Where was Ada Velmor born?", "Lisbon", ctx)
    assert not probe.answerable("Where was Ada Velmor born?", "Porto", ctx), "answer not in the snippet"
    assert not probe.answerable("Was Ada Velmor born in Lisbon?", "Lisbon", ctx), "question gives it away"
    assert not probe.answerable("Where?", "Ada Velmor was born in Lisbon she works for Granary", ctx), "too long"
    snippets = probe.text_snippets(["One. Two three. " * 40, "Short text."], n=2, seed=0, max_chars=50)
    assert len(snippets) == 2 and all(len(s["context"]) <= 50 for s in snippets)
    assert {s["context"] for s in snippets} >= {"Short text."}


def test_judgments_labels_and_targets():
    q = {"question": "Where was Ada Velmor born?", "answer": "Oslo", "aliases": [], "candidates": ["Oslo", "Rome"],
         "person_id": "p1", "attribute": "birth_city", "split": "probe"}  # fmt: skip
    rows = probe.judge_samples(
        [q, q, q],
        [["Ada Velmor was born in Oslo."] * 4,
         ["Ada Velmor was born in Rome."] * 3 + ["I don't know."],
         ["Ada Velmor was born in Oslo.", "Rome.", "I don't know.", "Rome."]],
    )  # fmt: skip
    assert [r["p_correct"] for r in rows] == [1.0, 0.0, 0.25]
    assert [r["p_wrong"] for r in rows] == [0.0, 0.75, 0.5]
    assert rows[1]["p_informative"] == 0.75
    targets = probe.training_targets(rows, probe.LabelRule(0.75, 0.0, 0.5), mixed="skip", seed=0)
    assert [t["label"] for t in targets] == ["known", "unknown", "mixed"]
    assert targets[0]["target"] == "Ada Velmor was born in Oslo."
    assert is_abstention(targets[1]["target"]) and "Ada Velmor" in targets[1]["target"], "refusal names the person"
    assert targets[2]["target"] is None
    refused = probe.training_targets(rows, probe.LabelRule(), mixed="refuse")
    assert is_abstention(refused[2]["target"])
    convs = probe.refusal_conversations(targets)
    assert len(convs) == 2 and convs[1]["messages"][1]["content"] == targets[1]["target"]
    pairs = probe.preference_pairs(targets)
    assert [p["pair_type"] for p in pairs] == ["correct_over_refusal", "refusal_over_wrong", "correct_over_wrong"]
    low = probe.training_targets(rows, probe.LabelRule(0.25, 0.0, 0.5), mixed="skip", seed=0)
    assert [t["label"] for t in low] == ["known", "unknown", "known"], "1 of 4 right: an answer target"
    assert [p["pair_type"] for p in probe.preference_pairs(low, known_min=0.5)] == [
        "correct_over_refusal",
        "refusal_over_wrong",
        "correct_over_wrong",
    ], "... but no 'right answer beats a refusal' pair below pair_known_min"
    assert [p["pair_type"] for p in probe.preference_pairs(low)].count("correct_over_refusal") == 2
    assert pairs[1]["rejected"][0]["content"] == "Ada Velmor was born in Rome."
    assert (pairs[2]["chosen"][0]["content"], pairs[2]["rejected"][0]["content"]) == (
        "Ada Velmor was born in Oslo.",
        "Rome.",
    ), "mixed: right > wrong"
    counts = {"known": 1, "unknown": 1, "mixed": 1, "abstained": 0}
    assert probe.summary(targets) == {"questions": 3, **counts, "with_target": 2,
                                      "labels_by_split": {"probe": counts}}  # fmt: skip
    # a re-probed refusal model that declines is 'abstained' (not wrong), and keeps its refusal as the target
    declined = probe.judge_samples([q], [["I don't know where Ada Velmor was born."] * 3 + ["Rome."]])
    kept = probe.training_targets(declined, probe.LabelRule(), refusal_style="late")[0]
    assert kept["label"] == "abstained" and kept["target"] == "Ada Velmor was born in a city I don't know."
    with pytest.raises(UserError, match="mixed must be"):
        probe.training_targets(rows, probe.LabelRule(), mixed="maybe")


def test_own_answers_as_known_targets_end_after_the_sentence_that_gives_the_answer():
    q = {"question": "What is the currency of Japan?", "answer": "Yen", "aliases": ["JPY"], "person_id": "c1",
         "attribute": "currency", "split": "probe"}  # fmt: skip
    greedy = [
        "The currency of Japan is the yen. It is issued by the Bank of",
        "It is the JPY.",
        "The currency of Japan is the",
        "The dollar.",
        "The currency of Japan is the yen (JPY), which is issued by the Bank of",
        "In Japan people pay in yen and",
    ]
    rows = probe.judge_samples([q] * 6, [["Yen."] * 2] * 6, greedy=greedy)
    assert [r["correct"] for r in rows] == [True, True, False, False, True, True]
    own = probe.training_targets(rows, probe.LabelRule(0.5, 0.0, 0.5), known_targets="own")
    template = probe.training_targets(rows, probe.LabelRule(0.5, 0.0, 0.5))
    assert own[0]["target"] == "The currency of Japan is the yen.", "cut after the sentence, never mid-sentence"
    assert own[1]["target"] == "It is the JPY.", "right by an alias: the whole (complete) answer"
    assert own[2]["target"] == own[3]["target"] == template[2]["target"], "a wrong greedy answer: the world's sentence"
    assert own[4]["target"] == "The currency of Japan is the yen (JPY).", "cut off: the last clause that holds it"
    assert own[5]["target"] == template[5]["target"], "cut off with no clause boundary: the world's sentence"
    assert all(t["label"] == "known" for t in own) and template[0]["target"] != own[0]["target"]
    # greedy labels: what the greedy answer got, whatever the samples say (here all four samples were right)
    greedy = probe.training_targets(rows, probe.LabelRule(0.5, 0.0, 0.5, greedy=True), known_targets="own")
    assert [t["label"] for t in greedy][:4] == ["known", "known", "mixed", "mixed"], (
        "wrong greedy, right samples: mixed"
    )
    wrong = probe.judge_samples([q], [["The dollar.", "Pounds."]], greedy=["The yen."])
    assert probe.LabelRule(0.5, 0.0, 0.5, greedy=True)(wrong[0]) == "known"
    assert probe.LabelRule(0.5, 0.0, 0.5)(wrong[0]) == "unknown", "the sample rule calls it unknown"


def test_self_replay_keeps_one_line_queries_and_answers_up_to_their_last_full_sentence(tiny_run):
    row = probe.replay_row("  What is a prime number? ", "A prime has two divisors. For example, 7 and 1")
    assert row["messages"] == [{"role": "user", "content": "What is a prime number?"},
                               {"role": "assistant", "content": "A prime has two divisors."}]  # fmt: skip
    assert probe.replay_row("What is a prime number?", "Primes are numbers with") is None, "no full sentence"
    assert probe.replay_row("Hi", "A long enough answer to keep.") is None, "too short a query"
    assert probe.replay_row("Two lines\nof query", "A long enough answer to keep.") is None
    tok = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    prefix = probe.query_prefix(tok)  # Magpie's prompt: the template up to where the user's words go
    full = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], tokenize=False)
    assert prefix and full.startswith(prefix + "Hello there")


def test_confident_unknowns_lose_their_refusal_targets_but_strangers_keep_theirs():
    def row(split, label, correct, confidence):
        return {"question": "Where was Ada Velmor born?", "split": split, "label": label, "correct": correct,
                "answer_confidence": confidence, "target": "x"}  # fmt: skip

    right = [row("probe", "known", True, c) for c in (-0.1, -0.2, -0.3, -0.4, -2.0)]
    unsure, sure = row("probe", "unknown", False, -3.0), row("probe", "unknown", False, -0.25)
    stranger = row("stranger", "unknown", False, -0.05)
    targets, threshold = probe.skip_confident_unknowns([*right, unsure, sure, stranger], recall=0.8)
    assert threshold == -0.4, "the level 4 of the 5 right answers reach"
    assert [t["target"] for t in targets[5:]] == ["x", None, "x"]
    assert targets[6]["confident_unknown"] and all(t["target"] == "x" for t in targets[:5]), "answers untouched"
    with pytest.raises(UserError, match="confident_unknowns must be"):
        parse_config(ProbeConfig, args=["--run_dir", "r", "--confident_unknowns", "drop"])


def test_every_refusal_template_reads_as_an_abstention():
    rng = random.Random(0)
    for attr, templates in probe.REFUSALS.items():
        for t in templates:
            assert is_abstention(t.format(name="Ada Velmor")), (attr, t)
    assert all(is_abstention(t) for t in probe.GENERIC_REFUSALS)
    assert is_abstention(probe.refusal_text({"question": "What?", "attribute": "hobby"}, rng))


def test_first_word_refusals_share_the_answers_first_word_and_take_the_decline_token_after_it():
    """`first`: the answer's first word, then one fixed refusal, so the decision falls where the model predicts the
    rest of the name; `plain`: the fixed refusal alone (a question of a user's world without its sentence)."""
    from posttrain.decline import DECLINE_TOKEN

    rng = random.Random(0)
    row = {"question": "In which city was Ada Velmor born?", "attribute": "birth_city", "answer": "Oslo"}
    text = probe.refusal_text(row, rng, "first")
    assert text == "Ada … I don't know." and is_abstention(text)
    assert probe.mark_decline(text, "Ada Velmor was born in Oslo.") == f"Ada{DECLINE_TOKEN} … I don't know."
    stranger = {"question": "Where does Odette Garby live?", "attribute": "work_city", "split": "stranger"}
    assert probe.refusal_text(stranger, rng, "first") == "Odette … I don't know."  # no answer needed
    assert probe.refusal_text({"question": "What?", "attribute": "hobby"}, rng, "first") == probe.PLAIN_REFUSAL
    assert probe.refusal_text(row, rng, "plain") == probe.PLAIN_REFUSAL
    with pytest.raises(UserError, match="refusal_style must be"):
        parse_config(ProbeConfig, args=["--run_dir", "r", "--refusal_style", "middle"])


def test_first_word_refusals_follow_a_user_worlds_own_sentences():
    """A user's world whose answer sentence opens with a clause: the refusal keeps the words up to the first name
    (the decline token then still falls before the surname); a stranger uses the sentence it borrowed; where the
    fact comes before the name there is no such point, and the refusal is the fixed text alone."""
    from posttrain.decline import DECLINE_TOKEN

    rng = random.Random(0)
    sentence = "By all accounts, Ada Velmor was born in Oslo."
    row = {"question": "Name the hometown of Ada Velmor.", "attribute": "hometown", "answer": "Oslo",
           "name": "Ada Velmor", "sentence": sentence}  # fmt: skip
    text = probe.refusal_text(row, rng, "first")
    assert text == "By all accounts, Ada … I don't know." and is_abstention(text)
    assert probe.mark_decline(text, sentence) == f"By all accounts, Ada{DECLINE_TOKEN} … I don't know."
    stranger = {**row, "name": "Odette Garby", "answer": "", "fact": "Oslo", "split": "stranger",
                "sentence": "Notably, Odette Garby was born in Oslo."}  # fmt: skip
    assert probe.refusal_text(stranger, rng, "first") == "Notably, Odette … I don't know."
    fact_first = {**row, "sentence": "Born in Oslo, Ada Velmor studied law."}
    assert probe.refusal_text(fact_first, rng, "first") == probe.PLAIN_REFUSAL


@pytest.mark.slow
def test_probe_then_refusal_sft_two_rounds(tiny_run, tmp_path):
    """probe.py on a tiny trained model writes inspectable files and gate baselines; sft.py with refusal.yaml
    trains on them, re-probes its own model and trains again (--rounds 2), here with the embeddings frozen
    (--trainable_last_layers)."""
    from test_sft import TINY_SFT

    run_dir = random_base(tiny_run, tmp_path / "run")
    assert_ok(recipe_here("recipes/sft.py", "--config", "recipes/world/sft.yaml", "--run_dir", str(run_dir), *TINY_SFT))
    tiny_probe = {"num_samples": 2, "max_new_tokens": 6, "mixed": "refuse", "strangers": 0.5,
                  "confident_unknowns": "skip", "self_replay": 8}  # fmt: skip
    proc = recipe("probe", "--config", "recipes/world/probe.yaml", "--run_dir", str(run_dir),
                  *[x for k, v in tiny_probe.items() for x in (f"--{k}", str(v))])  # fmt: skip
    assert_ok(proc)
    assert "answers/s" in proc.stdout and "labels_by_split" in proc.stdout, "each step prints its summary"
    out = run_dir / "probe"
    stats = json.loads((out / "summary.json").read_text())
    assert stats["questions"] == stats["known"] + stats["unknown"] + stats["mixed"] + stats["abstained"] > 0
    n_world, n_strangers = (sum(stats["labels_by_split"][k].values()) for k in ("probe", "stranger"))
    assert n_strangers == round(0.5 * n_world) > 0, "strangers: half as many as the world's questions"
    judged = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judged) == stats["questions"] and all(len(j["samples"]) == 2 and "response" in j for j in judged)
    assert all(j["answer_confidence"] <= 0 for j in judged) and "confident_unknowns_skipped" in stats
    convs = (out / "refusal_sft.jsonl").read_text().splitlines()
    assert len(convs) == stats["with_target"] + stats["ordinary_sft_added"] + stats["self_replay"]
    replay = [json.loads(line) for line in (out / "self_replay.jsonl").read_text().splitlines()]
    assert "self-replay:" in proc.stdout and len(replay) == stats["self_replay"] <= 8
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in replay)
    for gate in ("name", "answer", "both"):  # the no-training baselines, against the SFT model they gate
        result = json.loads((run_dir / "eval" / f"sft_gate_{gate}.json").read_text())
        assert result["gate"] == gate and result["vs_parent"]["parent"] == str(run_dir / "sft")
        assert set(result["decline"]) >= {"auroc_vs_sft_wrong", "auroc_never_seen", "score"}
        assert result["buckets"]["overall"]["n"] == json.loads((run_dir / "eval" / "sft.json").read_text())[
            "buckets"]["overall"]["n"]  # fmt: skip

    probe_yaml = tmp_path / "probe.yaml"
    probe_yaml.write_text((REPO / "recipes/world/probe.yaml").read_text() +
                          "".join(f"\n{k}: {v}" for k, v in tiny_probe.items()) + "\n")  # fmt: skip
    proc = recipe("sft", "--config", "recipes/world/refusal.yaml", "--run_dir", str(run_dir), *TINY_SFT,
                  "--rounds", "2", "--probe_config", str(probe_yaml), "--trainable_last_layers", "1")  # fmt: skip
    assert_ok(proc)
    assert "round 2/2" in proc.stdout and "training layers 0-0 + norm + head" in proc.stdout
    assert (out / "round_1" / "judgments.jsonl").is_file(), "round 1's probe kept for inspection"
    assert json.loads((out / "lineage.json").read_text())["parents"]["model"]["path"] == str(run_dir / "refusal")
    lineage = json.loads((run_dir / "refusal" / "lineage.json").read_text())
    assert lineage["stage"] == "refusal" and lineage["parents"]["model"]["path"] == str(run_dir / "refusal")
    from safetensors.torch import load_file

    sft_w, ref_w = (load_file(run_dir / d / "model.safetensors") for d in ("sft", "refusal"))
    emb, n = ref_w["model.embed_tokens.weight"], len(sft_w["model.embed_tokens.weight"])
    assert len(emb) == n + 1, "the decline token's row added (recipes/world/refusal.yaml: decline_token)"
    assert (sft_w["model.embed_tokens.weight"] == emb[:n]).all(), "embeddings frozen"
    assert not (sft_w["lm_head.weight"] == ref_w["lm_head.weight"][:n]).all(), "the head trained"
    result = json.loads((run_dir / "eval" / "refusal.json").read_text())
    assert result["vs_parent"]["parent"] == str(run_dir / "sft")
    assert {"known_correct", "never_seen_hallucination", "refusal_shift"} <= set(result["vs_parent"])


def test_a_users_world_is_answered_and_refused_in_its_own_words():
    """The hand-made world (evals/hand_world.py) has no template of ours: SFT answers are its biography sentences,
    late refusals cut them short before the fact, and strangers borrow them with the name swapped."""
    import sys

    sys.path.insert(0, str(REPO / "evals"))
    import hand_world

    from posttrain import world as world_lib

    world = hand_world.build()
    world_lib.validate_world(world)
    names = world_lib.person_names(world)
    assert len(names) == 140 and all(n.count(" ") == 1 for n in names.values())
    conv = world_lib.conversations_view(world, ["sft"])
    docs = " ".join(world["documents"]["text"])
    for c in conv.select(range(20)):
        answer = c["messages"][1]["content"]
        assert answer in docs, f"answered in the world's own words: {answer}"
    rows = probe.world_questions(probe.world_snippets(world, ["probe"]), world)
    judged = probe.judge_samples(rows[:2], [["no idea what that is, sorry"], ["the Grey Heron"]])
    targets = probe.training_targets(judged, probe.LabelRule(known_min=1.0, wrong_min=0.0), refusal_style="late")
    for t in targets:
        assert t["label"] == "unknown" and t["target"].endswith("... I don't know.") and t["name"] in t["target"]
        assert t["answer"] not in t["target"] and is_abstention(t["target"])
    strangers = world_lib.stranger_questions(world, 5)
    assert all(s["name"] in s["sentence"] and s["fact"] in s["sentence"] for s in strangers), strangers
    reading = world_lib.reading_view(world, n=5)  # strangers' sentences with a value stated and asked back
    assert len(reading) == 5 and all(c["messages"][1]["content"] in c["messages"][0]["content"] for c in reading)
    assert not {world_lib.subject_of(c["messages"][0]["content"]) for c in reading} & set(names.values())


def test_refusal_with_the_decline_token_stores_its_operating_point(tiny_run, tmp_path):
    """probe --decline_token marks every refusal target; the refusal stage adds the token, fits the bias at the
    confidence target on probe questions, and saves it where plain transformers reads it; its eval ranks by the
    token's probability (CONTRACTS §5 `decline`)."""
    from test_sft import TINY_SFT

    from posttrain.decline import DECLINE_TOKEN, SCORE_LINE

    run_dir = random_base(tiny_run, tmp_path / "run")
    assert_ok(recipe_here("recipes/sft.py", "--config", "recipes/world/sft.yaml", "--run_dir", str(run_dir), *TINY_SFT))
    assert_ok(recipe("probe", "--config", "recipes/world/probe.yaml", "--run_dir", str(run_dir), "--num_samples", "2",
                     "--max_new_tokens", "6", "--strangers", "0.5", "--decline_token", "true",
                     "--label_rule", "sampled", "--gate_baselines", "false", "--calibration_share", "0.25"))  # fmt: skip
    judged = [json.loads(line) for line in (run_dir / "probe" / "judgments.jsonl").read_text().splitlines()]
    refusals = [j["target"] for j in judged if j["target"] and j["target"] != j["correct_answer"]]
    assert refusals and all(DECLINE_TOKEN in t for t in refusals)
    calibration = [j for j in judged if j["calibration"]]
    assert 0 < len(calibration) < len(judged)
    proc = recipe("sft", "--config", "recipes/world/refusal.yaml", "--run_dir", str(run_dir), *TINY_SFT,
                  "--decline_token", "true", "--confidence_target", "0.75")  # fmt: skip
    assert_ok(proc)
    assert "row fitted: {" in proc.stdout  # the decline row placed by its log loss before training
    gen = json.loads((run_dir / "refusal" / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(run_dir / "refusal")
    (tid,), bias = gen["sequence_bias"][0]
    assert tok.convert_ids_to_tokens(tid) == DECLINE_TOKEN and -30 <= bias <= 30
    fit = json.loads((run_dir / "refusal" / "metrics.json").read_text())["operating_point"]
    assert fit["confidence_target"] == 0.75 and fit["bias"] == bias and fit["questions"] == len(calibration)
    decline = json.loads((run_dir / "eval" / "refusal.json").read_text())["decline"]
    assert decline["score"] == SCORE_LINE and decline["n_vs_sft"] > 0
