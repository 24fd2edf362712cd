"""Data mixes: TRL's `DatasetMixtureConfig` plus what it lacks.

A mix file (`data_mixes/*.yaml`) is TRL's mixture YAML (`datasets: [{path, name, data_dir, data_files, split,
columns, fraction}]`, `streaming`, `test_split_size`) with a few additions:

- `kind`: what the mix holds (`text`, `conversations`, `qa`, `preferences`); fixes the columns every source must
  end with (CONTRACTS §3) and lets a Hub mix be validated offline without downloading anything;
- a source `path: world` reads the run's world directory through a named view (`name: documents | qa |
  conversations | qa_text | identity | reading | replay`), limited to `world_splits`, with view `options`;
- per-source `rename_columns` (applied after `columns`), so sources with other schemas join one mix;
- `seed`: the shuffle and the train/test split are seeded (TRL's `get_dataset` splits unseeded);
- `mix_hash`: a hash of the resolved mix and of the data it loaded, recorded with every run.

Loading a Hub or local source is TRL's `get_dataset` on a one-source mixture; fractions, concatenation and the
split happen here because renames must come before concatenation.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from trl import DatasetMixtureConfig, get_dataset
from trl.scripts.utils import DatasetConfig

from posttrain import world as world_lib
from posttrain.configs import check_keys, field_types, read_yaml_mapping
from posttrain.errors import UserError

REQUIRED_COLUMNS = {
    "text": ["text"],
    "conversations": ["messages"],
    "qa": ["question", "answer"],
    "preferences": ["prompt", "chosen", "rejected"],
}
# Columns accepted under another name (CONTRACTS §3: SimpleQA's `problem` is a `question`).
ACCEPTED_ALIASES = {"qa": {"problem": "question"}}
WORLD = "world"


@dataclass
class MixSource(DatasetConfig):
    """One source of a mix: TRL's `DatasetConfig` plus renames and the world's options."""

    rename_columns: dict[str, str] | None = None
    world_splits: list[str] | None = None
    options: dict | None = None

    @property
    def is_world(self) -> bool:
        return self.path == WORLD


@dataclass
class DataMix(DatasetMixtureConfig):
    """A mix file: TRL's `DatasetMixtureConfig` plus `kind`, `seed`, `shuffle` and a description."""

    kind: str = "text"
    seed: int = 0
    shuffle: bool = True
    description: str = ""
    source_file: str = field(default="<inline>", repr=False)

    def __post_init__(self):
        self.datasets = [MixSource(**d) if isinstance(d, dict) else d for d in self.datasets]


