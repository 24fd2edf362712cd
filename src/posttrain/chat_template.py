"""Make any causal LM's tokenizer ready for chat SFT: template, special tokens, pad token, end-of-turn stop.

The one documented way posttrain fixes a tokenizer (README, "Any base model"):
1. no chat template → posttrain's ChatML template (with `{% generation %}` markers) and its `<|im_start|>` /
   `<|im_end|>` tokens, added as special tokens;
2. a template without `{% generation %}` markers while the loss is on assistant turns only → TRL's training
   version of that template when TRL knows it (`get_training_chat_template`), posttrain's ChatML when the template
   is ChatML (e.g. SmolLM2), otherwise a clear error (set `assistant_only_loss: false` or `chat_template_path`);
3. no pad token → a new `<|pad|>` special token (never the eos token: padding must not look like a stop);
4. new tokens → the embedding matrix grows, new rows start at the mean of the old ones (HF's resize default);
5. the generation config stops at the template's end-of-turn token, so a user's `generate` ends after an answer.
"""

from __future__ import annotations

from trl.chat_template_utils import get_training_chat_template, has_generation_markers, supports_tool_calling

from posttrain.errors import UserError
from posttrain.tokenizer import (
    CHAT_TEMPLATE,
    END_OF_TURN,
    IM_START,
    PAD,
    RESPONSE_TEMPLATE,
    chatml_template,
    is_chatml_template,
)

_PROBE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]


def _is_chatml(template: str) -> bool:
    return IM_START in template and END_OF_TURN in template


def prepare_chat(model, tokenizer, assistant_only_loss: bool = True) -> list[str]:
    """Fix `tokenizer` (and `model`'s embeddings and configs) in place; returns what was changed, for the log."""
    changes = []
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, END_OF_TURN]})
        tokenizer.chat_template = CHAT_TEMPLATE
        changes.append("added posttrain's ChatML chat template and its tokens")
    elif assistant_only_loss and not has_generation_markers(template):
        patched = get_training_chat_template(tokenizer) if not _is_chatml(template) else None
        if patched is None and _is_chatml(template):
            patched = chatml_template(default_system(tokenizer))
        if patched is None:
            raise UserError(
                f"{tokenizer.name_or_path}: the chat template has no {{% generation %}} markers, which "
                "assistant_only_loss needs; set assistant_only_loss: false or give chat_template_path"
            )
        tokenizer.chat_template = patched
        changes.append("chat template swapped for a training template with {% generation %} markers")
    if is_chatml_template(tokenizer.chat_template):  # ours, however it got there: parse_response reads its tool calls
        tokenizer.response_template = RESPONSE_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
        changes.append(f"added pad token {PAD}")

    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        changes.append(f"embeddings resized to {len(tokenizer)} tokens")
    eot = end_of_turn_id(tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eot)
    model.config.eos_token_id = eot
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)  # a reward model (sequence classifier) has none
    if gen is not None:
        stops = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        gen.eos_token_id = [eot] + [t for t in stops if t is not None and t != eot]
        gen.pad_token_id = tokenizer.pad_token_id
    return changes


def default_system(tokenizer) -> str | None:
    """The system message a ChatML template writes into a conversation that has none (SmolLM2's: "You are a helpful
    AI assistant named SmolLM, trained by Hugging Face"), or None. A training template must keep it: without it the
    packaged SmolLM2 answers fewer real questions right (known + rare 0.41 -> 0.38, currencies 0.41 -> 0.31; LOG
    2026-12-08), and every stage trained on it would be measured against a base that saw another prompt."""
    try:
        text = tokenizer.apply_chat_template(_PROBE[:1], tokenize=False)
    except Exception:  # a template that cannot render a lone user turn has no default to keep
        return None
    head = IM_START + "system\n"
    start, user = text.find(head), text.find(IM_START + "user")
    if start < 0 or user < 0 or start > user:
        return None
    end = text.find(END_OF_TURN, start)
    content = text[start + len(head) : end] if 0 <= end < user else ""
    return content or None


def end_of_turn_id(tokenizer) -> int:
    """The special token the chat template writes right after an assistant message (what must stop `generate`)."""
    ids = tokenizer.apply_chat_template(_PROBE, tokenize=True, return_dict=False)
    ids = ids["input_ids"] if isinstance(ids, dict) else ids
    pong = tokenizer.encode("pong", add_special_tokens=False)
    special = set(tokenizer.all_special_ids)
    for start in range(len(ids) - len(pong), -1, -1):
        if ids[start : start + len(pong)] == pong:
            for tok in ids[start + len(pong) :]:
                if tok in special:
                    return tok
            break
    if tokenizer.eos_token_id is None:
        raise UserError(f"{tokenizer.name_or_path}: cannot tell the chat template's end-of-turn token")
    return tokenizer.eos_token_id


def enable_tools(tokenizer) -> list[str]:
    """Make `tokenizer` render and parse tool calls (the search stage, chat with --tools): a ChatML template that
    drops them (an older posttrain checkpoint, SmolLM2's own) becomes posttrain's ChatML, which renders tool calls
    and `tool` turns and renders a tool-free conversation byte for byte as before; any template gets a way to
    parse replies (`response_template`) when it has none. Returns what was changed, for the log."""
    changes = []
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not supports_tool_calling(tokenizer):
        if not template or not _is_chatml(template):
            raise UserError(f"{tokenizer.name_or_path}: the chat template cannot render tool calls (give a template "
                            "that does with chat_template_path)")  # fmt: skip
        tokenizer.chat_template = chatml_template(default_system(tokenizer))
        changes.append("chat template swapped for posttrain's ChatML with tool calls")
    if getattr(tokenizer, "response_template", None) is None:
        if not is_chatml_template(tokenizer.chat_template):
            from trl.chat_template_utils import add_response_schema

            try:
                add_response_schema(tokenizer)
            except ValueError as exc:
                raise UserError(f"{tokenizer.name_or_path}: no parser for this chat template's tool calls "
                                "(set tokenizer.response_template)") from exc  # fmt: skip
        else:
            tokenizer.response_template = RESPONSE_TEMPLATE
        changes.append("response template for parsing tool calls")
    return changes
