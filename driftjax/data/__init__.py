"""Data: tokenizers (tokenizer.py); the input pipeline and corpora come with training."""
