"""What each stage folder records about how it was made: `lineage.json`.

A stage is a function of folders: it reads its parents' folders, writes its own, and records there its config,
its parents (path and hash), the data mix and its hash, the package version and a summary of its numbers.
Reports and model cards are built from these records, never from memory. No timestamps and no environment:
a record is reproducible (the world's folder stays byte-identical for a seed) and holds no secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from posttrain import __version__
from posttrain.errors import raise_if_disk_full

LINEAGE_FILE = "lineage.json"


def write_lineage(
    stage_dir: str | Path,
    stage: str,
    config: dict,
    parents: dict[str, dict] | None = None,
    data_mix: dict | None = None,
    summary: dict | None = None,
) -> Path:
    record = {
        "stage": stage,
        "posttrain_version": __version__,
        "config": config,
        "parents": parents or {},
        "data_mix": data_mix,
        "summary": summary or {},
    }
    path = Path(stage_dir) / LINEAGE_FILE
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


def folder_hash(path: str | Path, patterns: tuple[str, ...]) -> str:
    """sha256 over the files of a folder that match `patterns` (names and bytes, in a fixed order)."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted({f for pattern in patterns for f in path.glob(pattern) if f.is_file()}):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def read_lineage(stage_dir: str | Path) -> dict | None:
    path = Path(stage_dir) / LINEAGE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class atomic_directory:
    """Build a directory under a temporary name and swap it into place on success.

    `with atomic_directory(out) as tmp: save_to(tmp)`; a kill or an error leaves the previous `out` untouched.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")

    def __enter__(self) -> Path:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        import shutil

        if exc_type is not None:
            try:
                raise_if_disk_full(self.path.parent, exc)
            finally:
                shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = self.path.with_name(f".{self.path.name}.old{os.getpid()}")
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
        return False
