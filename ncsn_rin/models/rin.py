"""Recurrent Interface Network (RIN; Jabri, Fleet & Chen 2022), as used by Chen (2023).

The image is cut into patches that form the *interface* (the "tape", [B, N_tape, D_tape]); a smaller
set of *latents* ([B, N_lat, D_lat]) does the heavy computation. Each block

    read:    latents ← latents + CrossAttn(LN(latents), interface) ; + MLP       (Sec. 2.1, "read")
    compute: latents ← (SelfAttn + MLP) × num_layers_per_block                  ("compute")
    write:   interface ← interface + CrossAttn(LN(interface), latents) ; + MLP  ("write")

and the interface is read out to pixels. The noise level enters as one latent token built from a
sinusoidal embedding of γ·time_scale (the network is conditioned on γ, never on t, so the training and
sampling schedules may differ — Chen 2023 Sec. 3.4, compound strategy); the class label as another.
Latent self-conditioning (RIN Sec. 2.3): the previous pass's latents, through an MLP and a LayerNorm
whose scale starts at zero, are added to the initial latents, so it is exactly a no-op at init.

Shapes: images [B, H, W, C] (any float dtype, already noised and optionally variance-normalised),
gamma [B], labels [B] int32 (num_classes means "no label", for classifier-free guidance),
latents [B, num_latents + 1 (+1 with classes), latent_dim].
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def sinusoidal_embedding(values: jax.Array, dim: int, max_period: float = 10_000.) -> jax.Array:
  """Transformer-style sin/cos embedding of scalars. values [B] -> [B, dim] (dim even)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = values.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example with probability `rate`."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.:
      return x
    keep = 1. - self.rate
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, mask_shape)
    return jnp.where(mask, x / keep, 0.).astype(x.dtype)


class Mlp(nn.Module):
  """Dense(dim·ratio) → GELU → dropout → Dense(dim). [B, T, dim] -> [B, T, dim]."""
  ratio: int
  dropout: float = 0.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    dim = x.shape[-1]
    h = nn.Dense(dim * self.ratio, dtype=self.dtype, name='fc1')(x)
    h = nn.gelu(h)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(dim, dtype=self.dtype, name='fc2')(h)


class Attention(nn.Module):
  """Multi-head attention of `x` [B, T, Dx] over `context` [B, S, Dc] -> [B, T, Dx].

  Runs through `jax.nn.dot_product_attention`, which picks fused kernels (cuDNN flash attention on
  GPU) where the backend has them. `head_dim` defaults to min(Dx, Dc) / num_heads as in the official
  RIN read/write units.
  """
  num_heads: int
  head_dim: Optional[int] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    head_dim = self.head_dim or min(x.shape[-1], context.shape[-1]) // self.num_heads
    proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name=name)
    q = proj('query')(x)          # [B, T, N, H]
    k = proj('key')(context)      # [B, S, N, H]
    v = proj('value')(context)    # [B, S, N, H]
    out = jax.nn.dot_product_attention(q, k, v)  # [B, T, N, H]
    return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=self.dtype, name='out')(out)


class AttentionMlpLayer(nn.Module):
  """Pre-LayerNorm residual layer: x + Attn(LN(x), ctx); x + MLP(LN(x)). ctx=None: self-attention."""
  num_heads: int
  mlp_ratio: int
  dropout: float = 0.
  drop_path: float = 0.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, deterministic: bool):
    h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='attn_ln')(x)
    h = Attention(self.num_heads, dtype=self.dtype, name='attn')(h, h if context is None else context)
    x = x + DropPath(self.drop_path)(h, deterministic)
    if self.mlp_ratio > 0:
      h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='mlp_ln')(x)
      h = Mlp(self.mlp_ratio, self.dropout, dtype=self.dtype, name='mlp')(h, deterministic)
      x = x + DropPath(self.drop_path)(h, deterministic)
    return x


class RINBlock(nn.Module):
  """One read → compute → write block. latents [B, L, Dl], tape [B, N, Dt] -> same shapes."""
  num_layers: int
  latent_heads: int
  rw_heads: int
  latent_mlp_ratio: int
  tape_mlp_ratio: int
  dropout: float = 0.
  drop_path: float = 0.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, tape, deterministic: bool):
    latents = AttentionMlpLayer(self.rw_heads, self.latent_mlp_ratio, dtype=self.dtype,
                                name='read')(latents, tape, deterministic)
    for i in range(self.num_layers):
      latents = AttentionMlpLayer(self.latent_heads, self.latent_mlp_ratio, self.dropout,
                                  self.drop_path, dtype=self.dtype,
                                  name=f'compute_{i}')(latents, None, deterministic)
    tape = AttentionMlpLayer(self.rw_heads, self.tape_mlp_ratio, dtype=self.dtype,
                             name='write')(tape, latents, deterministic)
    return latents, tape


