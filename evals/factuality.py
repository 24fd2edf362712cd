"""Factuality of a model: correct / incorrect / not attempted per bucket, and calibration (CONTRACTS §5).

python evals/factuality.py --model runs/speedrun/sft --eval_set runs/speedrun --output runs/speedrun/eval/sft.json
python evals/factuality.py --model DIR --eval_set my_qa.jsonl --output out.json   # question, answer[, aliases, bucket]
accelerate launch evals/factuality.py ...                                          # questions split over processes
"""

from posttrain.configs import FactualityConfig, parse_config
from posttrain.errors import entrypoint
from posttrain.evals import factuality as F


def main():
    (cfg,) = parse_config(FactualityConfig)
    F.run(cfg)


if __name__ == "__main__":
    entrypoint(main)
