"""bigtrain: pretrain Llama-style language models from raw text to a Hugging Face checkpoint."""

__version__ = "0.1.0"
