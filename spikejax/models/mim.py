"""SparK-style masked-image-modelling pieces (spec §4.2): masking, patches, the normalised-pixel
loss, fixed sin-cos position embeddings and the plain ViT decoder of the official ``Spikmae``.

Everything here is a pure function of explicit arguments: the mask is always passed in, never
kept in a global (the official code stores it in a module-level variable).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spikejax.models.layers import BatchNorm, Linear, SpikeConfig
from spikejax.models.spikformer import (LARGE_SPIKE, SpikformerConfig, SpikformerEncoder,
                                        upsample_mask)

Array = jax.Array


# --------------------------------------------------------------------------- masking


def random_masking(key: Array, batch: int, grid: tuple[int, int], mask_ratio: float
                   ) -> tuple[Array, Array]:
  """MAE/SparK random masking (spec §4.2 "Masking").

  Per sample: ``noise ~ U[0, 1)`` over the ``L = gh * gw`` patches, ``ids_shuffle =
  argsort(noise)``, ``ids_restore = argsort(ids_shuffle)``; patch ``i`` is kept (active) iff
  ``ids_restore[i] < len_keep`` with ``len_keep = int(L * (1 - mask_ratio))``.

  Returns ``(active, ids_restore)``: ``active`` float32 ``(B, gh, gw)`` with 1 = visible,
  ``ids_restore`` int32 ``(B, L)``.
  """
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
  gh, gw = grid
  length = gh * gw
  len_keep = int(length * (1 - mask_ratio))
  if len_keep < 1:
    raise ValueError(f"mask_ratio={mask_ratio} keeps no patch of the {gh}x{gw} grid.")
  noise = jax.random.uniform(key, (batch, length))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  active = (ids_restore < len_keep).astype(jnp.float32)
  return active.reshape(batch, gh, gw), ids_restore


# --------------------------------------------------------------------------- patches and loss


def patchify(images: Array, patch: int) -> Array:
  """``(B, H, W, C)`` -> ``(B, L, patch*patch*C)``; patches row-major, vector order
  (row-in-patch, col-in-patch, channel), channel fastest (spec §8 trap 23)."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image {h}x{w} is not a whole number of {patch}x{patch} patches.")
  gh, gw = h // patch, w // patch
  x = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches: Array, patch: int, grid: tuple[int, int], channels: int) -> Array:
  """Inverse of ``patchify``: ``(B, L, patch*patch*C)`` -> ``(B, H, W, C)``."""
  b = patches.shape[0]
  gh, gw = grid
  x = patches.reshape(b, gh, gw, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * patch, gw * patch, channels)


def normalized_targets(images: Array, patch: int, eps: float = 1e-6) -> Array:
  """Per-patch normalised pixels ``(t - mean) / sqrt(var + eps)``; ``var`` is the *unbiased*
  variance over the patch vector (spec §4.2 "Loss": the official code always normalises)."""
  t = patchify(images.astype(jnp.float32), patch)
  n = t.shape[-1]
  mean = jnp.mean(t, axis=-1, keepdims=True)
  var = jnp.sum(jnp.square(t - mean), axis=-1, keepdims=True) / (n - 1)
  return (t - mean) / jnp.sqrt(var + eps)


def mim_loss(pred: Array, images: Array, active: Array, patch: int,
             weights: Array | None = None) -> Array:
  """``sum_{masked patches} mean_vec((pred - t_hat)^2) / (#masked + 1e-8)`` (spec §4.2).

  ``pred`` ``(B, L, patch*patch*C)`` in patch order, ``active`` ``(B, gh, gw)`` (1 = visible);
  only masked patches count. ``weights`` ``(B,)`` (optional) leaves out rows with weight 0
  (padding of an evaluation batch).
  """
  target = normalized_targets(images, patch)
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  masked = 1.0 - active.reshape(active.shape[0], -1).astype(jnp.float32)
  if weights is not None:
    masked = masked * weights.astype(jnp.float32)[:, None]
  return jnp.sum(per_patch * masked) / (jnp.sum(masked) + 1e-8)


