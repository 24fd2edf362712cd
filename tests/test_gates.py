"""No-training gates and the parent comparison (issue 7): thresholds, span scores, refusal shift."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from posttrain import gates
from posttrain.evals import compare
from posttrain.evals.grading import CORRECT, INCORRECT, NOT_ATTEMPTED


def test_fit_thresholds():
    scores = {"name": [-1.0, -2.0, -3.0, -4.0, -30.0], "answer": [-0.01, -0.02, -0.5, -0.03, -2.0]}
    correct = [True, True, False, True, False]
    thr = gates.fit_thresholds(scores, correct, quantile=0.2, recall=0.6)
    assert thr["name"] == -4.0, "the 20 % quantile of the names' scores"
    assert thr["answer"] == -0.02, "the two best of three right answers (>= 60 %) clear it"


def test_quantile_threshold_and_apply_gate():
    assert gates.quantile_threshold([-1.0, -2.0, -3.0, -4.0], 0.25) == -3.0
    assert gates.quantile_threshold([], 0.05) == gates.NEG_INF
    records = [{"grade": CORRECT}, {"grade": INCORRECT}, {"grade": NOT_ATTEMPTED}]
    gated = gates.apply_gate(records, [0.9, 0.1, 0.9], threshold=0.5)
    assert [r["grade"] for r in gated] == [CORRECT, NOT_ATTEMPTED, NOT_ATTEMPTED]
    assert [r["gate_score"] for r in gated] == [0.9, 0.1, 0.9]


def test_span_logprobs_match_a_manual_forward_pass(tiny_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    texts = ["Where was Ada Velmor born?", "Who does Bo Lin work for at the big company?"]
    spans = [(10, 20), (0, 6)]
    got = gates.span_logprobs(model, tok, texts, spans, batch_size=2)
    for text, (lo, hi), scores in zip(texts, spans, got):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        want = [logp[t - 1, ids[0, t]].item() for t, (a, b) in enumerate(enc["offset_mapping"])
                if t > 0 and b > lo and a < hi]  # fmt: skip
        assert scores == pytest.approx(want, abs=1e-4) and want, (text, scores, want)
    # the name's score sums its tokens after the first (who is asked about is not the model's to predict)
    prompt, span = gates._prompt_and_span(tok, texts[0], "Ada Velmor")
    (name_scores,) = gates.span_logprobs(model, tok, [prompt], [span])
    assert len(name_scores) >= 2, "the tiny tokenizer splits the name"
    fam = gates.name_familiarity(model, tok, texts[:1], ["Ada Velmor"])
    assert fam[0] == pytest.approx(sum(name_scores[1:])) and fam[0] != pytest.approx(sum(name_scores))
    # an unknown name falls back to the whole question's mean
    (all_scores,) = gates.span_logprobs(model, tok, [prompt], [gates._prompt_and_span(tok, texts[0], None)[1]])
    assert gates.name_familiarity(model, tok, texts[:1], [None])[0] == pytest.approx(sum(all_scores) / len(all_scores))
    conf = gates.answer_confidence(model, tok, texts[:1], ["Ada Velmor was born in Oslo."])
    assert conf[0] < 0 and gates.answer_confidence(model, tok, texts[:1], [""]) == [gates.NEG_INF]


def _rec(q, bucket, grade):
    return {"question": q, "bucket": bucket, "grade": grade}


def test_refusal_shift_and_versus_parent():
    parent = [_rec("a", "known", CORRECT), _rec("b", "known", INCORRECT), _rec("c", "rare", INCORRECT),
              _rec("d", "rare", NOT_ATTEMPTED), _rec("e", "never_seen", INCORRECT), _rec("f", "known", CORRECT)]  # fmt: skip
    child = [_rec("a", "known", CORRECT), _rec("b", "known", NOT_ATTEMPTED), _rec("c", "rare", NOT_ATTEMPTED),
             _rec("d", "rare", NOT_ATTEMPTED), _rec("e", "never_seen", NOT_ATTEMPTED),
             _rec("f", "known", NOT_ATTEMPTED)]  # fmt: skip
    shift = compare.refusal_shift(parent, child)
    assert (shift["n_parent_right"], shift["n_parent_wrong"]) == (2, 2), "d (declined) and e (never_seen) left out"
    assert shift["refusal_where_parent_right"] == 0.5 and shift["refusal_where_parent_wrong"] == 1.0
    assert shift["delta"] == 0.5
    m = lambda c, i, na: {"correct": c, "incorrect": i, "not_attempted": na, "penalty_t0.75": c - 3 * i}  # noqa: E731
    pres = {"model": "sft", "buckets": {"known": m(0.6, 0.4, 0), "never_seen": m(0, 1, 0), "overall": m(0.3, 0.7, 0)}}
    cres = {"model": "r", "buckets": {"known": m(0.3, 0.1, 0.6), "never_seen": m(0, 0.2, 0.8),
                                      "overall": m(0.15, 0.15, 0.7)}}  # fmt: skip
    vs = compare.versus_parent(pres, cres, parent, child)
    assert vs["known_correct"]["kept"] == pytest.approx(0.5)
    assert vs["never_seen_hallucination"] == {"parent": 1, "child": pytest.approx(0.2)}
    assert vs["penalty_t0.75"] == {"parent": pytest.approx(0.3 - 2.1), "child": pytest.approx(0.15 - 0.45)}
