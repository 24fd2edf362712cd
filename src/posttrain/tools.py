"""Search when unsure (issue 24): a `search(query)` tool over a run's corpus, and running it inside a chat.

The ranking is BM25 from `bm25s` (a maintained BM25 library, numpy only); what is ours is the corpus (the world's
documents — the model's own pretraining text — with their row numbers as stable ids), the result format the model
reads and cites (`[doc 812] Ada Velmor was born in Dunmere. …`), the token budget, and the loop that executes the
model's tool calls (transformers renders them with the chat template's `tools` and parses replies with
`tokenizer.parse_response`; nothing of that is hand-written here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError

INDEX_DIR = "search_index"  # <run_dir>/search_index/: the bm25s index and docs.jsonl (id, text)
NO_RESULTS = "No documents found."
CITATION = re.compile(r"\[doc (\d+)\]")


@dataclass
class Hit:
    doc_id: int
    text: str
    score: float


def _tokenize(texts: list[str]):
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class SearchIndex:
    """BM25 over `docs` ({"id": int, "text": str}); `search` returns the hits with a positive score, best first."""

    def __init__(self, retriever, docs: list[dict]):
        self.retriever, self.docs = retriever, docs
        self.by_id = {d["id"]: d["text"] for d in docs}

    @classmethod
    def build(cls, docs: list[dict]) -> SearchIndex:
        import bm25s

        if not docs:
            raise UserError("search: the corpus has no documents to index")
        retriever = bm25s.BM25()
        retriever.index(_tokenize([d["text"] for d in docs]), show_progress=False)
        return cls(retriever, docs)

    def save(self, path: str | Path) -> Path:
        """Atomically: a kill mid-write leaves no half index that a later stage would load."""
        from posttrain.lineage import atomic_directory

        with atomic_directory(path) as tmp:
            self.retriever.save(str(tmp))
            (Path(tmp) / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in self.docs))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SearchIndex:
        import bm25s

        docs_file = Path(path) / "docs.jsonl"
        if not docs_file.is_file():
            raise UserError(f"{path}: not a search index (no docs.jsonl)")
        docs = [json.loads(line) for line in docs_file.read_text().splitlines() if line.strip()]
        return cls(bm25s.BM25.load(str(path)), docs)

    def search(self, query: str, k: int = 2) -> list[Hit]:
        tokens = _tokenize([query])
        if not tokens[0]:
            return []
        rows, scores = self.retriever.retrieve(tokens, k=min(k, len(self.docs)), show_progress=False)
        return [Hit(self.docs[r]["id"], self.docs[r]["text"], float(s))
                for r, s in zip(rows[0], scores[0]) if s > 0]  # fmt: skip


def format_hits(hits: list[Hit], budget_tokens: int = 160, count: Callable[[str], int] | None = None) -> str:
    """What the model reads: one `[doc ID] text` line per hit, whole sentences, at most `budget_tokens` tokens in all
    (`count` tokenizes; words without one); `NO_RESULTS` when nothing matched."""
    count = count or (lambda s: len(s.split()))
    lines, used = [], 0
    for hit in hits:
        kept = []
        for sentence in re.split(r"(?<=[.!?])\s+", hit.text.strip()):
            n = count(sentence + " ")
            if used + n > budget_tokens:
                break
            kept.append(sentence)
            used += n
        if kept:
            lines.append(f"[doc {hit.doc_id}] " + " ".join(kept))
        if used >= budget_tokens:
            break
    return "\n".join(lines) or NO_RESULTS


def corpus_docs(world) -> list[dict]:
    """The world's documents (the biographies the model was pretrained on), their row number as the stable id."""
    return [{"id": i, "text": t} for i, t in enumerate(world["documents"]["text"])]


def run_index(run_dir: str | Path, world_dir: str | Path | None = None) -> SearchIndex:
    """The run's index: loaded from <run_dir>/search_index, or built from the world's documents and saved there."""
    from posttrain import world as world_lib

    path = Path(run_dir) / INDEX_DIR
    if (path / "docs.jsonl").is_file():
        return SearchIndex.load(path)
    index = SearchIndex.build(corpus_docs(world_lib.load_world(world_dir or Path(run_dir) / "world")))
    index.save(path)
    return index


def search_tool(index: SearchIndex, k: int = 2, budget_tokens: int = 160, tokenizer=None) -> Callable[[str], str]:
    """The tool a chat template lists and a model calls (its docstring is the schema transformers writes)."""
    count = (lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])) if tokenizer is not None else None

    def search(query: str) -> str:
        """Search the documents for a person or a place.

        Args:
            query: The name to look up.
        """
        return format_hits(index.search(query, k), budget_tokens, count)

    return search


def tool_call(query: str) -> dict:
    """An assistant message that calls search (the form chat templates render and `parse_response` returns)."""
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": query}}}]}  # fmt: skip


def search_turns(query: str, result: str) -> list[dict]:
    """The two turns a search adds to a conversation: the assistant's call and the tool's result."""
    return [tool_call(query), {"role": "tool", "name": "search", "content": result}]


def called_query(tokenizer, text: str) -> str | None:
    """The query of the reply's first tool call (read with `parse_reply`); None when the reply calls nothing."""
    calls = parse_reply(tokenizer, text).get("tool_calls") or []
    return str((calls[0].get("function", {}).get("arguments") or {}).get("query", "")) if calls else None


def parse_reply(tokenizer, text: str) -> dict:
    """The reply as a message (content and tool_calls) via the tokenizer's response template; a reply the parser
    cannot read (a malformed call) is plain content."""
    try:
        return tokenizer.parse_response(text, prefix="")
    except (ValueError, KeyError, TypeError):
        return {"role": "assistant", "content": text}


def citations(text: str) -> list[int]:
    return [int(m) for m in CITATION.findall(text)]
