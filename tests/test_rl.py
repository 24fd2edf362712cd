"""Rewards, the PPO math against hand-computed values, PPO on a toy task, GRPO on two processes with a learned
reward (the other RL recipes run in test_pipeline's speedrun)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_ok, free_port, random_base, recipe_here, run
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GenerationConfig

from posttrain import ppo, rl
from posttrain.configs import GRPOStageConfig
from posttrain.preferences import balance, held_out
from posttrain.rewards import factuality, factuality_value, format_reward, get_rewards

# ---------------------------------------------------------------------------------------------------------------
# Rewards

GRADED = [  # (answer, grade against "Lisbon" with rival cities)
    ("Ada Velmor was born in Lisbon.", "correct"),
    ("Ada Velmor was born in Porto.", "incorrect"),
    ("Ada Velmor was born in a city I don't know.", "not_attempted"),
    ("I don't know where Ada Velmor was born.", "not_attempted"),
    ("Lisbon or Porto, I think.", "incorrect"),  # hedging between two cities is not correct
    ("", "not_attempted"),
]


@pytest.mark.parametrize("t, wrong", [(0.0, 0.0), (0.5, -1.0), (0.75, -3.0), (0.9, -9.0)])
def test_factuality_reward_on_graded_answers(t, wrong):
    expected = {"correct": 1.0, "incorrect": wrong, "not_attempted": 0.0}
    answers, grades = zip(*GRADED)
    got = factuality([None] * len(answers), list(answers), answers=[["Lisbon"]] * len(answers),
                     candidates=[["Lisbon", "Porto", "Oslo"]] * len(answers), t=t)  # fmt: skip
    assert got == pytest.approx([expected[g] for g in grades])
    # conversational completions read the same; the mean is the eval's penalty score at t
    convo = [[{"role": "assistant", "content": a}] for a in answers]
    assert factuality(None, convo, answers=[["Lisbon"]] * len(answers), candidates=[["Lisbon", "Porto"]] * len(answers),
                      t=t) == got  # fmt: skip
    assert factuality_value("incorrect", t) == pytest.approx(-t / (1 - t))


def test_factuality_reward_rejects_a_target_of_one():
    from posttrain.errors import UserError

    with pytest.raises(UserError, match="confidence target"):
        factuality_value("incorrect", 1.0)


def test_format_reward_and_the_registry():
    answers = ["Ada Velmor was born in Lisbon.", "The boat of Orla Benlomond is... I don't know.",
               "Ada was born in Lisbon. She likes it. " * 4, ""]  # fmt: skip
    assert format_reward(None, answers) == [0.0, 0.0, -1.0, -0.5]
    assert format_reward(None, ["Lisbon."], completion_ids=[[5, 6]], eos_ids=[9]) == [-0.5], "never ended"
    funcs = get_rewards(["factuality", "format"], t=0.5)
    assert [f.__name__ for f in funcs] == ["factuality", "format"], "TRL logs rewards/<__name__>/mean"
    assert funcs[0](["q"], ["Porto."], answers=[["Lisbon"]], candidates=[None], split=["probe"]) == [-1.0]
    with pytest.raises(Exception, match="unknown reward 'nope'"):
        get_rewards(["nope"])


def test_rewards_with_tools_read_the_final_answer_and_grade_its_citation():
    from posttrain.tools import search_turns

    searched = [*search_turns("Ada Velmor", "[doc 1] Ada Velmor was born in Lisbon."),
                {"role": "assistant", "content": "Ada Velmor was born in Lisbon [doc 1]."}]  # fmt: skip
    wrong_doc = [*searched[:2], {"role": "assistant", "content": "Ada Velmor was born in Lisbon [doc 0]."}]
    invented = [*searched[:2], {"role": "assistant", "content": "Ada Velmor was born in Porto."}]
    plain = [{"role": "assistant", "content": "Ada Velmor was born in Lisbon."}]
    docs = ["Orla Benlomond was born in Porto.", "Ada Velmor was born in Lisbon."]
    answers = [["Lisbon"]] * 4
    funcs = get_rewards(["factuality", "citation", "search_cost"], t=0.75, docs=docs, cost=0.1)
    completions = [searched, wrong_doc, invented, plain]
    fact, cite, cost = (f(None, completions, answers=answers, candidates=[None] * 4) for f in funcs)
    # the tool's text states Lisbon: graded on it, the invented answer would have passed
    assert fact == [1.0, 1.0, -3.0, 1.0]
    assert cite == [1.0, -1.0, 0.0, 0.0] and cost == [-0.1, -0.1, -0.1, 0.0]
    assert format_reward(None, [searched]) == [0.0], "the citation is not a second sentence"
    unanswered = searched[:2]  # cut off after the tool's turn: its "[doc 1]" line is not the model's citation
    assert funcs[1](None, [unanswered], answers=[["Lisbon"]]) == [0.0] and funcs[0](
        None, [unanswered], answers=[["Lisbon"]]
    ) == [0.0]
    with pytest.raises(Exception, match="need tools: search"):
        GRPOStageConfig(run_dir="unused", rewards=["factuality", "citation"])


def test_held_out_pairs_split_by_prompt_and_rare_types_are_balanced():
    from datasets import Dataset

    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(200)]
    assert [held_out(p, 0.1) for p in prompts] == [held_out(p, 0.1) for p in prompts], "stable"
    assert 5 <= sum(held_out(p, 0.1) for p in prompts) <= 40
    kinds = ["refusal_over_wrong"] * 90 + ["correct_over_refusal"] * 10 + ["correct_over_wrong"] * 2
    pairs = Dataset.from_dict({"prompt": [f"q{i}" for i in range(len(kinds))], "pair_type": kinds})
    counts = {k: list(balance(pairs, max_repeat=8)["pair_type"]).count(k) for k in set(kinds)}
    assert counts == {"refusal_over_wrong": 90, "correct_over_refusal": 80, "correct_over_wrong": 16}
    assert len(balance(pairs, max_repeat=1)) == len(kinds)


# ---------------------------------------------------------------------------------------------------------------
# PPO math, against values worked out by hand


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.9, 7.0]])  # the last position is padding (mask 0): its value must not count
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # δ2 = 1 + 0.9·0 − 0.9 = 0.1;  δ1 = 0 + 0.9·0.9 − 0.4 = 0.41;  δ0 = 0 + 0.9·0.4 − 0.5 = −0.14
    # A2 = 0.1;  A1 = 0.41 + 0.45·0.1 = 0.455;  A0 = −0.14 + 0.45·0.455 = 0.06475
    assert adv.tolist()[0] == pytest.approx([0.06475, 0.455, 0.1, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.56475, 0.855, 1.0, 0.0])
    adv1, _ = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)  # γ = λ = 1: A_t = Σ rewards after t − V_t
    assert adv1.tolist()[0] == pytest.approx([0.5, 0.6, 0.1, 0.0])


def test_kl_penalised_rewards_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = ppo.kl_penalized_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.5], [-0.5, 0.0, 0.0]]))
    # the score lands on each answer's last token (row 2 ends at its second token)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.95], [0.05, -1.0, 0.0]]))


def test_clipped_policy_and_value_losses_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, clipfrac = ppo.policy_loss(new, old, adv, mask, clip=0.2)
    # token 1: max(−1.5, −1.2) = −1.2 (clipped);  token 2: max(0.5, 0.8) = 0.8 (clipped);  mean −0.2
    assert loss.item() == pytest.approx(-0.2) and clipfrac.item() == pytest.approx(1.0)
    loss, clipfrac = ppo.policy_loss(old, old, adv, mask, clip=0.2)  # ratio 1: the plain advantage
    assert loss.item() == pytest.approx(0.0) and clipfrac.item() == 0.0
    v = ppo.value_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 1.0]]), mask, 0.5)
    # token 1: max((2−3)², (1.5−3)²) = 2.25;  token 2: max(1, 1) = 1;  ½ · mean = 0.8125
    assert v.item() == pytest.approx(0.8125)


def test_whitening_and_the_answer_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = ppo.masked_whiten(x, mask)
    assert w.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4), "mean 2, std 1 over the masked entries"
    assert ppo.masked_whiten(x, mask, shift_mean=False).tolist()[0][:3] == pytest.approx([1.0, 2.0, 3.0], abs=1e-4)
    ids = torch.tensor([[5, 7, 9, 0, 0], [5, 5, 5, 5, 5], [9, 0, 0, 0, 0]])
    assert ppo.answer_mask(ids, [9]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


# ---------------------------------------------------------------------------------------------------------------
# PPO learns a toy task


def test_ppo_raises_the_reward_on_a_toy_task(tiny_run, tmp_path):
    """Reward 1 when the answer begins with a letter of the first half of the alphabet: from a random tiny model
    (about half its answers), PPO must push the share up."""
    from posttrain.configs import PPOStageConfig

    torch.manual_seed(0)
    run_dir = random_base(tiny_run, tmp_path / "run")
    base = str(run_dir / "pretrain")
    policy, tokenizer = ppo.load_policy(base)
    ref, _ = ppo.load_policy(base)
    value = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    value.config.pad_token_id = tokenizer.pad_token_id
    rows = [{"prompt": [{"role": "user", "content": f"Say something {i}."}], "answers": []} for i in range(64)]

    def reward(prompts, answers, rows):
        return [1.0 if a.strip()[:1].lower() in "abcdefghijklm" and a.strip()[:1] else 0.0 for a in answers]

    cfg = PPOStageConfig(run_dir=str(run_dir), max_steps=14, batch_size=32, mini_batch_size=16, num_ppo_epochs=2,
                         learning_rate=1e-2, kl_coef=0.0, max_new_tokens=4, missing_eos_penalty=0.0, log_every=0,
                         save_every=0)  # fmt: skip
    trainer = ppo.PPOTrainer(cfg, ppo.make_accelerator(), policy, ref, value, tokenizer, rows, reward)
    history = trainer.train()
    first, last = (sum(h["score"] for h in part) / 3 for part in (history[:3], history[-3:]))
    assert last > first + 0.25, f"reward {first:.2f} -> {last:.2f} (about 0.5 -> 0.95 when it learns)"
    assert all(math.isfinite(h["value_loss"]) and math.isfinite(h["policy_loss"]) for h in history)


# ---------------------------------------------------------------------------------------------------------------
# The recipes, as a user runs them


def _rl_run(tiny_run, tmp_path) -> Path:
    """A run with a (random) sft and refusal model: what the RL stages start from (prompts: the world's questions)."""
    run_dir = random_base(tiny_run, tmp_path / "run")
    for stage in ("sft", "refusal"):
        shutil.copytree(run_dir / "pretrain", run_dir / stage)
    return run_dir


TINY_GRPO = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4",
             "--max_completion_length", "8", "--eval_max_per_bucket", "3", "--eval_num_samples", "1",
             "--logging_steps", "1"]  # fmt: skip


