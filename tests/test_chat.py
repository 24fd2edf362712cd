"""`python -m posttrain.chat` in a real pseudo-terminal (pexpect), on the converted SmolLM2: start, ask, read the
streamed answer, ask again in the same conversation, reset, exit; and the one line for a bad model path."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO, assert_one_line_error, run

pexpect = pytest.importorskip("pexpect", reason="make test installs it (the dev extra)")


@pytest.mark.slow
def test_chat_streams_answers_keeps_the_conversation_and_resets(converted):
    child = pexpect.spawn(sys.executable, ["-m", "posttrain.chat", "--model", str(converted), "--max_new_tokens", "24"],
                          cwd=str(REPO), encoding="utf-8", timeout=240, dimensions=(40, 200))  # fmt: skip
    try:
        child.expect("you> ")
        assert f"chatting with {converted}" in child.before
        child.sendline("What is the capital of France?")
        child.expect("model> ")
        child.expect("you> ")  # the next prompt comes only after the reply was streamed in full
        assert "Paris" in child.before, child.before
        child.sendline("Repeat the city you just named, one word.")
        child.expect("model> ")
        child.expect("you> ")
        assert "Paris" in child.before, f"the second turn sees the first: {child.before!r}"
        child.sendline("/reset")
        child.expect_exact("(new conversation)")
        child.sendline("/nonsense")
        child.expect_exact("unknown command /nonsense")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_chat_bad_model_path_is_one_line(tmp_path):
    proc = run([sys.executable, "-m", "posttrain.chat", "--model", str(tmp_path / "nope")])
    assert_one_line_error(proc, str(tmp_path / "nope"), "no such model directory")
    (tmp_path / "empty").mkdir()
    proc = run([sys.executable, "-m", "posttrain.chat", "--model", str(tmp_path / "empty")])
    assert_one_line_error(proc, "not a model directory")
    proc = run([sys.executable, "-m", "posttrain.chat", "--model", str(tmp_path / "empty"), "--tools", "web"])
    assert_one_line_error(proc, "tools must be search")
