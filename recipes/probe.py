"""Self-probing (Llama 3 §4.3.6): ask the SFT model about its own pretraining data, judge its sampled answers,
and write refusal SFT conversations and preference pairs into runs/<run>/probe/.

python recipes/probe.py --config recipes/world/probe.yaml
python recipes/probe.py --config recipes/world/probe.yaml --data_mix data_mixes/hub_pretrain_fineweb_edu.yaml \
    --generator model --generator_model runs/smollm2/base --judge llm --judge_model runs/smollm2/base   # free text
accelerate launch recipes/probe.py ...     # questions split over processes
Then: python recipes/sft.py --config recipes/world/refusal.yaml   (trains runs/<run>/refusal/ on probe/refusal_sft)
"""

from posttrain import probe
from posttrain.configs import ProbeConfig, parse_config
from posttrain.errors import entrypoint


def main():
    (cfg,) = parse_config(ProbeConfig)
    probe.run(cfg)


if __name__ == "__main__":
    entrypoint(main)