def _random_reward_model(run_dir: Path) -> None:
    """runs/<run>/reward/: the SFT model with an untrained one-output head (what PPO and GRPO-with-RM read)."""
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "sft")
    reward = AutoModelForSequenceClassification.from_pretrained(run_dir / "sft", num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(run_dir / "reward")
    tokenizer.save_pretrained(run_dir / "reward")


def test_grpo_with_a_learned_reward_under_accelerate_launch_two_processes(tiny_run, tmp_path):
    """RLHF without a value model: GRPO on 2 processes scores answers with a reward model (weight 1) and logs the
    gold factuality reward beside it (weight 0); both are plotted. The GRPO model keeps the operating point its
    parent's generation_config.json holds (a refusal stage's sequence_bias)."""
    run_dir = _rl_run(tiny_run, tmp_path)
    _random_reward_model(run_dir)
    config = GenerationConfig.from_pretrained(run_dir / "refusal")
    config.sequence_bias = [[[7], -1.5]]
    config.save_pretrained(run_dir / "refusal")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    proc = run([accelerate, "launch", "--config_file", "accelerate_configs/multi_cpu.yaml", "--main_process_port",
                free_port(), "recipes/grpo.py", "--config", "recipes/world/grpo_rm.yaml", "--run_dir", str(run_dir),
                "--prompts", "world", "--prompt_splits", "probe", "sft", *TINY_GRPO])  # fmt: skip
    assert_ok(proc)
    assert "2 process(es)" in proc.stdout and "rewards factuality, reward (weights [0.0, 1.0])" in proc.stdout
    assert GenerationConfig.from_pretrained(run_dir / "grpo").sequence_bias == [[[7], -1.5]]
    assert json.loads((run_dir / "grpo" / "metrics.json").read_text())["steps"] == 2
    steps, rewards = json.loads((run_dir / "grpo" / "rewards.json").read_text())
    assert len(steps) == 2 and all(v is not None for v in rewards["factuality"] + rewards["reward"])
    assert (run_dir / "plots" / "grpo_rewards.png").is_file() and (run_dir / "eval" / "grpo.json").is_file()


def test_ppo_and_dpo_recipes(tiny_run, tmp_path):
    """The optional stages (make speedrun PPO=1 DPO=1), in this process: PPO against a reward model with the gold
    reward logged, a checkpoint to resume from, the plot; DPO on preference pairs; both evaluated."""
    run_dir = _rl_run(tiny_run, tmp_path)
    _random_reward_model(run_dir)
    eval_args = ["--eval_max_per_bucket", "3", "--eval_num_samples", "1"]
    proc = recipe_here("recipes/ppo.py", "--config", "recipes/world/ppo.yaml", "--run_dir", str(run_dir),
                       "--prompts", "world", "--max_steps", "2", "--batch_size", "8", "--mini_batch_size", "4",
                       "--max_new_tokens", "6", "--save_every", "1", *eval_args)  # fmt: skip
    assert_ok(proc)
    history = [json.loads(line) for line in (run_dir / "ppo" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2] and all(h["gold"] is not None for h in history), "gold beside proxy"
    lineage = json.loads((run_dir / "ppo" / "lineage.json").read_text())
    assert lineage["parents"]["reward_model"]["path"] == str(run_dir / "reward")
    assert (run_dir / "checkpoints" / "ppo" / "latest").read_text().strip() == "step_000001"
    assert (run_dir / "plots" / "ppo_rewards.png").stat().st_size > 5_000
    result = json.loads((run_dir / "eval" / "ppo.json").read_text())
    assert result["buckets"]["overall"]["n"] == 9 and AutoModelForCausalLM.from_pretrained(run_dir / "ppo")

    rows = rl.question_rows(str(run_dir), str(run_dir / "world"), "world", ["probe"])[:24]
    (run_dir / "probe").mkdir()
    with (run_dir / "probe" / "preferences.jsonl").open("w") as f:
        for i, r in enumerate(rows):
            right, refusal = f"It is {r['answers'][0]}.", "I don't know."
            chosen, rejected, kind = (right, refusal, "correct_over_refusal") if i % 2 else (refusal, "It is x.",
                                                                                        "refusal_over_wrong")  # fmt: skip
            f.write(json.dumps({"prompt": [{"role": "user", "content": r["question"]}],
                                "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}], "pair_type": kind}) + "\n")  # fmt: skip
    proc = recipe_here("recipes/dpo.py", "--config", "recipes/world/dpo.yaml", "--run_dir", str(run_dir),
                       "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                       *eval_args)  # fmt: skip
    assert_ok(proc)
    assert json.loads((run_dir / "eval" / "dpo.json").read_text())["buckets"]["overall"]["n"] == 9
    assert json.loads((run_dir / "dpo" / "lineage.json").read_text())["data_mix"]["path"].endswith(
        "world_preferences.yaml")  # fmt: skip
    report = (run_dir / "report.md").read_text()
    assert "## ppo" in report and "## dpo" in report


def test_rl_prompts_never_come_from_evaluation_people(tiny_run):
    from posttrain.errors import UserError

    with pytest.raises(UserError, match="unknown world split 'eval_known' \\(known: sft, probe\\)"):
        rl.question_rows(str(tiny_run), str(tiny_run / "world"), "world", ["probe", "eval_known"])
    rows = rl.question_rows(str(tiny_run), str(tiny_run / "world"), "world", ["probe", "sft"])
    assert rows and {r["split"] for r in rows} == {"probe", "sft"} and all(r["answers"] for r in rows)
    ds = rl.prompt_dataset([{**r, "p_correct": 1.0 if i < 10 else 0.0} for i, r in enumerate(rows)], None, 0, 0.5)
    assert len(ds) == 20 and sum(p > 0 for p in ds["p_correct"]) == 10, "half answerable, half not"
