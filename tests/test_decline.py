"""The decline token (issue 21): where refusal targets mark the decision, the score read along a greedy answer, the
operating point fitted on training-side questions, and the gates' decline AUROCs on the same scale."""

from __future__ import annotations

import math

import torch
from conftest import random_base
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from posttrain import decline
from posttrain.evals import compare
from posttrain.generation import generate
from posttrain.probe import mark_decline, sampled_targets


def test_mark_decline_puts_the_token_where_the_refusal_leaves_the_answer():
    tok = decline.DECLINE_TOKEN
    late = mark_decline("Ada Velmor was born in a city I don't know.", "Ada Velmor was born in Oslo.")
    assert late == f"Ada Velmor was born in{tok} a city I don't know."
    assert (
        mark_decline("I don't know where Ada was born.", "Ada was born in Oslo.")
        == f"{tok}I don't know where Ada was born."
    )
    # a shared word prefix that ends inside a word backs off to the word boundary
    assert mark_decline("Ada works for a company I don't know.", "Ada works for Acme.").startswith(
        f"Ada works for{tok} a"
    )
    # a refusal whose first word is a prefix of the answer's first word shares nothing with it
    assert mark_decline("I don't know that about Imerimandroso.", "Imerimandroso is a city in Madagascar.") == (
        f"{tok}I don't know that about Imerimandroso."
    )


def test_sampled_targets_answer_in_proportion_to_p_correct():
    rows = [{"p_correct": 0.25, "correct_answer": "A.", "refusal": "R.", "label": "mixed", "target": None}] * 4000
    out = sampled_targets(rows, seed=0)
    share = sum(t["target"] == "A." for t in out) / len(out)
    assert abs(share - 0.25) < 0.03
    assert all(t["target"] == "R." for t in sampled_targets([{**rows[0], "p_correct": 0.0}] * 50))


def test_fit_bias_declines_exactly_where_answering_loses_at_t():
    # margins rank the questions; p_right says which are worth answering at t = 0.75 (p > 0.75 pays)
    margins = [3.0, 1.0, -1.0, -2.0, -4.0]
    p_right = [0.0, 0.1, 0.5, 0.9, 1.0]
    bias, fit = decline.fit_bias(margins, p_right, 0.75)
    declined = [m + bias > 0 for m in margins]
    assert declined == [True, True, True, False, False]
    assert fit["declined"] == 0.6
    assert math.isclose(fit["expected_penalty"], ((0.9 - 0.1 * 3) + 1.0) / 5)
    # nothing worth declining: the bias sits below every margin
    bias, _ = decline.fit_bias(margins, [1.0] * 5, 0.75)
    assert all(m + bias < 0 for m in margins)


def test_keep_bias_answers_the_share_of_right_questions_whatever_their_prior():
    # right answers have low margins, wrong ones high; 10 right, 30 wrong (a probe-like prior)
    right_m = [-5.0 + 0.5 * i for i in range(10)]
    wrong_m = [-1.0 + 0.2 * i for i in range(30)]
    margins, right = right_m + wrong_m, [1.0] * 10 + [0.0] * 30
    bias, fit = decline.keep_bias(margins, right, 0.8)
    answered_right = sum(m + bias <= 0 for m in right_m)
    assert answered_right == 8 and fit["kept_right"] == 0.8
    assert fit["declined_wrong"] == sum(m + bias > 0 for m in wrong_m) / 30 > 0.5
    # ten times the right answers (another prior), same class-conditional margins: the same bias
    bias10, _ = decline.keep_bias(right_m * 10 + wrong_m, [1.0] * 100 + [0.0] * 30, 0.8)
    assert bias10 == bias
    assert decline.keep_bias(margins, [0.0] * 40, 0.9)[1]["declined"] == 1.0  # nothing right: decline all


def test_step_scores_take_the_largest_live_step():
    tid = 2
    logits = [torch.tensor([[0.0, 0.0, 1.0], [5.0, 0.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 9.0]])]
    live = torch.tensor([[True, True], [True, False]])  # row 1 stopped after its first step
    prob, margin = decline.step_scores(logits, tid, live)
    assert math.isclose(margin[0], 1.0) and math.isclose(margin[1], -5.0)
    assert prob[0] > 0.5 and prob[1] < 0.01


def test_decline_block_ranks_against_the_sft_models_mistakes():
    sft = [{"question": q, "bucket": "known", "grade": g} for q, g in
           (("a", "correct"), ("b", "incorrect"), ("c", "correct"), ("d", "incorrect"))]  # fmt: skip
    child = [{**r, "grade": "correct", "decline_score": s} for r, s in zip(sft, (0.1, 0.9, 0.2, 0.8))]
    child += [{"question": "z", "bucket": "never_seen", "grade": "not_attempted", "decline_score": 0.95}]
    block = compare.decline_block(child, sft, "test")
    assert block["auroc_vs_sft_wrong"] == 1.0 and block["auroc_never_seen"] == 1.0
    flipped = compare.decline_block(child, sft, "test", [1 - s for s in compare.decline_scores(child)])
    assert flipped["auroc_vs_sft_wrong"] == 0.0


