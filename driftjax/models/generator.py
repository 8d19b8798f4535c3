"""The one-step generator (docs/method.md section 5): a DiT-style transformer from noise to token embeddings.

noise (B, L, noise_dim) -> linear + learned position signal -> blocks of [RMSNorm, adaLN-Zero modulation,
attention with QK-norm and 1D RoPE] and [RMSNorm, adaLN-Zero, SwiGLU] -> final norm with adaLN shift/scale ->
an output head. head="embedding" (the paper's setup, the seed's): a linear map to the encoder's embedding width,
whose bias starts at the mean token embedding. head="vocab": logits over the vocabulary; the encoder is fed
their expected token embedding (softmax(logits) @ table, vocab_mode="soft"), or the argmax token's embedding
with the soft one's gradient (vocab_mode="straight_through"), or the argmax token's embedding with a gradient
linear in the logits (vocab_mode="straight_through_linear": logit v gets (e_v - E_p[e]) . g, the first-order change
of the loss when the token becomes v, at any probability; the soft gradient is p_v times it, so it vanishes for
tokens the head does not already favour), so outputs lie among real token embeddings (docs/method.md sections 5
and 7: outputs off the token manifold were the earlier attempts' crux).
Conditioning: a style vector, the sum of 32 embeddings drawn at random from a 64-entry codebook.
draft_blocks > 0 (head="vocab"): the generator reads its own draft. The blocks' logits are a draft; its argmax
tokens are read by a reader (the frozen LM: at each position its final hidden state and next-token
log-probabilities given the draft before it), whose states enter the residual stream through a zero-initialized
projection; draft_blocks more blocks and the same output layer then give the final logits, plus a learned
multiple (zero at init) of the LM's log-probabilities. At init the final logits are the draft's. A sample is still
one fixed forward computation: the generator, one parallel LM pass, a few more blocks (no token-by-token loop).
Parameters are float32; `dtype` sets the compute dtype (bfloat16 on accelerators).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from driftjax.models import attention
from driftjax.models import matmul
from driftjax.models import remat as remat_lib

Array = jax.Array
Reader = Callable[[Array], tuple[Array, Array]]


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  seq_len: int = 256
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_ratio: float = 8 / 3  # SwiGLU hidden = mlp_ratio * width (rounded up to a multiple of 64).
  noise_dim: int = 768
  # "position": every position reads its own noise draw; "sample": position 0's draw is read at every position
  # (one draw per sample: the sample's choices cannot differ between neighbouring positions' draws).
  noise_scope: str = "position"
  out_dim: int = 768  # The encoder's token-embedding width.
  style_tokens: int = 32
  style_codebook: int = 64
  pos_init_scale: float = 1.0  # Comparable to the unit-scale noise, so positions stay distinguishable.
  rope_base: float = 10000.0
  dtype: str = "float32"  # Compute dtype; parameters stay float32.
  head: str = "embedding"  # "embedding" | "vocab" (see the module docstring).
  vocab_size: int = 0  # Tokens the vocab head chooses among (the tokenizer's); needed by head="vocab".
  vocab_mode: str = "soft"  # head="vocab": "soft" | "straight_through" | "straight_through_linear".
  # vocab_mode="straight_through_linear": only the head's top k tokens at a position get the gradient (0: all).
  linear_top_k: int = 0
  # vocab_mode="straight_through_linear": subtract from each logit's gradient its mean over the batch's samples and
  # positions ("batch": no token is pushed up everywhere at once through the output layer's shared bias) or over
  # each sample's positions ("sample": no token is pushed up at every position of a sample); "": off.
  linear_center: str = ""
  # vocab_mode="straight_through": the backward pass's softmax is taken at this temperature (1: the head's own).
  st_temperature: float = 1.0
  # vocab_mode="straight_through": plus this much of the linear gradient, i.e. logit v's gradient weighs its swap
  # score by p_v + linear_mix instead of p_v (a floor under the push that unlikely tokens get).
  linear_mix: float = 0.0
  remat: bool = False  # Recompute each block's activations in the backward pass (less memory, more compute).
  # head="vocab": blocks after the LM has read the draft (0: no draft; the module docstring).
  draft_blocks: int = 0
  # head="vocab", > 0: the generator writes layout_positions positions over the vocabulary plus a filler token (id
  # vocab_size), sentences starting at multiples of layout_multiple; decoding drops the fillers and keeps seq_len
  # tokens (driftjax/models/layout.py). 0: seq_len positions, no filler.
  layout_multiple: int = 0
  layout_positions: int = 0

  @property
  def positions(self) -> int:
    """Positions the generator writes: layout_positions with a layout, else seq_len."""
    return self.layout_positions if self.layout_multiple else self.seq_len

  @property
  def filler(self) -> int | None:
    """The filler token's id (the vocab head's last output) with a layout, else None."""
    return self.vocab_size if self.layout_multiple else None

  @property
  def mlp_hidden(self) -> int:
    return int(np.ceil(self.mlp_ratio * self.width / 64) * 64)


def rms_norm(x: Array, eps: float = 1e-6) -> Array:
  xf = x.astype(jnp.float32)
  return (xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + eps)).astype(x.dtype)


def rope(x: Array, base: float) -> Array:
  """Rotary position embedding over the sequence axis of x (B, L, H, D), D even (rotate-half form)."""
  length, dim = x.shape[1], x.shape[-1]
  freqs = base ** (-np.arange(0, dim // 2, dtype=np.float32) / (dim // 2))
  angles = np.arange(length, dtype=np.float32)[:, None] * freqs[None]  # (L, D/2)
  cos = jnp.asarray(np.cos(angles))[None, :, None, :]
  sin = jnp.asarray(np.sin(angles))[None, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).astype(x.dtype)


HEADS = ("embedding", "vocab")
VOCAB_MODES = ("soft", "straight_through", "straight_through_linear")
NOISE_SCOPES = ("position", "sample")


CENTRE_AXES = {"batch": (0, 1), "sample": (1,), "vocab": (2,)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _centred_gradient(z: Array, axes: tuple[int, ...]) -> Array:
  """The identity, whose gradient (B, L, V) has its mean over `axes` subtracted."""
  return z


_centred_gradient.defvjp(lambda z, axes: (z, None), lambda axes, _, g: (g - jnp.mean(g, axis=axes, keepdims=True),))


def _linear(out: Array, soft: Array, table: Array, cfg: GeneratorConfig) -> Array:
  """0 in the forward pass; its gradient to logit v is (e_v - E_p[e]) . g, the loss's first-order change if the
  token became v (only the head's linear_top_k likeliest when set; minus its mean with linear_center)."""
  scores = _centred_gradient(out, CENTRE_AXES[cfg.linear_center]) if cfg.linear_center else out
  if cfg.linear_top_k:  # Zero the gradient of the logits below the head's k-th largest.
    kth = jax.lax.top_k(jax.lax.stop_gradient(out), cfg.linear_top_k)[0][..., -1:]
    scores = jnp.where(out >= kth, scores, jax.lax.stop_gradient(scores))
  linear = scores @ table - jnp.sum(scores, -1, keepdims=True) * jax.lax.stop_gradient(soft)
  return linear - jax.lax.stop_gradient(linear)


def to_embeddings(out: Array, table: Array, cfg: GeneratorConfig) -> Array:
  """The generator's outputs as the embeddings the encoder reads (B, L, D); table: (vocab_size, D) token embeddings."""
  if cfg.head == "embedding":
    return out
  soft = jax.nn.softmax(out, axis=-1) @ table
  if cfg.vocab_mode == "soft":
    return soft
  hard = jnp.take(table, jnp.argmax(out, axis=-1), axis=0)
  if cfg.vocab_mode == "straight_through_linear":  # Forward: real tokens; backward: the swap scores.
    return hard + _linear(out, soft, table, cfg)
  if cfg.st_temperature != 1.0:  # Flatter: tokens below the head's favourite keep more of the gradient.
    soft = jax.nn.softmax(out / cfg.st_temperature, axis=-1) @ table
  st = soft + jax.lax.stop_gradient(hard - soft)  # Forward: real tokens; backward: the soft gradient.
  return st + cfg.linear_mix * _linear(out, soft, table, cfg) if cfg.linear_mix else st


def _check_gradient_settings(cfg: GeneratorConfig) -> None:
  """The head's gradient settings apply to some vocab modes only: setting one elsewhere is an error, not a no-op."""
  if cfg.st_temperature <= 0 or cfg.linear_mix < 0 or cfg.linear_top_k < 0:
    raise ValueError(
      f"model.st_temperature={cfg.st_temperature} must be > 0, model.linear_mix={cfg.linear_mix} and "
      f"model.linear_top_k={cfg.linear_top_k} >= 0"
    )
  soft_st = cfg.head == "vocab" and cfg.vocab_mode == "straight_through"
  uses_linear = cfg.head == "vocab" and (cfg.vocab_mode == "straight_through_linear" or (soft_st and cfg.linear_mix))
  if (cfg.st_temperature != 1.0 or cfg.linear_mix) and not soft_st:
    raise ValueError("model.st_temperature and model.linear_mix apply to head='vocab', vocab_mode='straight_through'")
  if cfg.linear_center and cfg.linear_center not in CENTRE_AXES:
    raise ValueError(f"model.linear_center={cfg.linear_center!r}; expected '' or one of {tuple(CENTRE_AXES)}")
  if (cfg.linear_top_k or cfg.linear_center) and not uses_linear:
    raise ValueError(
      "model.linear_top_k and model.linear_center apply to vocab_mode='straight_through_linear' (or "
      "'straight_through' with model.linear_mix > 0)"
    )


class ScaledRMSNorm(nnx.Module):
  """RMSNorm with a learned per-channel scale (used for QK-norm)."""

  def __init__(self, dim: int):
    self.scale = nnx.Param(jnp.ones((dim,)))

  def __call__(self, x: Array) -> Array:
    return rms_norm(x) * self.scale[...].astype(x.dtype)


def _dense(d_in, d_out, rngs, dtype, zero=False, use_bias=True):
  init = nnx.initializers.zeros_init() if zero else nnx.initializers.xavier_uniform()
  return nnx.Linear(
    d_in,
    d_out,
    kernel_init=init,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    dot_general=matmul.dot_general,
    rngs=rngs,
  )


class Attention(nnx.Module):
  def __init__(self, cfg: GeneratorConfig, rngs: nnx.Rngs, dtype):
    self.heads, self.head_dim, self.base = cfg.heads, cfg.width // cfg.heads, cfg.rope_base
    self.qkv = _dense(cfg.width, 3 * cfg.width, rngs, dtype, use_bias=False)
    self.q_norm = ScaledRMSNorm(self.head_dim)
    self.k_norm = ScaledRMSNorm(self.head_dim)
    self.out = _dense(cfg.width, cfg.width, rngs, dtype)

  def qkv_heads(self, x: Array) -> tuple[Array, Array, Array]:
    """q, k (QK-normed, RoPE-rotated) and v, each (B, L, H, head_dim)."""
    b, length, _ = x.shape
    q, k, v = (t.reshape(b, length, self.heads, self.head_dim) for t in jnp.split(self.qkv(x), 3, axis=-1))
    return rope(self.q_norm(q), self.base), rope(self.k_norm(k), self.base), v

  def __call__(self, x: Array) -> Array:
    q, k, v = self.qkv_heads(x)
    # Bidirectional (no mask): the whole sequence at once; cuDNN's fused kernel on GPU in bf16 (attention.py).
    return self.out(attention.attend(q, k, v).reshape(x.shape))


class SwiGLU(nnx.Module):
  def __init__(self, cfg: GeneratorConfig, rngs: nnx.Rngs, dtype):
    self.gate_up = _dense(cfg.width, 2 * cfg.mlp_hidden, rngs, dtype, use_bias=False)
    self.down = _dense(cfg.mlp_hidden, cfg.width, rngs, dtype, use_bias=False)

  def __call__(self, x: Array) -> Array:
    gate, up = jnp.split(self.gate_up(x), 2, axis=-1)
    return self.down(jax.nn.silu(gate) * up)


class DiTBlock(nnx.Module):
  """Pre-norm transformer block with adaLN-Zero: the identity at init (all gates zero)."""

  def __init__(self, cfg: GeneratorConfig, rngs: nnx.Rngs, dtype):
    self.attn = Attention(cfg, rngs, dtype)
    self.mlp = SwiGLU(cfg, rngs, dtype)
    # shift, scale, gate for attention and for the MLP, from the style vector.
    self.ada = _dense(cfg.width, 6 * cfg.width, rngs, dtype, zero=True)

  def __call__(self, x: Array, style: Array) -> Array:
    mods = jnp.split(self.ada(jax.nn.silu(style))[:, None, :], 6, axis=-1)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
    x = x + gate_a * self.attn(rms_norm(x) * (1 + scale_a) + shift_a)
    return x + gate_m * self.mlp(rms_norm(x) * (1 + scale_m) + shift_m)


class Generator(nnx.Module):
  def __init__(self, cfg: GeneratorConfig, *, rngs: nnx.Rngs, mean_embedding: Array | None = None):
    if cfg.width % cfg.heads or (cfg.width // cfg.heads) % 2:
      raise ValueError(f"width {cfg.width} must split into {cfg.heads} heads of even size")
    if cfg.head not in HEADS:
      raise ValueError(f"model.head={cfg.head!r}; expected one of {HEADS}")
    if cfg.head == "vocab" and (cfg.vocab_size <= 0 or cfg.vocab_mode not in VOCAB_MODES):
      raise ValueError(
        f"head='vocab' needs vocab_size > 0 (got {cfg.vocab_size}) and vocab_mode in "
        f"{VOCAB_MODES} (got {cfg.vocab_mode!r})"
      )
    _check_gradient_settings(cfg)
    if cfg.noise_scope not in NOISE_SCOPES:
      raise ValueError(f"noise_scope={cfg.noise_scope!r}; expected one of {NOISE_SCOPES}")
    if cfg.draft_blocks < 0 or (cfg.draft_blocks and cfg.head != "vocab"):
      raise ValueError(f"draft_blocks={cfg.draft_blocks} must be >= 0, and > 0 only with head='vocab'")
    if cfg.layout_multiple < 0 or (
      cfg.layout_multiple and (cfg.head != "vocab" or cfg.draft_blocks or cfg.layout_positions < cfg.seq_len)
    ):
      raise ValueError(
        f"layout_multiple={cfg.layout_multiple} needs head='vocab', no draft_blocks, and layout_positions >= "
        f"seq_len={cfg.seq_len} (got {cfg.layout_positions})"
      )
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.dtype = dtype
    self.noise_in = _dense(cfg.noise_dim, cfg.width, rngs, dtype)
    self.pos = nnx.Param(cfg.pos_init_scale * jax.random.normal(rngs.params(), (cfg.positions, cfg.width)))
    self.style_codebook = nnx.Embed(
      cfg.style_codebook,
      cfg.width,
      embedding_init=nnx.initializers.normal(1.0),
      dtype=dtype,
      param_dtype=jnp.float32,
      rngs=rngs,
    )
    self.blocks = nnx.List([DiTBlock(cfg, rngs, dtype) for _ in range(cfg.depth)])
    self.final_ada = _dense(cfg.width, 2 * cfg.width, rngs, dtype, zero=True)
    if cfg.head == "vocab":  # Uniform-ish logits at init: the expected embedding starts near the mean one.
      self.out = _dense(cfg.width, cfg.vocab_size + bool(cfg.layout_multiple), rngs, dtype)  # + the filler.
      if cfg.draft_blocks:  # Zero projection, identity blocks and a zero gate: the final logits start as the draft.
        self.draft_in = _dense(cfg.out_dim, cfg.width, rngs, dtype, zero=True)
        self.draft_stack = nnx.List([DiTBlock(cfg, rngs, dtype) for _ in range(cfg.draft_blocks)])
        self.draft_gate = nnx.Param(jnp.zeros(()))
      return
    self.out = _dense(cfg.width, cfg.out_dim, rngs, dtype)
    if mean_embedding is not None:
      if mean_embedding.shape != (cfg.out_dim,):
        raise ValueError(f"mean_embedding must be ({cfg.out_dim},), got {mean_embedding.shape}")
      self.out.bias[...] = jnp.asarray(mean_embedding, jnp.float32)

  def style(self, style_ids: Array) -> Array:
    """Style vector (B, W) from codebook indices (B, style_tokens): the normalized sum of their embeddings."""
    return jnp.sum(self.style_codebook(style_ids), axis=1) / np.sqrt(self.cfg.style_tokens)

  def _head(self, x: Array, style: Array) -> Array:
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(style))[:, None, :], 2, axis=-1)
    return self.out(rms_norm(x) * (1 + scale) + shift).astype(jnp.float32)

  def drafts(self, noise: Array, style_ids: Array, reader: Reader | None = None) -> tuple[Array, Array]:
    """(draft, final) outputs: noise (B, P, noise_dim), style_ids (B, style_tokens) int -> float32 embeddings
    (B, P, out_dim) for head="embedding", logits (B, P, vocab_size) for head="vocab" (to_embeddings maps both to
    embeddings); P = cfg.positions, and with a layout the logits have one more entry (the filler). Without
    draft_blocks the two are one array. reader: ids (B, L) -> (hidden (B, L, out_dim),
    log-probabilities (B, L, vocab_size)) at each position given the ids before it; needed by draft_blocks."""
    cfg = self.cfg
    if noise.shape[1:] != (cfg.positions, cfg.noise_dim):
      raise ValueError(f"noise must be (B, {cfg.positions}, {cfg.noise_dim}), got {noise.shape}")
    style = self.style(style_ids)
    if cfg.noise_scope == "sample":
      noise = jnp.broadcast_to(noise[:, :1], noise.shape)
    x = self.noise_in(noise.astype(self.dtype)) + self.pos[...].astype(self.dtype)[None]
    for block in self.blocks:
      x = remat_lib.call(block, x, style, remat=cfg.remat)
    draft = self._head(x, style)
    if not cfg.draft_blocks:
      return draft, draft
    if reader is None:
      raise ValueError("draft_blocks > 0: the generator needs a reader (the frozen LM) of its draft")
    hidden, log_probs = jax.lax.stop_gradient(reader(jnp.argmax(draft, axis=-1)))
    x = x + self.draft_in(hidden.astype(self.dtype))
    for block in self.draft_stack:
      x = remat_lib.call(block, x, style, remat=cfg.remat)
    return draft, self._head(x, style) + self.draft_gate[...] * log_probs

  def __call__(self, noise: Array, style_ids: Array, reader: Reader | None = None) -> Array:
    """The final outputs of drafts()."""
    return self.drafts(noise, style_ids, reader)[1]


def sample_inputs(key: Array, batch: int, cfg: GeneratorConfig) -> tuple[Array, Array]:
  """Gaussian noise (B, cfg.positions, noise_dim) and style indices (B, style_tokens) for one forward pass."""
  k_noise, k_style = jax.random.split(key)
  noise = jax.random.normal(k_noise, (batch, cfg.positions, cfg.noise_dim))
  style_ids = jax.random.randint(k_style, (batch, cfg.style_tokens), 0, cfg.style_codebook)
  return noise, style_ids
