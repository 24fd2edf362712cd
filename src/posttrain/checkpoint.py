"""Training-state checkpoints: `accelerator.save_state`, written atomically, the last K kept, and resume.

Layout under a stage's checkpoint folder (e.g. `runs/<run>/checkpoints/pretrain/`):

    step_000200/     accelerate state (model, optimizer, scheduler, RNG of every process) + trainer_state.json
    step_000300/
    latest           one line: the name of the newest complete checkpoint

A checkpoint is saved into `.step_000300.tmp`, then renamed, then `latest` is replaced (also by rename), so a
kill at any moment leaves `latest` naming a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from posttrain.errors import REFUSED_PICKLE, UserError, raise_if_disk_full, refused_pickle
from posttrain.lineage import atomic_write_text

STATE_FILE = "trainer_state.json"
LATEST = "latest"  # the pointer file: one line, the name of the newest complete checkpoint


def not_finite_message(ckpt_root: str | Path, step: int, what: str) -> str:
    """The one line a stage stops with at a NaN/inf loss, before anything is checkpointed or exported."""
    pointer = Path(ckpt_root) / LATEST
    last = pointer.read_text().strip() if pointer.is_file() else None
    kept = f"the last checkpoint ({Path(ckpt_root) / last}) is intact" if last else "no checkpoint was written"
    return f"{what} at step {step}: lower --learning_rate (or check the data); {kept}"


def save(accelerator, ckpt_root: str | Path, step: int, trainer_state: dict, keep_last: int) -> Path:
    """Save on every process (accelerate needs all of them); the main process publishes and prunes."""
    root = Path(ckpt_root)
    name = f"step_{step:06d}"
    tmp = root / f".{name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    except Exception as exc:  # a full disk above all: leave no half checkpoint taking space; `latest` is untouched
        try:
            raise_if_disk_full(root, exc)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    final = root / name
    if accelerator.is_main_process:
        atomic_write_text(tmp / STATE_FILE, json.dumps(trainer_state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, name + "\n")
        complete = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())
        for old in complete[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def fresh_start(ckpt_root: str | Path, resume: str | None, overwrite: bool, processes) -> None:
    """A run started without --resume_from_checkpoint in a folder that holds an earlier run's checkpoints would
    overwrite them one by one (and mix old and new under `latest`): refuse, naming both ways on; with
    `overwrite_checkpoints`, clear them first (the main process of `processes`, an Accelerator or PartialState;
    every process waits for it)."""
    root = Path(ckpt_root)
    if resume or not root.is_dir():
        return
    done = sorted(p for p in root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file())
    if not done:
        return
    if not overwrite:
        raise UserError(f"{root} holds an earlier run's checkpoints (newest: {done[-1].name}): "
                        "--resume_from_checkpoint latest continues it, --overwrite_checkpoints true starts again")  # fmt: skip
    if processes.is_main_process:
        for path in done:
            shutil.rmtree(path, ignore_errors=True)
        (root / LATEST).unlink(missing_ok=True)
    processes.wait_for_everyone()


def named_by_latest(root: str | Path) -> Path | None:
    """The checkpoint `<root>/latest` names (the pointer is written only once a save is complete), or None before
    the first save. Shared by our own loops and the TRL stages (`stages.resolve_resume`)."""
    pointer = Path(root) / LATEST
    return Path(root) / pointer.read_text().strip() if pointer.is_file() else None


def require_complete(path: str | Path, marker: str = STATE_FILE) -> Path:
    """`path` when its `marker` (the last file a save writes) is there; a one-line error otherwise."""
    if not (Path(path) / marker).is_file():
        raise UserError(f"{path}: not a complete checkpoint (no {marker}); pass --resume_from_checkpoint latest")
    return Path(path)


def resolve(resume: str | None, ckpt_root: str | Path) -> Path | None:
    """`latest` → the newest complete checkpoint (None when there is none yet); a path → that checkpoint."""
    if not resume:
        return None
    path = named_by_latest(ckpt_root) if resume == "latest" else Path(resume)
    return require_complete(path) if path is not None else None


def load(accelerator, path: Path) -> dict:
    """Weights from safetensors; optimizer and RNG states through accelerate's `torch.load(weights_only=True)`,
    which refuses anything but tensors and plain data (a tampered pickle fails here, it does not run)."""
    try:
        accelerator.load_state(str(path))
        return json.loads((path / STATE_FILE).read_text())
    except Exception as exc:  # noqa: BLE001  (whatever the file, the cause to show is which checkpoint)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        why = REFUSED_PICKLE if refused_pickle(exc) else f"{type(exc).__name__}: {first}"
        raise UserError(f"{path}: cannot resume from this checkpoint ({why})") from exc


def export_hf(accelerator, model, tokenizer, out: str | Path, generation_config=None, extra=None) -> Path:
    """The stage's HF checkpoint (safetensors, tokenizer, generation config), written atomically.

    `accelerator.get_state_dict` gathers sharded weights (FSDP, ZeRO-3) on every process; the main one writes.
    `extra(tmp_dir)` adds files (lineage, metrics) inside the same atomic swap.
    """
    from posttrain.lineage import atomic_directory

    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with atomic_directory(out) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if generation_config is not None:
                generation_config.save_pretrained(tmp)
            if extra is not None:
                extra(tmp)
    accelerator.wait_for_everyone()
    return Path(out)