def read_mix(path: str | Path, run_dir: str | Path | None = None) -> DataMix:
    """Parse and validate a mix file without loading any data (so Hub mixes are checked offline).

    `{run_dir}` in a source's path, data_dir or data_files stands for the run directory (e.g. a probe stage's
    output, `{run_dir}/probe/refusal_sft.jsonl`)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "data mix")
    if run_dir is not None:
        raw = _substitute(raw, "{run_dir}", str(run_dir))
    mix_keys = field_types([DataMix])
    mix_keys.pop("source_file")  # set by read_mix, not by the user
    check_keys(raw, mix_keys, str(path))
    sources = raw.get("datasets")
    if not isinstance(sources, list) or not sources:
        raise UserError(f"{path}: 'datasets' must be a non-empty list of sources")
    source_types = field_types([MixSource])
    for i, src in enumerate(sources):
        where = f"{path}: source {i}"
        if not isinstance(src, dict):
            raise UserError(f"{where}: must be a mapping with at least 'path'")
        check_keys(src, source_types, where)
        if not src.get("path"):
            raise UserError(f"{where}: missing 'path'")
    try:
        mix = DataMix(**raw, source_file=str(path))
    except TypeError as exc:
        raise UserError(f"{path}: {exc}") from None
    validate_mix(mix)
    return mix


def _substitute(value, key: str, replacement: str):
    if isinstance(value, str):
        return value.replace(key, replacement)
    if isinstance(value, list):
        return [_substitute(v, key, replacement) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, key, replacement) for k, v in value.items()}
    return value


def validate_mix(mix: DataMix) -> None:
    """Schema checks that need no data: kind, world views and splits, fractions, and the final columns."""
    path = mix.source_file
    if mix.kind not in REQUIRED_COLUMNS:
        raise UserError(f"{path}: kind '{mix.kind}' is not one of {', '.join(REQUIRED_COLUMNS)}")
    fractions = [s.fraction for s in mix.datasets]
    if any(f is not None for f in fractions):
        if any(f is None for f in fractions):
            raise UserError(f"{path}: 'fraction' must be set for all sources or none")
        if any(f <= 0 for f in fractions):
            raise UserError(f"{path}: every 'fraction' must be > 0")
    if mix.test_split_size is not None and mix.test_split_size <= 0:
        raise UserError(f"{path}: test_split_size must be a fraction in (0, 1) or a row count >= 1")
    for i, src in enumerate(mix.datasets):
        where = _describe(i, src, mix)
        if src.is_world:
            if src.name not in world_lib.VIEWS:
                raise UserError(f"{where}: world sources need name: one of {', '.join(world_lib.VIEWS)}")
            try:
                world_lib.check_splits(src.world_splits or [])
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
        elif src.world_splits or src.options:
            raise UserError(f"{where}: 'world_splits' and 'options' only apply to path: world")
        if src.columns is not None:
            final = [(src.rename_columns or {}).get(c, c) for c in src.columns]
            missing = [c for c in _required(mix.kind, final) if c not in final]
            if missing:
                raise UserError(f"{where}: the selected columns {src.columns} give no '{missing[0]}' column")


def _required(kind: str, present: list[str]) -> list[str]:
    aliases = ACCEPTED_ALIASES.get(kind, {})
    return [c for c in REQUIRED_COLUMNS[kind] if not any(a in present and b == c for a, b in aliases.items())]


def _load_source(mix: DataMix, src: MixSource, world: datasets.DatasetDict | None, where: str):
    if src.is_world:
        if world is None:
            raise UserError(f"{where}: the mix reads the world but no world directory was given")
        kwargs = dict(src.options or {})
        kwargs.setdefault("seed", mix.seed)
        if src.world_splits is not None:
            kwargs["splits"] = src.world_splits
        try:
            ds = world_lib.VIEWS[src.name](world, **kwargs)
        except TypeError as exc:
            raise UserError(f"{where}: bad options {src.options}: {exc}") from None
        if src.columns is not None:
            ds = _select(ds, src.columns, where)
        return ds.to_iterable_dataset() if mix.streaming else ds
    one = DatasetMixtureConfig(
        datasets=[DatasetConfig(src.path, src.name, src.data_dir, src.data_files, src.split, None)],
        streaming=mix.streaming,
    )
    try:
        ds = get_dataset(one)["train"]
    except UserError:
        raise
    except Exception as exc:  # missing file, no network, bad JSON row, unknown split...: one line naming all
        bad_line = _first_bad_json_line(src)
        if bad_line is not None:
            raise UserError(f"{where}: {bad_line[0]} line {bad_line[1]} is not valid JSON") from None
        raise UserError(f"{where}: cannot load ({_root_cause(exc)})") from None
    if src.columns is not None:
        ds = _select(ds, src.columns, where)
    return ds


def _first_bad_json_line(src: MixSource) -> tuple[str, int] | None:
    """For a local JSON Lines source that failed to load: the first line that is not valid JSON."""
    files = [src.data_files] if isinstance(src.data_files, str) else list(src.data_files or [])
    if src.path != "json" or not all(isinstance(f, str) and f.endswith(".jsonl") for f in files):
        return None
    for f in files:
        if not Path(f).is_file():
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError:
                        return f, n
    return None


def _root_cause(exc: BaseException) -> str:
    """The innermost error: `datasets` wraps a bad JSON row in a generic DatasetGenerationError."""
    while (exc.__cause__ or exc.__context__) is not None and not str(exc).strip().startswith("Unable to find"):
        inner = exc.__cause__ or exc.__context__
        if isinstance(exc, StopIteration) or not str(inner).strip():
            break
        exc = inner
    if isinstance(exc, StopIteration):
        return "the source has no rows"
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}"


def _describe(i: int, src: MixSource, mix: DataMix) -> str:
    """'<mix file>: source 2 (json: data/a.jsonl)': what the user wrote, so they can find it."""
    label = src.path + (f"/{src.name}" if src.name else "")
    if src.data_files:
        files = src.data_files if isinstance(src.data_files, str) else ", ".join(map(str, src.data_files))
        label += f": {files}"
    return f"{mix.source_file}: source {i} ({label})"


def _select(ds, columns: list[str], where: str):
    names = ds.column_names or []
    missing = [c for c in columns if c not in names]
    if missing and names:
        raise UserError(f"{where}: missing column '{missing[0]}' (has: {', '.join(names)})")
    return ds.select_columns(columns)


def _finish_source(mix: DataMix, src: MixSource, ds, where: str):
    renames = dict(src.rename_columns or {})
    names = ds.column_names or []
    for old, new in ACCEPTED_ALIASES.get(mix.kind, {}).items():
        if old in names and new not in names and old not in renames:
            renames[old] = new
    missing = [old for old in renames if old not in names]
    if missing and names:
        raise UserError(f"{where}: cannot rename missing column '{missing[0]}' (has: {', '.join(names)})")
    if renames:
        ds = ds.rename_columns(renames)
    names = ds.column_names or []
    required = REQUIRED_COLUMNS[mix.kind]
    missing = [c for c in required if c not in names]
    if missing and names:
        raise UserError(
            f"{where}: missing column '{missing[0]}' needed by a '{mix.kind}' mix (has: {', '.join(names)})"
        )
    if not mix.streaming and len(ds) == 0:
        raise UserError(f"{where}: the source is empty")
    # Keep only the columns every source shares, so concatenation always works.
    if names:
        ds = ds.select_columns([c for c in names if c in required or c in _OPTIONAL.get(mix.kind, ())])
    return ds


# Optional columns kept when present (CONTRACTS §3).
_OPTIONAL = {
    "qa": ("aliases", "bucket", "context", "person_id", "attribute", "split"),
    "conversations": ("tools",),  # the tools a conversation lists (JSON), for chat templates that render them
    "text": (),
    "preferences": ("pair_type",),  # the probe's kind of pair (refusal_over_wrong, ...): accuracy per kind
}


def load_mix(mix: DataMix | str | Path, world_dir: str | Path | None = None) -> datasets.DatasetDict:
    """Load a mix into a DatasetDict with `train` (and `test` when `test_split_size` is set)."""
    if not isinstance(mix, DataMix):
        mix = read_mix(mix)
    world = world_lib.load_world(world_dir) if world_dir and any(s.is_world for s in mix.datasets) else None
    parts = []
    for i, src in enumerate(mix.datasets):
        where = _describe(i, src, mix)
        ds = _finish_source(mix, src, _load_source(mix, src, world, where), where)
        parts.append(ds)
    weights = None
    if mix.datasets[0].fraction is not None:
        weights = [s.fraction / sum(x.fraction for x in mix.datasets) for s in mix.datasets]
    common = [c for c in parts[0].column_names or [] if all(c in (p.column_names or [c]) for p in parts)]
    if common and not mix.streaming:
        parts = [p.select_columns(common) for p in parts]
    if weights and mix.streaming:
        # TRL refuses fractions when streaming; for Hub-scale pretraining we interleave with those probabilities,
        # repeating small sources (e.g. the world's biographies) until the largest is exhausted.
        combined = datasets.interleave_datasets(
            parts, probabilities=weights, seed=mix.seed, stopping_strategy="all_exhausted"
        )
    else:
        if weights:
            # Same semantics as trl.get_dataset: fractions are target shares; no source is oversampled.
            total = min(len(d) / w for d, w in zip(parts, weights))
            parts = [d.select(range(round(w * total))) for d, w in zip(parts, weights)]
        combined = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if mix.shuffle:
        combined = (
            combined.shuffle(seed=mix.seed)
            if not mix.streaming
            else combined.shuffle(seed=mix.seed, buffer_size=10_000)
        )
    if mix.test_split_size is not None and not mix.streaming:
        if len(combined) < 2:
            raise UserError(f"{mix.source_file}: too few rows ({len(combined)}) for a test split")
        return combined.train_test_split(test_size=mix.test_split_size, seed=mix.seed, shuffle=True)
    return datasets.DatasetDict({"train": combined})


def mix_hash(mix: DataMix, world_dir: str | Path | None = None) -> str:
    """Which data made a run: the resolved mix, the world's content hash, and the content of local data files.

    Hub sources are named by path/name/split (their content cannot be read offline). Local files over 256 MB
    are named by size and modification time instead of their bytes, to keep this fast.
    """
    h = hashlib.sha256()
    cfg = {k: v for k, v in dataclasses.asdict(mix).items() if k not in ("source_file", "description")}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    if world_dir and any(s.is_world for s in mix.datasets):
        h.update(world_lib.world_hash(world_dir).encode())
    for src in mix.datasets:
        for f in _local_files(src):
            stat = f.stat()
            h.update(str(f).encode())
            h.update(f.read_bytes() if stat.st_size <= 256 << 20 else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _local_files(src: MixSource) -> list[Path]:
    files = src.data_files
    if isinstance(files, dict):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    elif isinstance(files, str):
        files = [files]
    out = []
    for pattern in files or []:  # data_files may be globs, relative to the working directory as in `datasets`
        out += sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
    return out
