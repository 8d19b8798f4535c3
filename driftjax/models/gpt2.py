"""GPT-2 in Flax NNX: the frozen feature encoder and the evaluator LM, with Hugging Face weight loading.

transformers 5.x has no Flax models, so the architecture is written here and the weights are read from the
Hugging Face layout (config.json + model.safetensors), by hub name ('gpt2', 'gpt2-medium', ...) or local folder.
Hidden states use transformers' `output_hidden_states` indexing: 0 is the input embeddings (token + position),
i is the output of block i for i < n_layer, and n_layer is the final layer norm's output.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from driftjax.models import attention
from driftjax.models import matmul
from driftjax.models import remat as remat_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None  # MLP width; 4 * n_embd when None.
  layer_norm_epsilon: float = 1e-5
  activation_function: str = "gelu_new"
  eos_token_id: int = 50256

  @classmethod
  def from_hf(cls, hf_config) -> "GPT2Config":
    """From a transformers GPT2Config (or anything with its attributes)."""
    if getattr(hf_config, "model_type", "gpt2") != "gpt2":
      raise ValueError(f"expected a GPT-2 config, got model_type={hf_config.model_type!r}")
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
      raise ValueError(f"unsupported activation_function {act!r}; expected one of {sorted(_ACTIVATIONS)}")
    eos = getattr(hf_config, "eos_token_id", None)
    return cls(
      vocab_size=hf_config.vocab_size,
      n_positions=hf_config.n_positions,
      n_embd=hf_config.n_embd,
      n_layer=hf_config.n_layer,
      n_head=hf_config.n_head,
      n_inner=getattr(hf_config, "n_inner", None),
      layer_norm_epsilon=hf_config.layer_norm_epsilon,
      activation_function=act,
      eos_token_id=hf_config.vocab_size - 1 if eos is None else int(eos),
    )

  @property
  def inner(self) -> int:
    return self.n_inner or 4 * self.n_embd


_ACTIVATIONS = {
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "relu": jax.nn.relu,
}


class Conv1D(nnx.Module):
  """GPT-2's linear layer: weight stored (in, out), as in the HF checkpoints."""

  def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d_in, d_out)))
    self.bias = nnx.Param(jnp.zeros((d_out,)))

  def __call__(self, x: Array) -> Array:
    return matmul.dense(x, self.weight[...].astype(x.dtype)) + self.bias[...].astype(x.dtype)


class LayerNorm(nnx.Module):
  def __init__(self, dim: int, eps: float):
    self.weight = nnx.Param(jnp.ones((dim,)))
    self.bias = nnx.Param(jnp.zeros((dim,)))
    self.eps = eps

  def __call__(self, x: Array) -> Array:
    # Statistics in float32 whatever the compute dtype.
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, -1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
    return y.astype(x.dtype)


