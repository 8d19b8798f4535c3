"""Models: the frozen GPT-2 encoder/evaluator (gpt2.py), the DiT generator (generator.py), decoding (decode.py)."""
