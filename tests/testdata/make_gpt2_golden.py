"""Makes the golden GPT-2 parity data under tests/testdata/tiny_gpt2 (run by hand once; needs torch).

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 'transformers>=5,<6' safetensors numpy
    /tmp/tv/bin/python tests/testdata/make_gpt2_golden.py

A tiny random GPT2LMHeadModel from transformers' PyTorch code is saved in the Hugging Face layout
(config.json + model.safetensors) with reference hidden states and logits for fixed token ids
(golden.npz). tests/gpt2_test.py checks the project's Flax loader against them without torch.
"""

import os

import numpy as np
import torch
import transformers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_gpt2")


def main():
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=512, n_positions=32, n_embd=32, n_layer=3, n_head=4, bos_token_id=511, eos_token_id=511
  )
  model = transformers.GPT2LMHeadModel(config).eval()
  # Random weights of a trained model's size: larger than the 0.02 init, so that every block matters.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "ln" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  model.save_pretrained(OUT, safe_serialization=True)
  ids = torch.tensor(np.random.default_rng(0).integers(0, 512, (2, 16)))
  with torch.no_grad():
    out = model(input_ids=ids, output_hidden_states=True)
  np.savez(
    os.path.join(OUT, "golden.npz"),
    input_ids=ids.numpy(),
    hidden_states=np.stack([h.numpy() for h in out.hidden_states]),
    logits=out.logits.numpy(),
  )
  print("wrote", sorted(os.listdir(OUT)), "transformers", transformers.__version__, "torch", torch.__version__)


if __name__ == "__main__":
  main()