class RIN(nn.Module):
  """Recurrent Interface Network denoiser. See the module docstring for shapes.

  `__call__(x, gamma, labels=None, latent_prev=None, train=False)` returns (prediction [B,H,W,C] in
  float32, latents [B, L_total, latent_dim] float32) — the latents feed the next pass's
  self-conditioning.
  """
  image_size: int
  num_channels: int = 3
  patch_size: int = 2
  num_blocks: int = 3
  num_layers_per_block: int = 2
  num_latents: int = 128
  latent_dim: int = 512
  tape_dim: int = 256
  latent_heads: int = 16
  rw_heads: int = 8
  latent_mlp_ratio: int = 4
  tape_mlp_ratio: int = 2
  dropout: float = 0.
  drop_path: float = 0.
  num_classes: int = 0
  time_scale: float = 1000.
  self_cond: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32

  @property
  def num_latent_tokens(self) -> int:
    """Latents + the noise-level token (+ the class token)."""
    return self.num_latents + 1 + (1 if self.num_classes > 0 else 0)

  def latent_shape(self, batch_size: int):
    return (batch_size, self.num_latent_tokens, self.latent_dim)

  def _tape(self, x):
    """Patch embedding (conv, kernel = stride = patch) → LN → + learned position. -> [B, N, Dt]."""
    p = self.patch_size
    tokens = nn.Conv(self.tape_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                     name='stem')(x.astype(self.dtype))
    b, h, w, d = tokens.shape
    tokens = tokens.reshape(b, h * w, d)
    pos = self.param('tape_pos', nn.initializers.truncated_normal(0.02), (h * w, d))
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='stem_ln')(tokens) + pos

  def _condition_tokens(self, gamma, labels):
    """Noise-level token (sin-embedding of γ·time_scale → MLP) and class token. -> [B, 1|2, Dl]."""
    emb = sinusoidal_embedding(gamma * self.time_scale, self.latent_dim // 4)
    emb = nn.Dense(self.latent_dim, dtype=self.dtype, name='time_fc1')(emb)
    emb = nn.Dense(self.latent_dim, dtype=self.dtype, name='time_fc2')(nn.silu(emb))
    tokens = [nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='time_ln')(emb)]
    if self.num_classes > 0:
      if labels is None:
        raise ValueError(f'RIN was built with num_classes={self.num_classes} but got labels=None; '
                         f'pass int labels [B] (use {self.num_classes} for "no label").')
      table = nn.Embed(self.num_classes + 1, self.latent_dim, name='class_embed')
      tokens.append(table(labels).astype(self.dtype))
    return jnp.stack(tokens, axis=1)

  def _initial_latents(self, batch_size, cond_tokens, latent_prev, deterministic):
    latents = self.param('latents', nn.initializers.truncated_normal(0.02),
                         (self.num_latents, self.latent_dim))
    latents = jnp.broadcast_to(latents.astype(self.dtype),
                               (batch_size,) + latents.shape)
    latents = jnp.concatenate([latents, cond_tokens.astype(self.dtype)], axis=1)
    if self.self_cond:
      if latent_prev is None:
        latent_prev = jnp.zeros(self.latent_shape(batch_size), self.dtype)
      prev = latent_prev.astype(self.dtype)
      h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='latent_prev_in_ln')(prev)
      prev = prev + Mlp(self.latent_mlp_ratio, dtype=self.dtype, name='latent_prev_mlp')(
          h, deterministic)
      latents = latents + nn.LayerNorm(epsilon=1e-6, dtype=self.dtype,
                                       scale_init=nn.initializers.zeros,
                                       name='latent_prev_ln')(prev)
    return latents

  def _readout(self, tape, batch_size):
    p, c = self.patch_size, self.num_channels
    n = self.image_size // p
    out = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='out_ln')(tape)
    out = nn.Dense(p * p * c, dtype=self.dtype, name='out_dense')(out)  # [B, n*n, p*p*c]
    out = out.reshape(batch_size, n, n, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(batch_size, n * p, n * p, c).astype(jnp.float32)

  @nn.compact
  def __call__(self, x, gamma, labels=None, latent_prev=None, train: bool = False):
    if x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
      raise ValueError(f'image size {x.shape[1:3]} is not divisible by patch_size='
                       f'{self.patch_size}; pick a patch size that divides the image size.')
    deterministic = not train
    batch_size = x.shape[0]
    tape = self._tape(x)
    cond_tokens = self._condition_tokens(gamma, labels)
    latents = self._initial_latents(batch_size, cond_tokens, latent_prev, deterministic)
    block_cls = nn.remat(RINBlock, static_argnums=(3,)) if self.remat else RINBlock
    for i in range(self.num_blocks):
      latents, tape = block_cls(
          self.num_layers_per_block, self.latent_heads, self.rw_heads, self.latent_mlp_ratio,
          self.tape_mlp_ratio, self.dropout, self.drop_path, dtype=self.dtype,
          name=f'block_{i}')(latents, tape, deterministic)
    return self._readout(tape, batch_size), latents.astype(jnp.float32)