class Block(nnx.Module):
  def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
    d = cfg.n_embd
    self.n_head = cfg.n_head
    self.act = cfg.activation_function
    self.ln_1 = LayerNorm(d, cfg.layer_norm_epsilon)
    self.c_attn = Conv1D(d, 3 * d, rngs=rngs)
    self.attn_proj = Conv1D(d, d, rngs=rngs)
    self.ln_2 = LayerNorm(d, cfg.layer_norm_epsilon)
    self.c_fc = Conv1D(d, cfg.inner, rngs=rngs)
    self.mlp_proj = Conv1D(cfg.inner, d, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    b, length, d = x.shape
    hd = d // self.n_head
    q, k, v = jnp.split(self.c_attn(self.ln_1(x)), 3, axis=-1)
    q, k, v = (t.reshape(b, length, self.n_head, hd) for t in (q, k, v))
    attn = attention.attend(q, k, v, is_causal=True).reshape(b, length, d)
    return self.mlp(x + self.attn_proj(attn))

  def mlp(self, x: Array) -> Array:
    """The block's second half: x plus the MLP of its normed x."""
    return x + self.mlp_proj(_ACTIVATIONS[self.act](self.c_fc(self.ln_2(x))))


class GPT2(nnx.Module):
  """GPT-2 LM with tied embeddings."""

  def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs, dtype=jnp.float32, remat: bool = False):
    """remat: recompute each block's activations in the backward pass instead of keeping them (the frozen
    encoder is differentiated through generated rows in training: its activations dominate the step's memory)."""
    self.cfg = cfg
    self.dtype = dtype
    self.remat = remat
    self.wte = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.n_embd)))
    self.wpe = nnx.Param(0.01 * jax.random.normal(rngs.params(), (cfg.n_positions, cfg.n_embd)))
    self.h = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
    self.ln_f = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)

  def embed(self, input_ids: Array) -> Array:
    """Token embeddings (B, L, D) of ids (B, L): the 'raw' drift feature of real text."""
    return jnp.take(self.wte[...], input_ids, axis=0)

  def __call__(
    self,
    input_ids: Array | None = None,
    inputs_embeds: Array | None = None,
    hidden_layers: Sequence[int] = (),
    logits: bool = False,
  ) -> dict[str, Array]:
    """Runs the model on ids (B, L) or embeddings (B, L, D).

    Returns {'hidden': {i: (B, L, D)} for i in hidden_layers, 'logits': (B, L, V) if asked}. Blocks past the
    deepest requested layer are skipped when no logits are needed.
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if inputs_embeds is None:
      if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, L), got shape {input_ids.shape}")
      inputs_embeds = self.embed(input_ids)
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.cfg.n_embd:
      raise ValueError(f"inputs_embeds must be (B, L, {self.cfg.n_embd}), got {inputs_embeds.shape}")
    length = inputs_embeds.shape[1]
    if length > self.cfg.n_positions:
      raise ValueError(f"sequence length {length} exceeds the encoder's {self.cfg.n_positions} positions")
    bad = [i for i in hidden_layers if not 0 <= i <= self.cfg.n_layer]
    if bad:
      raise ValueError(f"hidden layers {bad} out of range [0, {self.cfg.n_layer}]")

    x = (inputs_embeds + self.wpe[...][:length]).astype(self.dtype)
    wanted = set(hidden_layers)
    hidden = {}
    if 0 in wanted:
      hidden[0] = x
    last = self.cfg.n_layer if logits else max(wanted, default=0)
    for i in range(min(last, self.cfg.n_layer)):
      x = remat_lib.call(self.h[i], x, remat=self.remat)
      if i + 1 == self.cfg.n_layer:
        x = self.ln_f(x)  # HF's hidden_states[n_layer] is after the final norm.
      if i + 1 in wanted:
        hidden[i + 1] = x
    out = {"hidden": hidden}
    if logits:
      out["logits"] = (x @ self.wte[...].astype(x.dtype).T).astype(jnp.float32)
    return out


# --------------------------------------------------------------------------------------------------
# Loading and saving in the Hugging Face layout.
# --------------------------------------------------------------------------------------------------


def _resolve(name_or_path: str) -> str:
  """A local folder as is; otherwise a hub name, fetched (or taken from the local HF cache)."""
  if os.path.isdir(name_or_path):
    return name_or_path
  if os.path.exists(name_or_path) or name_or_path.startswith((".", "/")):
    raise FileNotFoundError(f"GPT-2 weights: {name_or_path!r} is not a folder with config.json and model.safetensors")
  import huggingface_hub

  try:
    return huggingface_hub.snapshot_download(name_or_path, allow_patterns=["config.json", "model.safetensors"])
  except Exception as e:  # Offline, unknown repo, ...: say which name failed and how to avoid the hub.
    raise OSError(
      f"could not fetch GPT-2 weights {name_or_path!r} from the Hugging Face hub ({e}); "
      "pass a local folder holding config.json and model.safetensors instead"
    ) from e


def load_config(path: str) -> GPT2Config:
  from transformers import GPT2Config as HFConfig

  cfg_file = os.path.join(path, "config.json")
  if not os.path.exists(cfg_file):
    raise FileNotFoundError(f"no config.json in {path}")
  return GPT2Config.from_hf(HFConfig.from_json_file(cfg_file))


_BLOCK_NAMES = {  # HF name inside h.{i} -> (module attribute, parameter).
  "ln_1.weight": ("ln_1", "weight"),
  "ln_1.bias": ("ln_1", "bias"),
  "attn.c_attn.weight": ("c_attn", "weight"),
  "attn.c_attn.bias": ("c_attn", "bias"),
  "attn.c_proj.weight": ("attn_proj", "weight"),
  "attn.c_proj.bias": ("attn_proj", "bias"),
  "ln_2.weight": ("ln_2", "weight"),
  "ln_2.bias": ("ln_2", "bias"),
  "mlp.c_fc.weight": ("c_fc", "weight"),
  "mlp.c_fc.bias": ("c_fc", "bias"),
  "mlp.c_proj.weight": ("mlp_proj", "weight"),
  "mlp.c_proj.bias": ("mlp_proj", "bias"),
}


def load_gpt2(name_or_path: str, dtype=jnp.float32, remat: bool = False, param_dtype=jnp.float32) -> GPT2:
  """A GPT-2 with weights from a local HF folder or a hub name; every weight must be present (remat: see
  GPT2). param_dtype: the weights' storage (a frozen encoder may keep them in its compute dtype: half the
  memory, and no cast copies in the step)."""
  path = _resolve(name_or_path)
  cfg = load_config(path)
  weights_file = os.path.join(path, "model.safetensors")
  if not os.path.exists(weights_file):
    raise FileNotFoundError(f"no model.safetensors in {path}")
  try:
    tensors = load_file(weights_file)
  except Exception as e:
    raise ValueError(f"unreadable weights file {weights_file}: {e}") from e
  tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
  model = nnx.eval_shape(lambda: GPT2(cfg, rngs=nnx.Rngs(0), dtype=dtype, remat=remat))

  def take(name, target):
    if name not in tensors:
      raise ValueError(f"{weights_file} lacks tensor {name!r}")
    value = tensors.pop(name)
    want = target.get_value().shape  # An abstract (eval_shape) variable until it is set here.
    if value.shape != want:
      raise ValueError(
        f"{weights_file}: tensor {name!r} has shape {value.shape}, the config "
        f"({os.path.join(path, 'config.json')}) implies {want}"
      )
    target.set_value(jnp.asarray(value, param_dtype))

  take("wte.weight", model.wte)
  take("wpe.weight", model.wpe)
  take("ln_f.weight", model.ln_f.weight)
  take("ln_f.bias", model.ln_f.bias)
  for i, block in enumerate(model.h):
    for hf_name, (mod, param) in _BLOCK_NAMES.items():
      take(f"h.{i}.{hf_name}", getattr(getattr(block, mod), param))
  tensors.pop("lm_head.weight", None)  # Tied to wte.
  return model


def save_gpt2(model: GPT2, path: str) -> None:
  """Writes config.json + model.safetensors that transformers' GPT2LMHeadModel and load_gpt2 both read."""
  cfg = model.cfg
  tensors = {
    "wte.weight": model.wte[...],
    "wpe.weight": model.wpe[...],
    "ln_f.weight": model.ln_f.weight[...],
    "ln_f.bias": model.ln_f.bias[...],
  }
  for i, block in enumerate(model.h):
    for hf_name, (mod, param) in _BLOCK_NAMES.items():
      tensors[f"h.{i}.{hf_name}"] = getattr(getattr(block, mod), param)[...]
  tensors = {f"transformer.{k}": np.asarray(v, np.float32) for k, v in tensors.items()}
  hf_config = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "vocab_size": cfg.vocab_size,
    "n_positions": cfg.n_positions,
    "n_embd": cfg.n_embd,
    "n_layer": cfg.n_layer,
    "n_head": cfg.n_head,
    "n_inner": cfg.n_inner,
    "layer_norm_epsilon": cfg.layer_norm_epsilon,
    "activation_function": cfg.activation_function,
    "bos_token_id": cfg.eos_token_id,
    "eos_token_id": cfg.eos_token_id,
    "tie_word_embeddings": True,
  }
  os.makedirs(path, exist_ok=True)
  tmp_w, tmp_c = os.path.join(path, ".model.safetensors.tmp"), os.path.join(path, ".config.json.tmp")
  save_file(tensors, tmp_w, metadata={"format": "pt"})
  with open(tmp_c, "w") as f:
    json.dump(hf_config, f, indent=2)
  os.replace(tmp_w, os.path.join(path, "model.safetensors"))
  os.replace(tmp_c, os.path.join(path, "config.json"))


