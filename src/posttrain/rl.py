"""Online RL on the world's questions: the prompts, the reward functions, TRL's GRPOTrainer, and the gold-vs-proxy
record every RL stage keeps (GRPO here; PPO in `posttrain.ppo`).

Prompts are questions the model may be trained on (CONTRACTS §4: never an `eval_*` or `never_seen` person's):
by default the probe's own questions (`<run>/probe/questions.jsonl`: the `probe` split's people plus strangers, names
that exist nowhere, whose only non-losing answer is "I don't know"), or the world's questions of chosen splits.
Each row carries `answers` and `candidates`, which the factuality reward grades against.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from pathlib import Path

from datasets import Dataset

from posttrain import world as world_lib
from posttrain.errors import UserError
from posttrain.plots import reward_curves
from posttrain.preferences import load_reward_model
from posttrain.rewards import get_rewards


def question_rows(run_dir: str, world_dir: str, source: str, splits: list[str]) -> list[dict]:
    """{question, answers, candidates, split} rows from the probe's questions or the world's splits (training
    splits only: `world.check_splits` against `world.TRAIN_SPLITS`, as the probe checks its own)."""
    splits = world_lib.check_splits(splits, world_lib.TRAIN_SPLITS)
    if source not in ("probe", "world"):
        raise UserError(f"prompts must be probe or world, got '{source}'")
    path = Path(run_dir) / "probe" / "questions.jsonl"
    if source == "probe" and not path.is_file():
        raise UserError(f"{path}: no probe questions; run recipes/probe.py first or set --prompts world")
    world = world_lib.load_world(world_dir)
    by_attr = world_lib.answers_by_attribute(world["qa"])
    if source == "probe":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        judged = path.with_name("judgments.jsonl")  # the probed model's share of right answers per question
        if judged.is_file():
            p_correct = {j["question"]: j["p_correct"] for j in map(json.loads, judged.read_text().splitlines())}
            rows = [{**r, "p_correct": p_correct.get(r["question"])} for r in rows]
        leaked = next((r for r in rows if r.get("split") in world_lib.EVAL_BUCKETS), None)
        if leaked is not None:
            raise UserError(f"{path}: '{leaked['question']}' asks about an {leaked['split']} person")
    else:
        rows = list(world_lib.qa_view(world, splits))
    return [
        {
            "question": r["question"],
            "answers": [a for a in dict.fromkeys([r.get("answer") or "", *(r.get("aliases") or [])]) if a],
            "candidates": r.get("candidates") or by_attr.get(r.get("attribute"), []),
            "split": r.get("split", ""),
            "p_correct": r.get("p_correct"),
        }
        for r in rows
    ]


def stage_dir(run_dir: str, name: str) -> str:
    """A model directory, or the name of a stage of the run ('reward' → <run_dir>/reward)."""
    path = Path(name)
    if not path.is_dir() and (Path(run_dir) / name).is_dir():
        path = Path(run_dir) / name
    if not (path / "config.json").is_file():
        raise UserError(f"{name}: not a model directory (no config.json), nor a stage of {run_dir}")
    return str(path)


def prompt_dataset(
    rows: list[dict], max_prompts: int | None, seed: int, answerable_share: float | None = None
) -> Dataset:
    """TRL's conversational prompt dataset, with the grading columns the reward functions read.

    `answerable_share`: the share of prompts the probed model answered right at least once (`p_correct` > 0, from
    the probe's judgments). The probe's questions are mostly ones the model gets wrong (and strangers); drawn as
    they come, the factuality reward then pays for refusing everything, and GRPO collapses to "I don't know"."""
    if not rows:
        raise UserError("prompts: no questions to train on")
    rng = random.Random(seed)
    if answerable_share and all(r.get("p_correct") is not None for r in rows):
        good = [r for r in rows if r["p_correct"] > 0]
        rest = [r for r in rows if r["p_correct"] == 0]
        n_rest = min(len(rest), round(len(good) * (1 - answerable_share) / answerable_share))
        if good and n_rest:
            rows = good + rng.sample(rest, n_rest)
            rng.shuffle(rows)
    if max_prompts and len(rows) > max_prompts:
        rows = rng.sample(rows, max_prompts)
    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}], **r} for r in rows])


def reward_functions(cfg) -> tuple[list, list[str], list]:
    """(reward_funcs, their logged names, reward_processing_classes) for GRPOTrainer: the config's registry rewards
    (bound to its t), then the learned reward model when one is given. The reward model goes to TRL as a model, not
    wrapped: TRL renders each conversation with its tokenizer's chat template, scores it, and places the model on
    the training device (prepared for DeepSpeed), as it does for a Hub reward model. TRL logs it under its
    directory's name (`rewards/reward/mean` for <run>/reward)."""
    settings = {"t": cfg.confidence_target, "cost": cfg.search_cost}
    if "citation" in cfg.rewards:
        settings["docs"] = [d["text"] for d in search_index(cfg).docs]
    funcs = get_rewards(cfg.rewards, **settings)
    names = [f.__name__ for f in funcs]
    classes = [None] * len(funcs)
    if cfg.reward_model:
        path = stage_dir(cfg.run_dir, cfg.reward_model)
        model, tokenizer = load_reward_model(path)
        funcs.append(model)
        names.append(Path(str(path)).name)  # TRL's name for a model reward: its id's last part
        classes.append(tokenizer)
    return funcs, names, classes


def reward_history(log_history: list[dict], names: list[str]) -> tuple[list[int], dict[str, list]]:
    """Per logged step, the mean of every reward (TRL logs `rewards/<name>/mean`)."""
    rows = [r for r in log_history if any(f"rewards/{n}/mean" in r for n in names)]
    return [r.get("step", i) for i, r in enumerate(rows)], {
        n: [r.get(f"rewards/{n}/mean") for r in rows] for n in names
    }


def plot_rewards(steps: list[int], series: dict[str, list], run_dir: str, stage: str) -> Path:
    """`<run>/plots/<stage>_rewards.png`: every reward's mean per logged step (`reward_history`), the gold first."""
    order = sorted(series, key=lambda n: n != "factuality")  # the gold reward first, on the left axis
    path = Path(run_dir) / "plots" / f"{stage}_rewards.png"
    return reward_curves(steps, {n: series[n] for n in order}, path, f"{stage}: rewards per step (gold: factuality)")


def prompts_record(cfg, dataset: Dataset) -> dict:
    """The lineage record of the prompts an RL stage trained on (their source and a hash of their content)."""
    h = hashlib.sha256(json.dumps(list(dataset["question"])).encode()).hexdigest()[:16]
    source = (
        f"{cfg.run_dir}/probe/questions.jsonl" if cfg.prompts == "probe" else f"world:{','.join(cfg.prompt_splits)}"
    )
    return {"path": source, "hash": h}


def search_index(cfg):
    """The run's search index (built from the world's documents the first time, then loaded: posttrain.tools),
    read once per process: the citation reward and the policy's tool share it."""
    return _run_index(cfg.run_dir, cfg.world_dir or f"{cfg.run_dir}/world")


@functools.cache
def _run_index(run_dir: str, world_dir: str):
    from posttrain.tools import run_index

    return run_index(run_dir, world_dir)


def build_grpo_trainer(cfg, model, tokenizer, dataset: Dataset, funcs: list, reward_classes: list | None = None):
    """TRL's GRPOTrainer; with `tools: search`, TRL runs the tool-call loop itself (the policy's call is parsed with
    the tokenizer's response template, the tool's result appended and masked out of the loss, generation resumed)."""
    from trl import GRPOTrainer

    from posttrain.stages import with_callbacks

    tools = None
    if getattr(cfg, "tools", None) == "search":
        from posttrain.tools import search_tool

        tools = [search_tool(search_index(cfg), tokenizer=tokenizer)]
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=cfg, train_dataset=dataset, processing_class=tokenizer,
                          reward_processing_classes=reward_classes, tools=tools)  # fmt: skip
    return with_callbacks(trainer)
