"""Push a finished stage folder to the Hub with a model card built from its lineage and eval/<stage>.json.

python recipes/push.py --run_dir runs/speedrun --stage refusal --hub_model_id ORG/posttrain-refusal --dry_run
python recipes/push.py --run_dir runs/speedrun --stage grpo --hub_model_id ORG/NAME --hub_revision v1 --hub_private
Every training recipe does the same at its end with --push_to_hub --hub_model_id ORG/NAME. The token comes from
`hf auth login` or HF_TOKEN, never from a flag.
"""

from posttrain import hub
from posttrain.configs import PushConfig, parse_config
from posttrain.errors import entrypoint


def main():
    (cfg,) = parse_config(PushConfig)
    hub.push_if_asked(cfg, cfg.stage_dir(cfg.stage))


if __name__ == "__main__":
    entrypoint(main)
