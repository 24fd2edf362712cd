"""Talk to any model posttrain writes: `python -m posttrain.chat --model runs/speedrun/grpo` (or `make chat`).

Multi-turn, tokens streamed as they are generated (transformers' `TextStreamer`), the model's own chat template and
generation config — so a refusal-trained model declines exactly as `evals/factuality.py` measured it (its
`sequence_bias` on the decline token included). `/reset` starts a new conversation, `/exit` (or Ctrl-D) quits.
`--tools search` lists the search tool (posttrain.tools) over the run's corpus: the model may call it, the call is
run and shown in one line, and the model answers after reading the result.

Why a loop of our own: transformers' `transformers chat` CLI talks to a `transformers serve` server (an extra
process, downloads by model id); this runs in-process on a local directory, under the same bf16-where-native
autocast as our evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.configs import ChatConfig, parse_config
from posttrain.errors import UserError, entrypoint

HELP = "/reset starts a new conversation, /exit quits"


def load(cfg: ChatConfig):
    """(model, tokenizer), with one clear line for a path that is not a chat model."""
    from posttrain.generation import load_for_generation

    if not cfg.model:
        raise UserError("command line: --model is required (a model directory, e.g. runs/speedrun/grpo)")
    if not Path(cfg.model).is_dir():
        raise UserError(f"{cfg.model}: no such model directory")
    model, tokenizer = load_for_generation(cfg.model, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if not tokenizer.chat_template:
        raise UserError(f"{cfg.model}: the tokenizer has no chat template (a base model: SFT it first, or use "
                        "evals/factuality.py --prompt fewshot)")  # fmt: skip
    return model, tokenizer


def reply(model, tokenizer, messages: list[dict], cfg: ChatConfig, tools: list | None = None) -> str:
    """Generate the assistant's next turn, streaming its text to stdout as it comes; returns the text."""
    from transformers import TextStreamer

    from posttrain.generation import eos_ids
    from posttrain.runtime import autocast, resolve_precision

    enc = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)  # fmt: skip
    enc = {k: v.to(model.device) for k, v in enc.items()}
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kw = {"max_new_tokens": cfg.max_new_tokens, "eos_token_id": eos_ids(model, tokenizer),
          "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}  # fmt: skip
    if cfg.do_sample is not None:
        kw["do_sample"] = cfg.do_sample
    if cfg.temperature is not None:
        kw["temperature"] = cfg.temperature
    with torch.no_grad(), autocast(resolve_precision(cfg.mixed_precision, model.device), model.device):
        ids = model.generate(**enc, streamer=streamer, **kw)
    return tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def chat_loop(model, tokenizer, cfg: ChatConfig, read=input, search=None) -> None:
    """Read a line, answer it, keep the conversation; `/reset` and `/exit` as in HELP."""
    start = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(start)
    print(f"chatting with {cfg.model} ({HELP})", flush=True)
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            print()
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            messages = list(start)
            print("(new conversation)", flush=True)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]} ({HELP})", flush=True)
            continue
        messages.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        messages += answer(model, tokenizer, messages, cfg, search)


def answer(model, tokenizer, messages: list[dict], cfg: ChatConfig, search=None) -> list[dict]:
    """The assistant's turn(s): with a search tool, a call is run (one per turn), its result shown in one line and
    handed to the model as a `tool` turn, and the model answers after it. Returns the messages to append."""
    from posttrain.tools import called_query, citations, search_turns

    tools = [search] if search else None
    text = reply(model, tokenizer, messages, cfg, tools)
    query = called_query(tokenizer, text) if search else None
    if query is None:
        return [{"role": "assistant", "content": text}]
    result = search(query)
    print(f"[search {query!r}: {', '.join(f'doc {d}' for d in citations(result)) or 'nothing found'}]", flush=True)
    turns = search_turns(query, result)
    print("model> ", end="", flush=True)
    return [*turns, {"role": "assistant", "content": reply(model, tokenizer, [*messages, *turns], cfg, tools)}]


def main() -> None:
    (cfg,) = parse_config(ChatConfig)
    model, tokenizer = load(cfg)
    search = None
    if cfg.tools == "search":  # the run's index: <run>/search_index beside <run>/<stage>, or --search_index
        from posttrain.chat_template import enable_tools
        from posttrain.tools import SearchIndex, run_index, search_tool

        enable_tools(tokenizer)
        run_dir = Path(cfg.model).resolve().parent
        index = SearchIndex.load(cfg.search_index) if cfg.search_index else run_index(run_dir, run_dir / "world")
        search = search_tool(index, tokenizer=tokenizer)
    chat_loop(model, tokenizer, cfg, search=search)


if __name__ == "__main__":
    entrypoint(main)