# --------------------------------------------------------------------------- position embeddings


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """MAE's 1-D sin-cos embedding: ``[sin(pos * w), cos(pos * w)]``, ``w_k = 10000^(-k/(dim/2))``."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding dim must be even, got {dim}.")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
  """MAE's fixed 2-D sin-cos embedding ``(gh*gw, dim)``: the first half of the channels encodes
  the row, the second half the column (tokens row-major)."""
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding dim must be a multiple of 4, got {dim}.")
  gh, gw = grid
  rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64),
                           indexing="ij")
  emb = np.concatenate([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], axis=1)
  return emb.astype(np.float32)


class Frozen(nnx.Variable):
  """A fixed tensor that belongs to the model (saved, converted, counted in the total) but is
  never trained: the official ``requires_grad=False`` position embeddings."""


# --------------------------------------------------------------------------- ViT decoder


def _linear(din, dout, *, use_bias=True, dtype=None, param_dtype=jnp.float32, rngs):
  # MAE Linear: trunc_normal(0.02), bias 0 (spec §8 trap 24)
  return Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=jax.nn.initializers.truncated_normal(0.02),
                    bias_init=jax.nn.initializers.zeros, rngs=rngs)


class DecoderAttention(nnx.Module):
  """timm ``Attention``: qkv Linear (no bias), softmax(q k^T / sqrt(d)) v, proj Linear."""

  def __init__(self, dim, num_heads, *, dtype=None, param_dtype=jnp.float32, rngs):
    if dim % num_heads:
      raise ValueError(f"decoder dim {dim} is not divisible by {num_heads} heads.")
    self.num_heads = num_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = _linear(dim, 3 * dim, use_bias=False, **kw)
    self.proj = _linear(dim, dim, **kw)

  def __call__(self, x):
    b, n, c = x.shape
    h = self.num_heads
    qkv = self.qkv(x).reshape(b, n, 3, h, c // h).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = jnp.einsum("bhnd,bhmd->bhnm", q, k) * (c // h) ** -0.5
    attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)
    o = jnp.einsum("bhnm,bhmd->bhnd", attn, v).transpose(0, 2, 1, 3).reshape(b, n, c)
    return self.proj(o)


class DecoderMlp(nnx.Module):
  def __init__(self, dim, hidden, *, dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = _linear(dim, hidden, **kw)
    self.fc2 = _linear(hidden, dim, **kw)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class DecoderBlock(nnx.Module):
  """timm ``Block``: pre-norm LayerNorm (eps 1e-6), attention, GELU MLP (spec §4.2 "Decoder")."""

  def __init__(self, dim, num_heads, mlp_ratio=4, *, dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
    self.attn = DecoderAttention(dim, num_heads, **kw)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
    self.mlp = DecoderMlp(dim, int(dim * mlp_ratio), **kw)

  def __call__(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------- the MIM model


@dataclasses.dataclass(frozen=True)
class MIMConfig:
  """The pretraining head of ``Spikmae`` (spec §4.2).

  Attributes:
    img_size: (H, W) of the pretraining images; the patch grid is ``img_size / total_stride``
      (224 / 16 = 14 x 14 patches of 16 px in the official model).
    mask_ratio: fraction of patches masked; 0.5 is what the official code actually uses (its
      ``--mask_ratio`` flag is never passed, spec §8 trap 7).
    decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio: the plain ViT decoder.
    token_order: ``'spatial'`` feeds the decoder the encoder tokens in their spatial order
      (correct); ``'official'`` reproduces the official gather by ``ids_restore``, which
      permutes the tokens at random per sample before the position embedding (spec §4.2, §8
      trap 8).
  """
  img_size: tuple[int, int] = (224, 224)
  mask_ratio: float = 0.5
  decoder_dim: int = 256
  decoder_depth: int = 4
  decoder_heads: int = 4
  decoder_mlp_ratio: float = 4.0
  token_order: str = "spatial"

  def __post_init__(self):
    if len(self.img_size) != 2 or min(self.img_size) < 1:
      raise ValueError(f"img_size must be (H, W), got {self.img_size!r}.")
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio!r}.")
    if self.token_order not in ("spatial", "official"):
      raise ValueError(f"token_order must be 'spatial' (correct) or 'official' (the official "
                       f"random permutation), got {self.token_order!r}.")
    if self.decoder_dim % 4 or self.decoder_dim % self.decoder_heads:
      raise ValueError(f"decoder_dim={self.decoder_dim} must be a multiple of 4 and of "
                       f"decoder_heads={self.decoder_heads}.")
    if self.decoder_depth < 1:
      raise ValueError(f"decoder_depth must be >= 1, got {self.decoder_depth}.")


class SpikMAE(SpikformerEncoder):
  """LARGE-MAE ``Spikmae`` (spec §4.2): the sparse spiking encoder plus a ViT decoder.

  ``__call__(images, key=None)`` returns ``(loss, pred, active)``: the normalised-pixel loss
  on masked patches, the predictions ``(B, L, patch*patch*C)`` and the active map
  ``(B, gh, gw)``. The mask is drawn from ``key``, or from the model's own ``mask`` rng stream
  (part of the model state, so a resumed run draws the same masks). Variables sit under the
  official names (spec §9.3); ``pos_embed`` and ``decoder_pos_embed`` are ``Frozen``.
  """

  def __init__(self, config: SpikformerConfig, mim: MIMConfig = MIMConfig(),
               spike: SpikeConfig = LARGE_SPIKE, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if config.layer_scale is not None or config.drop_path_rate:
      raise ValueError("the MAE encoder has no layer scale and no drop path (spec §4.2): build "
                       "it with layer_scale=None, drop_path_rate=0.")
    super().__init__(config, spike, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.mim = mim
    p = config.total_stride
    h, w = mim.img_size
    if h % p or w % p:
      raise ValueError(f"img_size {mim.img_size} is not a whole number of {p}-pixel patches "
                       f"(the encoder's total stride {config.strides}); use a multiple of {p}.")
    self.patch = p
    self.grid = (h // p, w // p)
    c2 = config.embed_dims[2]
    dd = mim.decoder_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    length = self.grid[0] * self.grid[1]
    # the encoder's sin-cos pos_embed (1, C, L) exists in the official model but is unused
    self.pos_embed = Frozen(jnp.asarray(sincos_2d(c2, self.grid).T[None], param_dtype))
    self.mask_token = nnx.Param(
        jax.nn.initializers.normal(0.02)(rngs.params(), (1, 1, dd), param_dtype))
    self.norm = BatchNorm(c2, dtype=dtype, param_dtype=param_dtype)
    self.decoder_embed = _linear(c2, dd, **kw)
    self.decoder_pos_embed = Frozen(jnp.asarray(sincos_2d(dd, self.grid)[None], param_dtype))
    self.decoder_blocks = nnx.List([
        DecoderBlock(dd, mim.decoder_heads, mim.decoder_mlp_ratio, **kw)
        for _ in range(mim.decoder_depth)])
    self.decoder_norm = nnx.LayerNorm(dd, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                                      rngs=rngs)
    self.decoder_pred = _linear(dd, p * p * config.in_channels, **kw)
    self.mask_rngs = rngs["mask"].fork() if "mask" in rngs else rngs.default.fork()
    del length

  def random_mask(self, batch: int, key=None) -> tuple[Array, Array]:
    """``(active (B, gh, gw), ids_restore (B, L))`` from ``key`` or the model's mask stream."""
    key = self.mask_rngs() if key is None else key
    return random_masking(key, batch, self.grid, self.mim.mask_ratio)

  def forward_encoder(self, images, active) -> Array:
    """Masked images -> latent tokens ``(B, L, c2)``: sparse conv pyramid, dense ``block3``,
    mean over T, BatchNorm1d ``norm`` over all tokens (spec §4.2 "Encoder output")."""
    if tuple(images.shape[-3:-1]) != tuple(self.mim.img_size):
      raise ValueError(f"the MIM model was built for {self.mim.img_size} images, got "
                       f"{tuple(images.shape[-3:-1])}; set img_size to the data's size.")
    x = self.forward_features(images, active)              # (T*B, L, c2)
    T = self.spike.time_steps
    x = jnp.mean(x.reshape((T, -1) + x.shape[1:]).astype(jnp.float32), axis=0).astype(x.dtype)
    return self.norm(x)

  def encode(self, images) -> Array:
    """The encoder's latent tokens ``(B, L, c2)`` for whole (unmasked) images."""
    b = images.shape[-4] if images.ndim == 4 else images.shape[1]
    return self.forward_encoder(images, jnp.ones((b,) + self.grid, images.dtype))

  def predict(self, images) -> Array:
    """Inference output (``spikejax.models.predict``): the encoder tokens of ``encode``."""
    return self.encode(images)

  def forward_decoder(self, latent, ids_restore) -> Array:
    """Latent tokens -> per-patch predictions ``(B, L, patch*patch*C)``."""
    x = self.decoder_embed(latent)
    if self.mim.token_order == "official":
      # the official gather: decoder position i gets the token of patch ids_restore[i]
      x = jnp.take_along_axis(x, ids_restore[..., None].astype(jnp.int32), axis=1)
    x = x + self.decoder_pos_embed[...].astype(x.dtype)
    for blk in self.decoder_blocks:
      x = blk(x)
    return self.decoder_pred(self.decoder_norm(x))

  def __call__(self, images, key=None):
    active, ids_restore = self.random_mask(images.shape[-4] if images.ndim == 4 else
                                           images.shape[1], key)
    latent = self.forward_encoder(images, active)
    pred = self.forward_decoder(latent, ids_restore)
    if images.ndim == 5:  # time-major frames: reconstruct the time-averaged frame
      images = jnp.mean(images, axis=0)
    return mim_loss(pred, images, active, self.patch), pred, active
