"""Train the byte-level BPE tokenizer (with chat template) on a text mix into runs/<run>/tokenizer/.

python recipes/tokenizer.py --config recipes/world/tokenizer.yaml [--vocab_size 8192]
"""

from posttrain.configs import TokenizerConfig, parse_config, to_dict
from posttrain.data import load_mix, mix_hash, read_mix
from posttrain.errors import UserError, entrypoint
from posttrain.lineage import atomic_directory, write_lineage
from posttrain.report import build_report
from posttrain.runtime import main_process_only
from posttrain.tokenizer import bytes_per_token, text_iterator, train_bpe, wrap
from posttrain.world import world_hash


@main_process_only
def main():
    (cfg,) = parse_config(TokenizerConfig)
    world_dir = cfg.world_dir or cfg.stage_dir("world")
    out = cfg.output_dir or cfg.stage_dir("tokenizer")
    mix = read_mix(cfg.data_mix)
    if mix.kind != "text":
        raise UserError(f"{cfg.data_mix}: the tokenizer trains on a 'text' mix, not '{mix.kind}'")
    data = load_mix(mix, world_dir)
    train = data["train"]
    if "test" in data:
        heldout = data["test"]
    else:  # streaming or no test split: hold out the first texts
        heldout, train = train.take(cfg.heldout_texts), train.skip(cfg.heldout_texts)

    print(f"training BPE (vocab {cfg.vocab_size}) on {cfg.data_mix}")
    tokenizer = wrap(train_bpe(text_iterator(train, cfg.max_texts), cfg.vocab_size))
    compression = bytes_per_token(tokenizer, (row["text"] for row in heldout))
    with atomic_directory(out) as tmp:
        tokenizer.save_pretrained(tmp)
        parents = (
            {"world": {"path": str(world_dir), "hash": world_hash(world_dir)[:16]}}
            if any(s.is_world for s in mix.datasets)
            else {}
        )
        write_lineage(
            tmp,
            "tokenizer",
            to_dict(cfg),
            parents=parents,
            data_mix={"path": cfg.data_mix, "hash": mix_hash(mix, world_dir)},
            summary={"vocab_size": len(tokenizer), "heldout_bytes_per_token": round(compression["bytes_per_token"], 3)},
        )
    build_report(cfg.run_dir)
    short = (
        f" (asked {cfg.vocab_size}: the corpus has no more pairs seen twice)" if len(tokenizer) < cfg.vocab_size else ""
    )
    print(
        f"tokenizer -> {out}: vocab {len(tokenizer)}{short}, held-out compression "
        f"{compression['bytes_per_token']:.2f} bytes/token over {compression['texts']} texts"
    )


if __name__ == "__main__":
    entrypoint(main)
