"""posttrain: post-training for small language models on the Hugging Face stack."""

__version__ = "0.1.0"