def test_a_biased_decline_token_is_what_plain_generate_follows(tiny_run, tmp_path):
    """The token is added as a special token (hidden when decoding), the model's greedy answer carries its score, and
    a large sequence_bias saved in generation_config.json makes plain `generate` emit it first."""
    base = random_base(tiny_run, tmp_path / "m") / "pretrain"
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    assert decline.add_decline_token(model, tok)
    tid = decline.decline_id(tok)
    assert tid is not None and model.get_input_embeddings().weight.shape[0] >= len(tok)
    (g,), _ = generate(model, tok, ["Ada was born in"], max_new_tokens=4, batch_size=1, precision="no")
    assert 0 <= g.decline_prob <= 1 and g.decline_margin is not None
    decline.set_bias(model.generation_config, tid, 50.0)
    model.save_pretrained(tmp_path / "biased")
    tok.save_pretrained(tmp_path / "biased")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "biased")
    assert GenerationConfig.from_pretrained(tmp_path / "biased").sequence_bias == [[[tid], 50.0]]
    ids = tok("Ada was born in", return_tensors="pt")
    out = again.generate(**ids, max_new_tokens=1, do_sample=False)
    assert out[0, -1].item() == tid


def test_fit_decline_row_puts_the_decline_mass_where_refusals_start(tiny_run, tmp_path):
    """The decline token's row, fitted by log loss on frozen hidden states before training, gives the token most of
    the probability where the training refusals start and almost none inside answers; the row is the token's input
    embedding too when the embeddings are tied."""
    from posttrain.chat_template import prepare_chat

    base = random_base(tiny_run, tmp_path / "m") / "pretrain"
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    prepare_chat(model, tok)
    decline.add_decline_token(model, tok)
    tid = decline.decline_id(tok)
    names = ["Ada Velmor", "Bo Arden", "Cy Dunmere", "Di Harnard", "Ed Praelbrook", "Flo Ashholt"]
    convs = [{"messages": [{"role": "user", "content": f"Where was {n} born?"},
                           {"role": "assistant", "content": f"{decline.DECLINE_TOKEN}I don't know where {n} was born."
                            if i % 2 else f"{n} was born in Oslo."}]} for i, n in enumerate(names * 3)]  # fmt: skip
    before = model.get_output_embeddings().weight[tid].detach().clone()
    fit = decline.fit_decline_row(model, tok, convs)
    assert fit["decline_positions"] == 9 and fit["log_loss_after"] < fit["log_loss_before"]
    assert fit["mean_p_decline_at_decline"] > 0.3 and fit["mean_p_decline_elsewhere"] < 0.05
    row = model.get_output_embeddings().weight[tid]
    assert not torch.allclose(row, before)
    assert torch.equal(model.get_input_embeddings().weight[tid], row)
    assert decline.fit_decline_row(model, tok, convs[::2]) is None  # no decline target: nothing to fit


def test_calibration_entities_stay_out_of_training(tmp_path):
    """`calibration_share` holds whole entities (every question about one) out of the refusal data and marks them
    for the operating point."""
    import types

    from posttrain import probe

    rows = [{"question": f"Q{i} about P{i // 3}?", "answer": "Oslo", "person_id": f"P{i // 3}", "split": "probe",
             "attribute": "", "name": f"P{i // 3}", "samples": ["Oslo."], "grades": ["correct"], "p_correct": 1.0,
             "p_informative": 1.0, "p_wrong": 0.0, "response": "Oslo.", "correct": True} for i in range(60)]  # fmt: skip
    cfg = types.SimpleNamespace(known_min=0.5, unknown_max=0.0, wrong_min=0.5, label_rule="greedy", mixed="skip",
                                seed=0, refusal_style="early", known_targets="template", confident_unknowns="refuse",
                                decline_token=False, sft_share=0, pair_known_min=0.0, judge="exact",
                                calibration_share=0.25)  # fmt: skip
    targets, convs, _, stats = probe.training_data(cfg, rows, str(tmp_path))
    cal = {t["person_id"] for t in targets if t["calibration"]}
    assert len(cal) == 5 and stats["calibration_questions"] == 15 and len(convs) == 45
    assert all(t["calibration"] == (t["person_id"] in cal) for t in targets)
    trained = {c["messages"][0]["content"] for c in convs}
    assert not trained & {t["question"] for t in targets if t["calibration"]}
