#!/bin/bash
# Several nodes with SLURM: one `accelerate launch` per node, rank 0's address as the rendezvous.
#   sbatch accelerate_configs/slurm_multi_node.sh recipes/pretrain.py --config recipes/gpu/pretrain.yaml
#SBATCH --job-name=posttrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun --kill-on-bad-exit=1 bash -c "source .venv/bin/activate && accelerate launch \
  --config_file accelerate_configs/multi_node.yaml \
  --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_IP --main_process_port 29500 \
  $*"
