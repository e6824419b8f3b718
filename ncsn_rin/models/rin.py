"""Recurrent Interface Network (RIN; Jabri, Fleet & Chen 2022) as the official pix2seq "Tape".

The function, the parameter shapes and the initialisation follow google-research/pix2seq
`architectures/tape.py` (`ImageTapeDenoiser`) with the options of its RIN configs
(`configs/config_diffusion_{cifar10,imagenet64}.py`: `time_on_latent=True`, `cond_on_latent=True`,
`self_cond='latent'`, learned latent and tape position embeddings, `cond_tape_writable=False`,
`xattn_enc_ln=False`, `conv_kernel_size=0`, `drop_att=0`):

    tape    = LN(Conv_p×p,stride p(x)) + pos_tape                         [B, N, Dt], N = (H/p)²
    time    = Dense(SiLU(Dense(standardise(sincos(γ·time_scale)))))     [B, 1, Dl]  (ScalarEmbedding,
              normalize=True, last_swish=False; Dl/4 sin/cos features, expansion 4)
    class   = Dense(one_hot(label))                                     [B, 1, Dl]  (cond_proj; the
              null label K, used for classifier-free guidance, is the zero vector → the bias)
    latents = [pos_latent (latent_slots − 1 − [K>0] learned slots); time; class]  [B, latent_slots, Dl]
            + LN₀(latent_prev + MLP(LN(latent_prev)))                  (latent self-conditioning;
              LN₀ has a zero-initialised scale, so it is an exact no-op at initialisation)
    per block:  read    latents += XAttn(LN(latents), tape);  latents += MLP(LN(latents))
                compute (latents += SelfAttn(LN(latents)); latents += MLP(LN(latents))) × layers
                write   tape += XAttn(LN(tape), latents);     tape += MLP(LN(tape))
    output  = depth_to_space(Dense(LN(tape)))                           [B, H, W, C]

`latent_slots` counts every latent token, the time and class tokens included (pix2seq's
convention: 128 slots = 126 learned + time + class). MLPs are Dense(dim·ratio) → exact GELU
(`tf.nn.gelu`) → Dropout → Dense(dim). Attention is Keras `MultiHeadAttention` with biases, key
width min(Dt, Dl)/heads for read/write and Dl/heads in the compute layers. Dropout (`dropout`,
pix2seq `drop_units`) and stochastic depth (`drop_path`) act only in the compute layers, as there;
their masks are `jax.random.bernoulli`'s bit for bit, generated in one fused pass
(`models/dropout.py`: JAX's rolled CPU Threefry loop cost ~1 s of a 9 s step).
Keras initialisation: glorot-uniform kernels with Keras's fan rule (`glorot_uniform_keras`), zero
biases, truncated-normal(0.02) position embeddings (Keras's truncation: the std is 0.88·0.02).
The network is conditioned on γ, never on t, so the training and sampling schedules may differ
(Chen 2023, Sec. 3.4, compound strategy).

Shapes: images [B, H, W, C] (any float dtype, already noised and optionally variance-normalised),
gamma [B], labels [B] int32 in [0, num_classes] (num_classes = no label), latent_prev
[B, latent_slots, latent_dim]. Returns (prediction [B, H, W, C] float32, latents float32).
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_rin.models.dropout import Dropout

Dtype = Any

# pix2seq `get_variable_initializer()`: Keras `TruncatedNormal(stddev=0.02)`, N(0, 0.02²) redrawn
# beyond two standard deviations (sample std 0.02·0.88); JAX's `truncated_normal` is the same law.
POS_EMB_INIT = nn.initializers.truncated_normal(0.02)


def glorot_uniform_keras(kernel_shape=None):
  """Keras `glorot_uniform`: U(±sqrt(6 / (fan_in + fan_out))) with Keras's `_compute_fans`: 2-D
  (in, out); N-D kernels (…, in, out) multiply both by prod(shape[:-2]).

  `kernel_shape` is the kernel's shape as Keras sees it, needed for the 3-D attention kernels
  (Flax's DenseGeneral hands its initialiser the flattened 2-D shape): a query kernel [D, N, H]
  has fans (N·D, H·D), an output kernel [N, H, D] has fans (H·N, D·N) — not Flax's (D, N·H).
  """
  def init(key, shape, dtype=jnp.float32):
    kernel = kernel_shape or shape
    receptive = int(np.prod(kernel[:-2]))  # 1 for 2-D kernels
    limit = math.sqrt(6. / ((kernel[-2] + kernel[-1]) * receptive))
    return jax.random.uniform(key, shape, dtype, -limit, limit)

  return init


def _dense(features, dtype, name):
  return nn.Dense(features, dtype=dtype, kernel_init=glorot_uniform_keras(), name=name)


def _layer_norm(dtype, name, scale_init=nn.initializers.ones):
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, use_fast_variance=False, scale_init=scale_init,
                      name=name)


class Mlp(nn.Module):
  """pix2seq `MLP(num_layers=1)`: x + DropPath(Dense(GELU(Dense(LN(x)))) with dropout between).

  [B, T, dim] -> [B, T, dim]; hidden width dim·ratio; exact (erf) GELU as `tf.nn.gelu`.
  """
  ratio: int
  dropout: float = 0.
  drop_path: float = 0.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    dim = x.shape[-1]
    h = _layer_norm(self.dtype, 'ln')(x)
    h = nn.gelu(_dense(dim * self.ratio, self.dtype, 'dense1')(h), approximate=False)
    h = Dropout(self.dropout)(h, deterministic=deterministic)
    h = _dense(dim, self.dtype, 'dense2')(h)
    return x + Dropout(self.drop_path, broadcast_dims=(1, 2))(h, deterministic=deterministic)


class Attention(nn.Module):
  """Keras `MultiHeadAttention(num_heads, key_dim)` of x [B, T, Dx] over ctx [B, S, Dc]: kernels
  q/k/v [D, heads, key_dim] and out [heads, key_dim, Dx], all with biases; softmax of q·kᵀ/√key_dim
  through `jax.nn.dot_product_attention` (fused kernels where the backend has them). -> [B, T, Dx].
  """
  num_heads: int
  key_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    heads = (self.num_heads, self.key_dim)
    proj = lambda name, inp: nn.DenseGeneral(
        heads, dtype=self.dtype, kernel_init=glorot_uniform_keras((inp.shape[-1],) + heads),
        name=name)(inp)
    q, k, v = proj('query', x), proj('key', context), proj('value', context)  # [B, T|S, N, H]
    out = jax.nn.dot_product_attention(q, k, v)                              # [B, T, N, H]
    return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=self.dtype,
                           kernel_init=glorot_uniform_keras(heads + (x.shape[-1],)),
                           name='out')(out)


class AttentionLayer(nn.Module):
  """x += DropPath(Attn(LN(x), ctx)); then the MLP (if mlp_ratio > 0). x [B, T, Dx] -> same.

  context=None: self-attention, pix2seq `TransformerEncoderLayer` (the compute layers, with dropout
  and drop path). A context [B, S, Dc]: cross-attention to it, not normalised, pix2seq
  `TransformerDecoderLayer(self_attention=False)` (the read and write units, no dropout). Key width
  min(Dx, Dc) / heads (Dx / heads for self-attention), as pix2seq's `dim_x_att`.
  """
  num_heads: int
  mlp_ratio: int
  dropout: float = 0.
  drop_path: float = 0.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, deterministic: bool):
    h = _layer_norm(self.dtype, 'ln')(x)
    context = h if context is None else context
    key_dim = min(x.shape[-1], context.shape[-1]) // self.num_heads
    h = Attention(self.num_heads, key_dim, self.dtype, name='attn')(h, context)
    x = x + Dropout(self.drop_path, broadcast_dims=(1, 2))(h, deterministic=deterministic)
    if self.mlp_ratio > 0:
      x = Mlp(self.mlp_ratio, self.dropout, self.drop_path, self.dtype, name='mlp')(
          x, deterministic)
    return x


class RINBlock(nn.Module):
  """One read → compute × num_layers → write block. latents [B, L, Dl], tape [B, N, Dt].

  read, compute, write: the `AttentionLayer` arguments (heads, mlp_ratio[, dropout, drop_path]).
  """
  num_layers: int
  read: tuple
  compute: tuple
  write: tuple
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, tape, deterministic: bool):
    layer = lambda args, name: AttentionLayer(*args, dtype=self.dtype, name=name)
    latents = layer(self.read, 'read')(latents, tape, deterministic)
    for i in range(self.num_layers):
      latents = layer(self.compute, f'compute_{i}')(latents, None, deterministic)
    return latents, layer(self.write, 'write')(tape, latents, deterministic)


class RIN(nn.Module):
  """Recurrent Interface Network denoiser (pix2seq `ImageTapeDenoiser`); see the module docstring.

  `__call__(x, gamma, labels=None, latent_prev=None, train=False)` returns (prediction [B,H,W,C]
  float32, latents [B, latent_slots, latent_dim] float32 — the next pass's self-conditioning input).
  """
  image_size: int
  num_channels: int = 3
  num_classes: int = 0
  patch_size: int = 2
  num_blocks: int = 3
  num_layers_per_block: int = 2
  latent_slots: int = 128
  latent_dim: int = 512
  tape_dim: int = 256
  latent_heads: int = 16
  rw_heads: int = 8
  latent_mlp_ratio: int = 4
  tape_mlp_ratio: int = 2
  dropout: float = 0.
  drop_path: float = 0.
  time_scale: float = 1000.
  self_cond: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32

  def latent_shape(self, batch_size: int):
    return (batch_size, self.latent_slots, self.latent_dim)

  def _tape(self, x):
    """Patch embedding (conv, kernel = stride = patch) → LN → + learned position. -> [B, N, Dt]."""
    p = self.patch_size
    tokens = nn.Conv(self.tape_dim, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                     kernel_init=glorot_uniform_keras(), name='stem')(x.astype(self.dtype))
    b, h, w, d = tokens.shape
    pos = self.param('tape_pos', POS_EMB_INIT, (h * w, d))
    return _layer_norm(self.dtype, 'stem_ln')(tokens.reshape(b, h * w, d)) + pos

  def _condition_tokens(self, gamma, labels):
    """Time token (ScalarEmbedding) and, with classes, the class token. -> [B, 1|2, Dl]."""
    # pix2seq `positional_encoding` [sin(v·ω_k), cos(v·ω_k)], ω_k = 10000^(−2k/d), k < d/2,
    # d = Dl/4, then standardised over the features (`normalize=True`).
    d = self.latent_dim // 4
    args = (gamma * self.time_scale).astype(jnp.float32)[:, None] * (
        10000. ** (-2. * jnp.arange(d // 2, dtype=jnp.float32) / d))[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    emb = (emb - emb.mean(-1, keepdims=True)) / emb.std(-1, keepdims=True)
    emb = nn.silu(_dense(self.latent_dim, self.dtype, 'time_dense0')(emb))
    tokens = [_dense(self.latent_dim, self.dtype, 'time_dense1')(emb)]
    if self.num_classes > 0:
      one_hot = jax.nn.one_hot(labels, self.num_classes, dtype=self.dtype)  # label K -> zeros
      tokens.append(_dense(self.latent_dim, self.dtype, 'class_proj')(one_hot))
    return jnp.stack(tokens, axis=1)

  def _initial_latents(self, cond_tokens, latent_prev, deterministic):
    batch_size, num_cond = cond_tokens.shape[0], cond_tokens.shape[1]
    learned = self.param('latent_pos', POS_EMB_INIT,
                         (self.latent_slots - num_cond, self.latent_dim))
    learned = jnp.broadcast_to(learned.astype(self.dtype), (batch_size,) + learned.shape)
    latents = jnp.concatenate([learned, cond_tokens.astype(self.dtype)], axis=1)
    if not self.self_cond:
      return latents
    if latent_prev is None:
      latent_prev = jnp.zeros(self.latent_shape(batch_size), self.dtype)
    prev = Mlp(self.latent_mlp_ratio, dtype=self.dtype, name='latent_prev_proj')(
        latent_prev.astype(self.dtype), deterministic)
    return latents + _layer_norm(self.dtype, 'latent_prev_ln', nn.initializers.zeros)(prev)

  def _readout(self, tape):
    """LN → Dense(p·p·C) → depth_to_space (channel index (i·p + j)·C + c). -> [B, H, W, C]."""
    p, c, n = self.patch_size, self.num_channels, self.image_size // self.patch_size
    out = _dense(p * p * c, self.dtype, 'out_dense')(_layer_norm(self.dtype, 'out_ln')(tape))
    out = out.reshape(-1, n, n, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(-1, n * p, n * p, c).astype(jnp.float32)

  @nn.compact
  def __call__(self, x, gamma, labels=None, latent_prev=None, train: bool = False):
    deterministic = not train
    tape = self._tape(x)
    latents = self._initial_latents(self._condition_tokens(gamma, labels), latent_prev,
                                    deterministic)
    block_cls = nn.remat(RINBlock, static_argnums=(3,)) if self.remat else RINBlock
    compute = (self.latent_heads, self.latent_mlp_ratio, self.dropout, self.drop_path)
    for i in range(self.num_blocks):
      latents, tape = block_cls(
          self.num_layers_per_block, (self.rw_heads, self.latent_mlp_ratio), compute,
          (self.rw_heads, self.tape_mlp_ratio), self.dtype, name=f'block_{i}')(
              latents, tape, deterministic)
    return self._readout(tape), latents.astype(jnp.float32)
