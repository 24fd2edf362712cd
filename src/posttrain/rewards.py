"""Reward functions for GRPO (and the gold reward beside a learned one), in a registry like open-r1's.

Every function has TRL's GRPO reward signature `f(prompts, completions, completion_ids=None, **columns) -> list`,
where `columns` are the dataset's other columns, one value per completion (`answers`, `candidates`, ...).
Completions are either strings or chat message lists (conversational prompts); both are read as text.

- `factuality`: the factuality grade as a reward with a confidence target t (Kalai et al. 2025): +1 correct,
  0 not attempted (an honest "I don't know"), -t/(1-t) incorrect. At t = 0.75 a wrong answer costs 3, so answering
  pays only when the model is right more than 75 % of the time. Its mean over an eval set is the eval JSON's
  `penalty_t<t>` score: the reward is what the evaluation measures.
- `format`: 0 for a short, single-sentence answer that ends cleanly; negative for rambling (more than one sentence,
  runaway length, or a completion cut off without an end-of-turn).
- `citation` and `search_cost`, for a policy that may call the search tool (GRPO `tools: search`, issue 24): +1 for a
  final answer whose cited document states an accepted answer, -1 for one that cites a document that does not,
  0 without a citation; and -cost per search, so the model does not look up what it knows.
With tools a completion is the assistant's call, the tool's result and the final answer: every reward reads the
final answer (`final_text`), never the tool's text.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

from posttrain.errors import UserError
from posttrain.evals.grading import CORRECT, INCORRECT, extract_answer, grade
from posttrain.tools import CITATION, citations

_SENTENCE_BREAK = re.compile(r"(?<!\.)[.!?]\s+(?=[A-Z])")  # a sentence ends and another begins ("..." is not an end)


def completion_text(completion) -> str:
    """The text of a completion: a string, or the content of a conversational completion's messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))


def said_last(completion) -> str:
    """The text the model said last: a string, or the content of a conversational completion's last assistant
    message (with tools, the turns before it are calls and the tool's results, which are not the model's answer)."""
    if isinstance(completion, (str, dict)):
        return completion_text(completion)
    said = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
    return str(said[-1].get("content") or "") if said else ""


def final_text(completion) -> str:
    """What the model finally answers (`said_last`), citations ("[doc 12]") removed, as the eval grades them."""
    text = said_last(completion)
    return CITATION.sub("", text).strip() if CITATION.search(text) else text


def tool_calls(completion) -> int:
    """How many tool calls a completion made (0 for a plain string)."""
    messages = [completion] if isinstance(completion, dict) else [] if isinstance(completion, str) else completion
    return sum(len(m.get("tool_calls") or []) for m in messages if isinstance(m, dict))


def factuality_value(grade_: str, t: float) -> float:
    """+1 correct, 0 not attempted, -t/(1-t) incorrect (the penalty score's per-answer value)."""
    if not 0.0 <= t < 1.0:
        raise UserError(f"factuality reward: the confidence target t must be in [0, 1), got {t}")
    return 1.0 if grade_ == CORRECT else (-t / (1.0 - t) if grade_ == INCORRECT else 0.0)


def grades(completions, answers, candidates=None) -> list[str]:
    """The factuality grade of each completion against its accepted answers (and same-kind rival values)."""
    candidates = candidates if candidates is not None else [None] * len(completions)
    return [grade(final_text(c), list(a), list(r) if r else None) for c, a, r in zip(completions, answers, candidates)]


def factuality(prompts, completions, completion_ids=None, *, answers, candidates=None, t: float = 0.75, **_):
    """Graded against the world: needs the dataset's `answers` column (accepted strings per question)."""
    return [factuality_value(g, t) for g in grades(completions, answers, candidates)]


def format_reward(prompts, completions, completion_ids=None, *, max_words: int = 24, eos_ids=None, **_):
    """0 for one clean sentence; -0.5 for each of: several sentences, more than `max_words` words, no end."""
    out = []
    for i, c in enumerate(completions):
        text = extract_answer(final_text(c))
        r = 0.0
        if _SENTENCE_BREAK.search(text) or "\n" in text:
            r -= 0.5
        if len(text.split()) > max_words:
            r -= 0.5
        if not text.strip():
            r -= 0.5
        if eos_ids is not None and completion_ids is not None and not any(t in eos_ids for t in completion_ids[i]):
            r -= 0.5  # truncated: the model never ended its turn
        out.append(r)
    return out


def citation(prompts, completions, completion_ids=None, *, answers, docs=None, **_):
    """+1 where the final answer cites a document ("[doc 12]") that states an accepted answer, -1 where every
    document it cites is unknown or does not, 0 where it cites nothing (`docs`: the search index's texts by id).
    Only the model's last message counts: the tool's own "[doc N]" lines are not citations."""
    docs = docs or []
    out = []
    for c, accepted in zip(completions, answers):
        cited = citations(said_last(c))
        if not cited:
            out.append(0.0)
            continue
        states = [0 <= n < len(docs) and any(a.lower() in docs[n].lower() for a in accepted) for n in cited]
        out.append(1.0 if any(states) else -1.0)
    return out


def search_cost(prompts, completions, completion_ids=None, *, cost: float = 0.1, **_):
    """-cost per search the completion made: searching what the model knows is not free."""
    return [-cost * tool_calls(c) for c in completions]


REWARDS: dict[str, Callable] = {"factuality": factuality, "format": format_reward, "citation": citation,
                                "search_cost": search_cost}  # fmt: skip


def get_rewards(names: list[str], **settings) -> list[Callable]:
    """The registry's functions with keyword settings bound (t, max_words, eos_ids: those each one takes). TRL logs
    a reward as `rewards/<__name__>/mean`, so each bound function carries its registry name."""
    funcs = []
    for name in names:
        if name not in REWARDS:
            raise UserError(f"unknown reward '{name}' (known: {', '.join(sorted(REWARDS))})")
        funcs.append(_bind(name, REWARDS[name], settings))
    return funcs


def _bind(name: str, fn: Callable, settings: dict) -> Callable:
    accepted = set(inspect.signature(fn).parameters)
    kw = {k: v for k, v in settings.items() if k in accepted}

    def reward(prompts, completions, completion_ids=None, **columns):
        return fn(prompts, completions, completion_ids, **{**columns, **kw})

    reward.__name__ = reward.__qualname__ = name
    return reward