def read_after_start(lm: GPT2, rows: Array, **outputs) -> dict[str, Array]:
  """The LM's outputs (GPT2.__call__'s `outputs`) reading rows (N, L) after a start token (end-of-text), its last
  token dropped: position t's are those for rows[:, t] given rows[:, :t]."""
  start = jnp.full((rows.shape[0], 1), lm.cfg.eos_token_id, jnp.int32)
  return lm(input_ids=jnp.concatenate([start, rows[:, :-1]], axis=1), **outputs)


def next_token_states(lm: GPT2, rows: Array, vocab_size: int) -> tuple[Array, Array]:
  """The LM reading rows (N, L) after a start token (end-of-text): position t's final hidden state (N, L, D) and
  next-token log-probabilities (N, L, vocab_size) are those for rows[:, t] given rows[:, :t]. No gradient."""
  out = read_after_start(lm, rows, hidden_layers=(lm.cfg.n_layer,), logits=True)
  hidden = out["hidden"][lm.cfg.n_layer].astype(jnp.float32)
  return jax.lax.stop_gradient((hidden, jax.nn.log_softmax(out["logits"][..., :vocab_size], axis=-1)))


def draft_reader(lm: GPT2, vocab_size: int):
  """ids (N, L) -> next_token_states(lm, ids, vocab_size): how a generator with draft_blocks reads its draft (a
  generator without them never calls it)."""
  return lambda ids: next_token_states(lm, ids, vocab_size)
