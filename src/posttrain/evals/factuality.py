"""The factuality evaluation: questions → greedy + sampled answers → grades → metrics per bucket + calibration.

Eval sets: a run or world directory (the world's eval buckets: known, rare, never_seen), a local QA file or a Hub
QA dataset (columns `question` or SimpleQA's `problem`, `answer`, optional `aliases` and `bucket`). A base model
(a `pretrain` stage) is asked with a few-shot QA prompt, any other model through its chat template.
Questions are split over processes under `accelerate launch` and gathered on the main process.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain import world as world_lib
from posttrain.decline import ABSTAIN_LINE, SCORE_LINE
from posttrain.errors import UserError
from posttrain.evals import compare
from posttrain.evals.grading import CORRECT, NOT_ATTEMPTED, extract_answer, grade, normalize
from posttrain.evals.metrics import auroc, bucket_metrics, clean, ece, rater_agreement, reliability_bins
from posttrain.generation import auto_batch_size, generate, load_for_generation
from posttrain.lineage import atomic_write_text
from posttrain.plots import reliability_diagram
from posttrain.report import build_report
from posttrain.runtime import process_state
from posttrain.tools import CITATION, search_tool

GENERIC_SHOTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Who wrote the novel Moby-Dick?", "Moby-Dick was written by Herman Melville."),
    ("In what year did the Apollo 11 mission land on the Moon?", "Apollo 11 landed on the Moon in 1969."),
]


def _world_dir(path: Path) -> Path | None:
    for cand in (path, path / "world"):
        if (cand / "dataset_dict.json").is_file():
            return cand
    return None


def load_eval_set(eval_set: str, seed: int = 0, max_per_bucket: int | None = None, split: str = "test"):
    """(rows, few-shot examples). Each row: question, answers (accepted strings), bucket, candidates."""
    world_dir = _world_dir(Path(eval_set))
    if world_dir is not None:
        world = world_lib.load_world(world_dir)
        qa = world["qa"]
        by_attr = world_lib.answers_by_attribute(qa)
        rows = [
            {
                "question": r["question"],
                "answers": list(dict.fromkeys([r["answer"], *r["aliases"]])),
                "bucket": world_lib.EVAL_BUCKETS[r["split"]],
                "candidates": by_attr[r["attribute"]],
                "attribute": r["attribute"],
            }
            for r in qa
            if r["split"] in world_lib.EVAL_BUCKETS
        ]
        shots = world_shots(world, seed) or GENERIC_SHOTS
    else:
        rows, shots = _load_qa_dataset(eval_set, split), GENERIC_SHOTS
    if not rows:
        raise UserError(f"{eval_set}: no evaluation questions")
    return _subsample(rows, seed, max_per_bucket), shots


TOOL_CALL_TOKENS = 64  # room for a tool call's JSON in the first turn, beyond the answer's max_new_tokens


def search_index_for(cfg, tokenizer, style: str):
    """The eval's search index (`--search_index`, else the run's, built when missing; CONTRACTS §5 `tool`); the
    tokenizer learns to render and parse calls."""
    from posttrain.chat_template import enable_tools
    from posttrain.tools import SearchIndex, run_index

    if style != "chat":
        raise UserError(f"{cfg.model}: --tools search needs a chat model (this one is asked with few-shot prompts)")
    enable_tools(tokenizer)
    if cfg.search_index:
        return SearchIndex.load(cfg.search_index)
    world_dir = _world_dir(Path(cfg.eval_set))
    if world_dir is None:
        raise UserError(f"{cfg.eval_set}: --tools search needs a run or world directory, or --search_index")
    run_dir = world_dir.parent if world_dir.name == "world" else world_dir  # a bare world keeps its index inside
    return run_index(run_dir, world_dir)


def answer_with_search(model, tokenizer, conversations: list, search, cfg, batch_size: int):
    """Greedy answers where the model may first call `search` once: generate with the tool listed; run each call
    (parsed with the tokenizer's response template); generate the final answer after the tool's turn. Returns the
    final generations and, per question, the search trace (query, the documents it returned)."""
    from posttrain.tools import called_query, citations, parse_reply, search_turns

    def rendered(messages):
        return tokenizer.apply_chat_template(messages, tools=[search], tokenize=False, add_generation_prompt=True)

    kw = {"batch_size": batch_size, "precision": cfg.mixed_precision}
    # the first turn may be a call: its JSON takes ~56 tokens of a small world tokenizer (31 of SmolLM2's) on top
    first, _ = generate(model, tokenizer, [rendered(c) for c in conversations], desc="eval (search: first turn)",
                        max_new_tokens=cfg.max_new_tokens + TOOL_CALL_TOKENS, **kw)  # fmt: skip
    final, trace, again = list(first), [], {}
    for i, (conv, gen) in enumerate(zip(conversations, first)):
        query = called_query(tokenizer, gen.text)
        result = search(query) if query is not None else None
        trace.append({"searched": query is not None, "query": query, "found": citations(result or "")})
        if query is not None:
            again[i] = rendered([*conv, *search_turns(query, result)])
    if again:
        second, _ = generate(model, tokenizer, list(again.values()), desc="eval (search: answer)",
                             max_new_tokens=cfg.max_new_tokens, **kw)  # fmt: skip
        for i, gen in zip(again, second):
            reply = parse_reply(tokenizer, gen.text)
            final[i] = type(gen)(reply.get("content") or "", gen.mean_token_prob, gen.decline_prob, gen.decline_margin)
    for t, gen in zip(trace, final):
        t["cited"] = citations(gen.text)
    return final, trace


def tool_metrics(records: list[dict], index) -> dict:
    """CONTRACTS §5 `tool`: searches per question by bucket, and citation precision — the share of answers citing
    a document whose cited document states the answer (any accepted form, as the grader normalises)."""
    by_bucket = defaultdict(list)
    for r in records:
        by_bucket[r["bucket"]].append(r["searched"])
    cited = [r for r in records if r.get("cited")]
    ok = [any(any(normalize(a) in normalize(index.by_id.get(d, "")) for a in r["answers"]) for d in r["cited"])
          for r in cited]  # fmt: skip
    return {"name": "search", "searches_per_question": {b: sum(v) / len(v) for b, v in by_bucket.items()},
            "citation_precision": sum(ok) / len(ok) if ok else None, "cited_answers": len(cited),
            "answers_citing_a_searched_document": sum(bool(set(r["cited"]) & set(r["found"])) for r in cited)}  # fmt: skip


def held_out(eval_set: str) -> dict:
    """The kinds of fact the world kept out of training (`holdout_attributes`, from its lineage), for the JSON."""
    world_dir = _world_dir(Path(eval_set))
    lineage = world_dir / "lineage.json" if world_dir else None
    if lineage is None or not lineage.is_file():
        return {}
    kinds = json.loads(lineage.read_text()).get("summary", {}).get("held_out_attributes")
    return {"held_out_attributes": kinds} if kinds else {}


def world_shots(world, seed: int = 0, n: int = 3) -> list[tuple[str, str]]:
    """The few-shot examples of a base model's prompt: (question, answer sentence), one per attribute, about
    training-split people only (a shot never gives away an eval fact). `evals/export_qa.py` exports the same ones
    for lm-evaluation-harness, so both evaluations send the same prompt."""
    rng = random.Random(seed)
    qa = world["qa"]
    train = world_lib.annotate(world, [r for r in qa if r["split"] in world_lib.TRAIN_SPLITS])
    picked, seen_attrs = [], set()
    for r in rng.sample(train, min(len(train), 200)):
        if r["attribute"] not in seen_attrs:
            seen_attrs.add(r["attribute"])
            picked.append((r["question"], world_lib.answer_sentence(r)))
        if len(picked) == n:
            break
    return picked


def _load_qa_dataset(eval_set: str, split: str) -> list[dict]:
    from posttrain.data import DataMix, MixSource, load_mix

    path = Path(eval_set)
    if path.is_file():
        fmt = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        if fmt is None:
            raise UserError(f"{eval_set}: unknown QA file type (use .jsonl, .json, .parquet or .csv)")
        source = MixSource(path=fmt, data_files=str(path))
    elif path.exists() or eval_set.startswith((".", "/")):
        raise UserError(f"{eval_set}: not a run/world directory or a QA file")
    else:
        source = MixSource(path=eval_set, split=split)
    mix = DataMix(datasets=[source], kind="qa", shuffle=False, source_file=eval_set)
    data = load_mix(mix)["train"]
    rows = []
    for r in data:
        aliases = r.get("aliases") or []
        rows.append(
            {
                "question": r["question"],
                "answers": list(dict.fromkeys([str(r["answer"]), *map(str, aliases)])),
                "bucket": r.get("bucket") or "all",
                "candidates": [],
                **({"attribute": r["attribute"]} if r.get("attribute") else {}),
            }
        )
    return rows


def _subsample(rows: list[dict], seed: int, max_per_bucket: int | None) -> list[dict]:
    if max_per_bucket is None:
        return rows
    rng = random.Random(seed)
    by_bucket = defaultdict(list)
    for r in rows:
        by_bucket[r["bucket"]].append(r)
    out = []
    for bucket in sorted(by_bucket):
        items = by_bucket[bucket]
        out += items if len(items) <= max_per_bucket else rng.sample(items, max_per_bucket)
    return out


def prompt_style(model_dir: str | Path, tokenizer, requested: str) -> str:
    if requested != "auto":
        return requested
    lineage = Path(model_dir) / "lineage.json"
    if lineage.is_file() and json.loads(lineage.read_text()).get("stage") == "pretrain":
        return "fewshot"
    return "chat" if tokenizer.chat_template else "fewshot"


def build_prompts(rows: list[dict], shots: list[tuple[str, str]], style: str, tokenizer) -> list:
    if style == "chat":
        return [[{"role": "user", "content": r["question"]}] for r in rows]
    head = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    bos = tokenizer.bos_token or ""
    return [f"{bos}{head}Question: {r['question']}\nAnswer:" for r in rows]


def score(rows: list[dict], greedy, samples) -> list[dict]:
    """Grade each greedy answer; confidence = share of sampled answers that agree with it."""
    records = []
    for r, g, s in zip(rows, greedy, samples):
        text = CITATION.sub("", g.text)  # an answer from search is graded without its citations
        answer = extract_answer(text.replace(" .", "."))
        key = normalize(answer)
        agree = sum(normalize(extract_answer(x)) == key for x in s) / len(s) if s else None
        records.append(
            {
                "question": r["question"],
                "bucket": r["bucket"],
                **({"attribute": r["attribute"]} if "attribute" in r else {}),
                "answers": r["answers"],
                "response": answer,
                "grade": grade(text, r["answers"], r["candidates"]),
                "confidence": agree,
                "token_prob": g.mean_token_prob,
                "decline_score": g.decline_prob,
                "decline_margin": g.decline_margin,
                "samples": [extract_answer(x) for x in s],
            }
        )
    return records


PLOT_AGREEMENT = "agreement of sampled answers"
PLOT_TOKEN_PROB = "mean token probability of the answer"


def summarize(records: list[dict], model: str, eval_set: str, extra: dict | None = None) -> tuple[dict, list[dict]]:
    """The CONTRACTS §5 JSON (plus extra keys) and the reliability bins."""
    buckets = defaultdict(list)
    for rec in records:
        buckets[rec["bucket"]].append(rec["grade"])
    order = [b for b in ("known", "rare", "never_seen") if b in buckets] + sorted(
        b for b in buckets if b not in ("known", "rare", "never_seen")
    )
    result = {"model": model, "eval_set": eval_set, "buckets": {b: bucket_metrics(buckets[b]) for b in order}}
    result["buckets"]["overall"] = bucket_metrics([rec["grade"] for rec in records])
    by_attr = defaultdict(list)  # answerable questions (known + rare) per kind of fact
    for rec in records:
        if rec.get("attribute") and rec["bucket"] != "never_seen":
            by_attr[rec["attribute"]].append(rec["grade"])
    if len(by_attr) > 1:
        result["attributes"] = {a: bucket_metrics(g) for a, g in sorted(by_attr.items())}
    attempted = [rec for rec in records if rec["grade"] != NOT_ATTEMPTED]
    ok = [rec["grade"] == CORRECT for rec in attempted]
    tprob = [rec["token_prob"] for rec in attempted if rec["token_prob"] is not None]
    ok_tprob = [y for rec, y in zip(attempted, ok) if rec["token_prob"] is not None]
    # with fewer than two samples a question agrees 0 or 1: the reliability plot bins on token probability instead,
    # and with none at all (--num_samples 0) the calibration's confidence is the token probability
    by_tokens = all(len(rec.get("samples") or []) < 2 for rec in attempted)
    sampled = any(rec["confidence"] is not None for rec in attempted)
    conf = [rec["confidence"] for rec in attempted if rec["confidence"] is not None] if sampled else tprob
    ok_conf = [y for rec, y in zip(attempted, ok) if rec["confidence"] is not None] if sampled else ok_tprob
    result["calibration"] = {
        "auroc": auroc(conf, ok_conf),
        "ece": ece(conf, ok_conf),
        "auroc_token_prob": auroc(tprob, ok_tprob),
        "ece_token_prob": ece(tprob, ok_tprob),
        "n_attempted": len(attempted),
        "confidence": ("agreement of sampled answers with the greedy answer" if sampled
                       else "mean token probability of the greedy answer (no samples)"),
    }  # fmt: skip
    result["calibration"]["plot_confidence"] = PLOT_TOKEN_PROB if by_tokens else PLOT_AGREEMENT
    result.update(extra or {})
    return clean(result), reliability_bins(*((tprob, ok_tprob) if by_tokens else (conf, ok_conf)))


def markdown_table(result: dict) -> str:
    lines = [
        "| bucket | n | correct | incorrect | not attempted | correct given attempted | F | penalty t=0.75 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["buckets"].items():
        lines.append(
            f"| {name} | {m['n']} | {m['correct']:.3f} | {m['incorrect']:.3f} | {m['not_attempted']:.3f} | "
            f"{m['correct_given_attempted']:.3f} | {m['f_score']:.3f} | {m['penalty_t0.75']:.3f} |"
        )
    held_out = set(result.get("held_out_attributes", []))
    for name, m in result.get("attributes", {}).items():
        tag = " (held out of training)" if name in held_out else ""
        lines.append(f"| known + rare: {name}{tag} | {m['n']} | {m['correct']:.3f} | {m['incorrect']:.3f} | "
                     f"{m['not_attempted']:.3f} | {m['correct_given_attempted']:.3f} | {m['f_score']:.3f} | "
                     f"{m['penalty_t0.75']:.3f} |")  # fmt: skip
    cal = result["calibration"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    if result.get("tool"):
        t = result["tool"]
        per = ", ".join(f"{b} {v:.2f}" for b, v in t["searches_per_question"].items())
        lines.append(f"\nWith the search tool: searches per question {per}; citation precision "
                     f"{fmt(t['citation_precision'])} over {t['cited_answers']} cited answers")  # fmt: skip
    lines.append(f"\nCalibration (attempted answers): AUROC {fmt(cal['auroc'])}, ECE {fmt(cal['ece'])}")
    for key, who in (("vs_parent", "the parent"), ("vs_base", "the base")):
        vs = result.get(key)
        if not vs:
            continue
        shift = vs["refusal_shift"]
        lines.append(
            f"Against {who} ({vs['parent']}): refusal where it was wrong {fmt(shift['refusal_where_parent_wrong'])}"
            f" vs right {fmt(shift['refusal_where_parent_right'])} (delta {fmt(shift['delta'])}, known + rare)"
            + (f"; known correct kept {fmt(vs['known_correct']['kept'])}" if "known_correct" in vs else "")
            + (f"; never_seen hallucination {fmt(vs['never_seen_hallucination']['parent'])} -> "
               f"{fmt(vs['never_seen_hallucination']['child'])}" if "never_seen_hallucination" in vs else "")
        )  # fmt: skip
    return "\n".join(lines)


def apply_judge(records: list[dict], judge_dir: str, device, batch_size: int) -> dict:
    """Re-grade records with an LLM judge (the exact grade is kept as `exact_grade`); returns JSON extras."""
    from posttrain.evals.judge import judge_grades

    if not (Path(judge_dir) / "config.json").is_file():
        raise UserError(f"{judge_dir}: the judge is not a model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(judge_dir)
    model = AutoModelForCausalLM.from_pretrained(judge_dir).to(device)
    rows = [{"question": r["question"], "answers": r["answers"], "candidates": []} for r in records]
    grades = judge_grades(model, tokenizer, rows, [r["response"] for r in records], batch_size)
    for rec, g in zip(records, grades):
        rec["exact_grade"], rec["grade"] = rec["grade"], g
    agreement = rater_agreement([r["grade"] for r in records], [r["exact_grade"] for r in records])
    return {"grader": f"judge:{judge_dir}", "judge_agreement_with_exact": agreement["accuracy"],
            "judge_vs_exact": agreement}  # fmt: skip


def run(cfg, model=None, tokenizer=None) -> dict | None:
    """The whole evaluation of `cfg` (a FactualityConfig): generate, grade, write JSON + table + samples + plot.

    `model`/`tokenizer` may be passed in memory (a recipe's end-of-training hook); otherwise they are loaded from
    `cfg.model`. Returns the result on the main process, None on the others.
    """
    state = process_state()
    if model is None:
        model, tokenizer = load_for_generation(cfg.model, state.device)
    rows, shots = load_eval_set(cfg.eval_set, cfg.seed, cfg.max_per_bucket, cfg.split)
    style = prompt_style(cfg.model, tokenizer, cfg.prompt)
    prompts = build_prompts(rows, shots, style, tokenizer)
    torch.manual_seed(cfg.seed + state.process_index)
    batch_size = cfg.batch_size or auto_batch_size(model, 512 + cfg.max_new_tokens, cfg.num_samples)

    index = search_index_for(cfg, tokenizer, style) if cfg.tools else None
    search = search_tool(index, tokenizer=tokenizer) if index is not None else None
    with state.split_between_processes(list(range(len(rows)))) as mine:
        if search is not None:  # greedy answers after at most one search; no samples (calibration is not the point)
            greedy, trace = answer_with_search(model, tokenizer, [prompts[i] for i in mine], search, cfg, batch_size)
            samples = [[] for _ in greedy]
        else:
            greedy, samples = generate(
                model, tokenizer, [prompts[i] for i in mine], max_new_tokens=cfg.max_new_tokens,
                num_samples=cfg.num_samples, temperature=cfg.temperature, batch_size=batch_size,
                stop_strings=["\n"] if style == "fewshot" else None, desc=f"eval ({style})",
                precision=cfg.mixed_precision, backend=cfg.generation_backend, seed=cfg.seed,
            )  # fmt: skip
        records = score([rows[i] for i in mine], greedy, samples)
        if search is not None:
            records = [{**rec, **t} for rec, t in zip(records, trace)]
    records = gather_object(records)
    if not state.is_main_process:
        return None

    extra = {"prompt": style, "num_samples": cfg.num_samples, "temperature": cfg.temperature, "grader": "exact",
             **held_out(cfg.eval_set)}  # fmt: skip
    if cfg.judge:
        extra.update(apply_judge(records, cfg.judge, state.device, batch_size))
    if search is not None:
        extra["tool"] = tool_metrics(records, index)
    result, bins = summarize(records, cfg.model, cfg.eval_set, extra)
    out = Path(cfg.output)
    # reference evaluations' records, each read once (the SFT eval is often the parent or the base too)
    paths = {str(Path(p).resolve()) for p in (cfg.parent_eval, cfg.base_eval, out.with_name("sft.json")) if p}
    refs = {p: compare.read_records(p) for p in paths if compare.samples_path(p).is_file()}
    for key, path in (("vs_parent", cfg.parent_eval), ("vs_base", cfg.base_eval)):
        if path and str(Path(path).resolve()) in refs:
            ref = json.loads(Path(path).read_text())
            result[key] = compare.versus_parent(ref, result, refs[str(Path(path).resolve())], records)
    if style == "chat":  # the decline ranking against the SFT model's mistakes (itself, for the SFT eval; the base
        # model's where a family has no SFT stage, recipes/smollm2/)
        sft = records if out.stem == "sft" else refs.get(str(out.with_name("sft.json").resolve()))
        if sft is None and not out.with_name("sft.json").is_file():
            sft = refs.get(str(out.with_name("base.json").resolve()))
        own = any(r.get("decline_score") is not None for r in records)
        result["decline"] = compare.decline_block(records, sft, SCORE_LINE if own else ABSTAIN_LINE)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown_table(result) + "\n")
    atomic_write_text(out.with_name(out.stem + "_samples.jsonl"), "".join(json.dumps(r) + "\n" for r in records))
    run_dir = out.parent.parent if out.parent.name == "eval" else None
    plot_dir = run_dir / "plots" if run_dir else out.parent
    reliability_diagram(bins, plot_dir / f"reliability_{out.stem}.png", f"Reliability: {out.stem}",
                        result["calibration"]["plot_confidence"])  # fmt: skip
    if run_dir is not None:
        build_report(run_dir)
    print(f"factuality of {cfg.model} on {cfg.eval_set} ({style} prompt) -> {out}\n{markdown_table(result)}")
    return result
