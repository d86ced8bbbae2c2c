"""The LARGE family (83M / 171M), as the official ``Model_Large/spikformer.py`` (spec §4.1).

Not the paper's E-SpikeFormer block (spec §8 trap 10): conv blocks without SepConv, 3 stages,
RepConv q/k/v/proj, fixed attention scale 0.125, layer scale and drop path, a main head on
non-spiked features plus an optional distillation head. Neurons round half up and use the
open surrogate window (spec §1.1-1.2); "T = 4" in the official file is D (trap 30).

Layout as BASE (``espikeformer.py``): NHWC images with a leading merged ``T * B`` axis
(time-major); after ``downsample3`` the stream is flattened to tokens ``(T*B, N, C)`` with
``N = h * w`` row-major. Module and attribute names mirror the official state_dict (spec §9.2):
``ConvBlock1_1.0.conv1.0.0.weight`` <-> ``conv_block1_1/0/conv1/conv/kernel``,
``block3.0.attn.q_conv.0.conv1.0.weight`` <-> ``block3/0/attn/q_conv/conv/conv1/conv/kernel``.

Every conv-stage layer takes an optional ``mask`` (1 = active) for SparK-style MIM (spec §4.2):
dense conv, output multiplied by the active mask at the output resolution, then BatchNorm over
active positions only with exact zeros elsewhere. ``mask=None`` is the ordinary dense model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spikejax.models import espikeformer
from spikejax.models.espikeformer import MLP, ConvBN, ESpikeFormer
from spikejax.models.layers import BatchNorm, Linear, SpikeConfig, conv2d, make_neuron
from spikejax.spiking.synapse import spike_einsum

Array = jax.Array

DropPathPer = Literal["sample", "timestep"]

# Official encoder modules in forward order; the conv stages accept ``mask`` (spec §4.2).
CONV_STAGES = ("downsample1_1", "conv_block1_1", "downsample1_2", "conv_block1_2",
               "downsample2", "conv_block2_1", "conv_block2_2", "downsample3")
LARGE_STAGES = CONV_STAGES + ("block3",)
# Multi-scale taps of the LARGE encoder (addendum C.1, the three-stage analogue of
# ``espikeformer.FEATURE_TAPS``): name -> (stage it is taken after, downsamplings before it,
# index of its width in (c0 / 2, c0, c1, c2)). With the official strides the names are the
# strides; ``s16`` is the token stream after ``block3`` laid back on its (h, w) grid.
FEATURE_TAPS = {"s2": ("conv_block1_1", 1, 0), "s4": ("conv_block1_2", 2, 1),
                "s8": ("conv_block2_2", 3, 2), "s16": ("block3", 4, 3)}
# Rematerialisation policies of ``SpikformerConfig.remat`` (``jax.checkpoint`` per block).
REMAT = {"none": None, "dots": jax.checkpoint_policies.dots_saveable,
         "full": jax.checkpoint_policies.nothing_saveable}


def run_block(blk, remat: str, *args):
  """``blk(*args)``, under ``nnx.remat`` with the ``REMAT[remat]`` policy unless ``'none'``."""
  if remat == "none":
    return blk(*args)
  return nnx.remat(lambda b, *a: b(*a), policy=REMAT[remat])(blk, *args)


# The LARGE neuron: D = 4, floor(x + 0.5) rounding, surrogate window 0 < u < D (spec §1.1-1.2).
LARGE_SPIKE = SpikeConfig(time_steps=1, spike_max=4, rounding="half_up", window="open")


def upsample_mask(active: Array, h: int, w: int) -> Array:
  """Nearest upsampling of an active mask ``(N, hm, wm)`` or ``(N, hm, wm, 1)`` to ``(N, h, w, 1)``.

  Row ``i`` takes source row ``floor(i * hm / h)`` (PyTorch ``nearest``); for integer factors
  this is SparK's ``repeat_interleave`` (x16 to 224 px, x8 at 112, ..., x1 at 14; spec §4.2).
  """
  if active.ndim == 4:
    if active.shape[-1] != 1:
      raise ValueError(f"a 4-D mask must be (N, h, w, 1), got shape {tuple(active.shape)}.")
    active = active[..., 0]
  if active.ndim != 3:
    raise ValueError(f"mask must be (N, h, w) or (N, h, w, 1), got shape {tuple(active.shape)}.")
  hm, wm = active.shape[1], active.shape[2]
  if (hm, wm) != (h, w):
    rows = (np.arange(h) * hm) // h
    cols = (np.arange(w) * wm) // w
    active = active[:, rows][:, :, cols]
  return active[..., None]


def _sparse_conv_bn(conv, bn: BatchNorm, x: Array, mask: Array | None) -> Array:
  """SparseConv2d -> SparseBatchNorm2d (spec §4.2); dense conv -> BN when ``mask`` is None."""
  y = conv(x)
  if mask is None:
    return bn(y)
  m = upsample_mask(mask, y.shape[1], y.shape[2]).astype(y.dtype)
  return bn(y * m, m)


@dataclasses.dataclass(frozen=True)
class SpikformerConfig:
  """Hyper-parameters of one LARGE model (spec §3, §4.1).

  Attributes:
    embed_dims: (c0, c1, c2); the first stage runs at c0 // 2.
    conv_depths: ConvBlocks in ConvBlock1_1, ConvBlock1_2 and ConvBlock2_x (split as BASE).
    strides: of downsample1_1 (7x7 stem), downsample1_2, downsample2, downsample3.
    depth: number of transformer blocks (``block3``).
    rep_conv2: the linear RepConv2 branch of choice "base" (83M); False for "large" (171M).
    layer_scale: initial per-channel layer scale (1e-6 in finetuning); None = no layer scale
      (the MAE encoder).
    drop_path_rate: stochastic depth, linspace(0, rate, depth) over the blocks.
    drop_path_per: ``'sample'`` drops a branch per image (the same draw for its T timesteps);
      ``'timestep'`` reproduces timm ``DropPath`` on the official (T, B, C, N) tensors, one draw
      per real timestep shared by the whole batch.
    kd: add the distillation head ``head_kd`` (spec §4.1 Head).
    attn_scale: the fixed attention scale (0.125).
    rep_hidden_ratio: hidden width of the q/k/v/proj RepConv (int(d * 1.5)).
    remat: what each block keeps for the backward pass (``REMAT``): ``'none'`` everything
      autodiff saves; ``'dots'`` only conv and matmul outputs, the neurons, BN normalisation
      and residual adds recomputed in the backward pass (fused into its kernels); ``'full'``
      only the block inputs. Same values and gradients; less memory and traffic, more FLOPs.
  """
  embed_dims: tuple[int, int, int] = (128, 256, 512)
  num_classes: int = 1000
  in_channels: int = 3
  num_heads: int = 8
  mlp_ratio: int = 4
  depth: int = 12
  conv_depths: tuple[int, int, int] = (1, 1, 2)
  strides: tuple[int, int, int, int] = (2, 2, 2, 2)
  rep_conv2: bool = True
  layer_scale: float | None = 1e-6
  drop_path_rate: float = 0.1
  drop_path_per: DropPathPer = "sample"
  kd: bool = True
  attn_scale: float = 0.125
  rep_hidden_ratio: float = 1.5
  remat: str = "none"

  def __post_init__(self):
    def is_int(v):
      return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    dims = self.embed_dims
    if len(dims) != 3 or not all(is_int(d) and d > 0 for d in dims) or dims[0] % 2:
      raise ValueError(f"embed_dims must be 3 positive channel counts with an even first one "
                       f"(it is halved for the first stage), got {dims}.")
    if not is_int(self.num_heads) or self.num_heads < 1:
      raise ValueError(f"num_heads must be an integer >= 1, got {self.num_heads!r}.")
    if dims[2] % self.num_heads:
      raise ValueError(f"embed_dims[2]={dims[2]} is not divisible by num_heads="
                       f"{self.num_heads}.")
    if len(self.strides) != 4 or any(s not in (1, 2) for s in self.strides):
      raise ValueError(f"strides must be 4 values in {{1, 2}} (downsample1_1, downsample1_2, "
                       f"downsample2, downsample3), got {self.strides}.")
    if len(self.conv_depths) != 3 or not all(is_int(d) and d >= 0 for d in self.conv_depths):
      raise ValueError(f"conv_depths must be 3 integers >= 0, got {self.conv_depths}.")
    if not is_int(self.depth) or self.depth < 1:
      raise ValueError(f"depth must be an integer >= 1, got {self.depth!r}.")
    if not is_int(self.num_classes) or self.num_classes < 0 or not is_int(self.in_channels) \
        or self.in_channels < 1:
      raise ValueError(f"num_classes (0: a backbone) and in_channels (>= 1) must be integers, got "
                       f"{self.num_classes!r}, {self.in_channels!r}.")
    if not (isinstance(self.mlp_ratio, (int, float)) and int(dims[2] * self.mlp_ratio) >= 1
            and int(dims[0] // 2 * self.mlp_ratio) >= 1):
      raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}.")
    if not (isinstance(self.rep_hidden_ratio, (int, float)) and self.rep_hidden_ratio > 0
            and int(dims[2] * self.rep_hidden_ratio) >= 1):
      raise ValueError(f"rep_hidden_ratio must be > 0 (hidden = int(d * ratio) >= 1), got "
                       f"{self.rep_hidden_ratio!r}.")
    if self.layer_scale is not None and not (isinstance(self.layer_scale, (int, float))
                                             and math.isfinite(self.layer_scale)
                                             and self.layer_scale > 0):
      raise ValueError(f"layer_scale must be a positive float or None, got "
                       f"{self.layer_scale!r}.")
    if not (isinstance(self.drop_path_rate, (int, float)) and 0 <= self.drop_path_rate < 1):
      raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}.")
    if self.drop_path_per not in ("sample", "timestep"):
      raise ValueError(f"drop_path_per must be 'sample' or 'timestep', got "
                       f"{self.drop_path_per!r}.")
    if not isinstance(self.rep_conv2, bool) or not isinstance(self.kd, bool):
      raise ValueError(f"rep_conv2 and kd must be booleans, got {self.rep_conv2!r}, "
                       f"{self.kd!r}.")
    if self.remat not in REMAT:
      raise ValueError(f"remat must be one of {sorted(REMAT)}, got {self.remat!r}.")
    if not (isinstance(self.attn_scale, (int, float)) and math.isfinite(self.attn_scale)):
      raise ValueError(f"attn_scale must be a finite number, got {self.attn_scale!r}.")

  @property
  def total_stride(self) -> int:
    return math.prod(self.strides)

  @property
  def drop_path_rates(self) -> tuple[float, ...]:
    """Per-block rates, linspace(0, drop_path_rate, depth) (spec §4.1)."""
    return tuple(float(r) for r in np.linspace(0.0, self.drop_path_rate, self.depth))


# --------------------------------------------------------------------------- conv stages


class DownSampling(espikeformer.DownSampling):
  """BASE's ``[SN] -> Conv(k, s, p, bias) -> BN`` (spec §2.1) with the sparse path (§4.2)."""

  def __call__(self, x, mask=None):
    if self.encode_spike is not None:
      x = self.encode_spike(x)
    return _sparse_conv_bn(self.encode_conv, self.encode_bn, x, mask)


class ConvUnit(nnx.Module):
  """Official ``MS_conv_unit``: Conv3x3 (bias) -> BN2d, optionally sparse (spec §4.1-4.2)."""

  def __init__(self, cin, cout, *, dtype=None, param_dtype=jnp.float32, rngs):
    self.conv = conv2d(cin, cout, 3, padding=1, use_bias=True, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
    self.bn = BatchNorm(cout, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x, mask=None):
    return _sparse_conv_bn(self.conv, self.bn, x, mask)


class LargeConvBlock(nnx.Module):
  """``x + BN(Conv3x3(4d->d)(SN(BN(Conv3x3(d->4d)(SN(x))))))``, no SepConv (spec §4.1)."""

  def __init__(self, dim, spike: SpikeConfig, *, mlp_ratio=4, dtype=None,
               param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    hidden = int(dim * mlp_ratio)
    self.spike1 = make_neuron(spike)
    self.conv1 = ConvUnit(dim, hidden, **kw)
    self.spike2 = make_neuron(spike)
    self.conv2 = ConvUnit(hidden, dim, **kw)

  def __call__(self, x, mask=None):
    y = self.conv1(self.spike1(x), mask)
    return x + self.conv2(self.spike2(y), mask)


# --------------------------------------------------------------------------- transformer stage


class RepConv(nnx.Module):
  """Conv1d(cin->hidden, no bias) -> BN1d -> Conv1d(hidden->cout, no bias) -> BN1d (spec §4.1).

  ``hidden = int(cin * 1.5)`` in q/k/v/proj (official ``RepConv``); ``hidden = cin`` is the
  83M block's ``RepConv2``. No neuron between the two convs: a linear 1x1 x 1x1 mixer.
  """

  def __init__(self, cin, cout, hidden, *, dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = ConvBN(cin, hidden, **kw)
    self.conv2 = ConvBN(hidden, cout, **kw)

  def __call__(self, x):
    return self.conv2(self.conv1(x))


class RepConvBN(nnx.Module):
  """Official ``nn.Sequential(RepConv(d, d), BatchNorm1d(d))``: the outer third BN (spec §4.1)."""

  def __init__(self, dim, hidden_ratio, *, dtype=None, param_dtype=jnp.float32, rngs):
    self.conv = RepConv(dim, dim, int(dim * hidden_ratio), dtype=dtype, param_dtype=param_dtype,
                        rngs=rngs)
    self.bn = BatchNorm(dim, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    return self.bn(self.conv(x))


class LargeAttention(nnx.Module):
  """``MS_Attention_Conv_qkv_id`` (spec §4.1): q/k/v = SN(BN(RepConv(SN(x)))), Q (K^T V) * 0.125.

  Input and output are tokens ``(n, N, C)``. Heads split channels into contiguous groups and
  the output channel is ``head * C/heads + j`` (spec §8 trap 23); V is not expanded.
  """

  def __init__(self, dim, spike: SpikeConfig, *, num_heads=8, scale=0.125, hidden_ratio=1.5,
               dtype=None, param_dtype=jnp.float32, rngs):
    if dim % num_heads:
      raise ValueError(f"attention dim {dim} is not divisible by num_heads={num_heads}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_heads = num_heads
    self.scale = float(scale)
    self.head_spike = make_neuron(spike)
    self.q_conv = RepConvBN(dim, hidden_ratio, **kw)
    self.q_spike = make_neuron(spike)
    self.k_conv = RepConvBN(dim, hidden_ratio, **kw)
    self.k_spike = make_neuron(spike)
    self.v_conv = RepConvBN(dim, hidden_ratio, **kw)
    self.v_spike = make_neuron(spike)
    self.attn_spike = make_neuron(spike)
    self.proj_conv = RepConvBN(dim, hidden_ratio, **kw)

  def __call__(self, x):
    n, num, c = x.shape
    z = self.head_spike(x)

    def heads(t):  # (n, N, C) -> (n, heads, N, C/heads)
      return t.reshape(n, num, self.num_heads, -1).transpose(0, 2, 1, 3)

    q = heads(self.q_spike(self.q_conv(z)))
    k = heads(self.k_spike(self.k_conv(z)))
    v = heads(self.v_spike(self.v_conv(z)))
    # K^T V first, as the official code (spike trains: over their sub-step pairs, spec §1.4)
    kv = spike_einsum("bhmc,bhmd->bhcd", k, v, op=self, name="kv")
    o = spike_einsum("bhnc,bhcd->bhnd", q, kv, op=self, name="qkv") * jnp.asarray(self.scale,
                                                                                v.dtype)
    o = o.transpose(0, 2, 1, 3).reshape(n, num, c)
    return self.proj_conv(self.attn_spike(o))


class DropPath(nnx.Module):
  """Stochastic depth on a branch ``(T*B, ...)`` (timm ``DropPath``, scaled by 1/keep).

  Active only in train mode (``deterministic=False``, toggled by ``model.train()`` /
  ``model.eval()``) and when ``rate > 0``; draws from its own fork of the ``rngs`` stream
  ``rng_collection`` ('dropout', falling back to 'default'). ``per`` is
  ``SpikformerConfig.drop_path_per``.
  """

  def __init__(self, rate: float, *, time_steps: int, per: DropPathPer = "sample",
               rng_collection: str = "dropout", rngs: nnx.Rngs | None = None):
    if not 0 <= rate < 1:
      raise ValueError(f"drop path rate must be in [0, 1), got {rate!r}.")
    self.rate = float(rate)
    self.time_steps = time_steps
    self.per = per
    self.deterministic = False
    if self.rate > 0 and rngs is None:
      raise ValueError("a DropPath with rate > 0 needs rngs.")
    self.rngs = rngs[rng_collection].fork() if self.rate > 0 else None

  def __call__(self, x):
    if self.deterministic or self.rate == 0.0:
      return x
    T = self.time_steps
    if x.shape[0] % T:
      raise ValueError(f"leading axis {x.shape[0]} is not a multiple of time_steps={T}.")
    B = x.shape[0] // T
    keep = 1.0 - self.rate
    shape = (1, B) if self.per == "sample" else (T, 1)
    kept = jax.random.bernoulli(self.rngs(), keep, shape)
    scale = jnp.broadcast_to(kept, (T, B)).astype(x.dtype) / jnp.asarray(keep, x.dtype)
    return x * scale.reshape((T * B,) + (1,) * (x.ndim - 1))


class LargeBlock(nnx.Module):
  """``MS_Block`` (spec §4.1) on tokens ``(n, N, C)``.

  ``x += RepConv2(SN(x))`` (83M only); ``x += DropPath(Attn(x) * ls1)``;
  ``x += DropPath(MLP(x) * ls2)``. Without layer scale (MAE encoder) the scales are omitted.
  """

  def __init__(self, dim, spike: SpikeConfig, *, num_heads=8, mlp_ratio=4, rep_conv2=True,
               layer_scale: float | None = 1e-6, drop_path: float = 0.0,
               drop_path_per: DropPathPer = "sample", attn_scale=0.125, rep_hidden_ratio=1.5,
               dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if rep_conv2:
      self.rep_spike = make_neuron(spike)
      self.rep_conv = RepConv(dim, dim, dim, **kw)
    self.has_rep_conv = rep_conv2
    self.attn = LargeAttention(dim, spike, num_heads=num_heads, scale=attn_scale,
                               hidden_ratio=rep_hidden_ratio, **kw)
    self.mlp = MLP(dim, spike, mlp_ratio=mlp_ratio, **kw)
    self.drop_path = DropPath(drop_path, time_steps=spike.time_steps, per=drop_path_per,
                              rngs=rngs)
    if layer_scale is not None:  # two buffers, never one shared array (see TransformerBlock)
      self.layer_scale1 = nnx.Param(jnp.full((dim,), layer_scale, param_dtype))
      self.layer_scale2 = nnx.Param(jnp.full((dim,), layer_scale, param_dtype))
    self.has_layer_scale = layer_scale is not None

  def __call__(self, x):
    if self.has_rep_conv:
      x = x + self.rep_conv(self.rep_spike(x))
    a = self.attn(x)
    if self.has_layer_scale:
      a = a * self.layer_scale1[...]
    x = x + self.drop_path(a)
    m = self.mlp(x)
    if self.has_layer_scale:
      m = m * self.layer_scale2[...]
    return x + self.drop_path(m)


# --------------------------------------------------------------------------- models


class SpikformerEncoder(nnx.Module):
  """The LARGE encoder: conv stages (sparse-capable), ``downsample3``, ``block3`` (spec §4.1).

  Shared by the finetuning model (``Spikformer``, a subclass adding the heads) and the MIM
  model: the variables sit at the top level under the official names, so both models' trees
  (and the layer-decay ids of ``train.optim.large_layer_id``) match the official state_dicts.
  """

  def __init__(self, config: SpikformerConfig, spike: SpikeConfig = LARGE_SPIKE, *, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.spike = spike
    self.dtype = dtype
    c = config
    c0, c1, c2 = c.embed_dims
    s = c.strides
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def conv_blocks(dim, n):
      return nnx.List([LargeConvBlock(dim, spike, mlp_ratio=c.mlp_ratio, **kw)
                       for _ in range(n)])

    self.downsample1_1 = DownSampling(c.in_channels, c0 // 2, spike, kernel_size=7,
                                      stride=s[0], padding=3, first=True, **kw)
    self.conv_block1_1 = conv_blocks(c0 // 2, c.conv_depths[0])
    self.downsample1_2 = DownSampling(c0 // 2, c0, spike, stride=s[1], **kw)
    self.conv_block1_2 = conv_blocks(c0, c.conv_depths[1])
    self.downsample2 = DownSampling(c0, c1, spike, stride=s[2], **kw)
    self.conv_block2_1 = conv_blocks(c1, c.conv_depths[2] // 2 + c.conv_depths[2] % 2)
    self.conv_block2_2 = conv_blocks(c1, c.conv_depths[2] // 2)
    self.downsample3 = DownSampling(c1, c2, spike, stride=s[3], **kw)
    self.block3 = nnx.List([
        LargeBlock(c2, spike, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
                   rep_conv2=c.rep_conv2, layer_scale=c.layer_scale, drop_path=rate,
                   drop_path_per=c.drop_path_per, attn_scale=c.attn_scale,
                   rep_hidden_ratio=c.rep_hidden_ratio, **kw)
        for rate in c.drop_path_rates])

  def check_input(self, x) -> None:
    """Raises a ValueError naming what was expected (same rules as ``ESpikeFormer``)."""
    ESpikeFormer.check_input(self, x)

  def _merge_time(self, x):
    return ESpikeFormer._merge_time(self, x)

  def _time_mask(self, mask, batch: int, dtype) -> Array:
    """The active mask ``(B, h, w[, 1])`` repeated over T (time-major) -> ``(T*B, h, w, 1)``."""
    mask = jnp.asarray(mask)
    if mask.ndim == 4 and mask.shape[-1] == 1:
      mask = mask[..., 0]
    if mask.ndim != 3 or mask.shape[0] != batch:
      raise ValueError(f"mask must be the active map (B={batch}, h, w) or (B, h, w, 1) with "
                       f"1 = kept; got shape {tuple(mask.shape)}.")
    mask = mask.astype(dtype)
    return jnp.tile(mask, (self.spike.time_steps, 1, 1))[..., None]

  def forward_features(self, x, mask=None, *, return_stages: bool = False):
    """Images -> the token stream after ``block3``, ``(T*B, N, c2)``, ``N = h * w`` row-major.

    ``x``: NHWC images ``(B, H, W, C)`` (repeated over T) or frames ``(T, B, H, W, C)``.
    ``mask``: optional active map ``(B, h, w)`` (1 = kept), usually the 14x14 patch grid; the
    input is multiplied by its nearest upsampling and every conv-stage layer becomes sparse
    (spec §4.2). The transformer stage is never masked. With ``return_stages`` also returns
    ``{stage: output}``: NHWC maps for ``CONV_STAGES``, tokens for ``block3``.
    """
    self.check_input(x)
    x, batch = self._merge_time(x)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    m = None
    if mask is not None:
      m = self._time_mask(mask, batch, x.dtype)
      x = x * upsample_mask(m, x.shape[1], x.shape[2])
    stages = {}
    for name in CONV_STAGES:
      layer = getattr(self, name)
      if isinstance(layer, nnx.List):
        for blk in layer:
          x = run_block(blk, self.config.remat, x, m)
      else:
        x = layer(x, m)
      if return_stages:
        stages[name] = x
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    for blk in self.block3:
      x = run_block(blk, self.config.remat, x)
    if return_stages:
      stages["block3"] = x
      return x, stages
    return x

  def stage_features(self, x, mask=None) -> dict[str, Array]:
    """Per-stage outputs keyed by ``LARGE_STAGES``."""
    return self.forward_features(x, mask, return_stages=True)[1]

  SEG_TAPS = ("s2", "s4", "s8", "s16")    # the three-stage Semantic FPN's taps

  def tap_info(self, taps) -> dict[str, tuple[int, int]]:
    """``{tap: (stride, channels)}`` for ``taps`` (``FEATURE_TAPS``)."""
    unknown = [t for t in taps if t not in FEATURE_TAPS]
    if unknown:
      raise ValueError(f"unknown feature tap(s) {unknown} for a LARGE (spikformer) backbone; "
                       f"its taps are {list(FEATURE_TAPS)}.")
    c0, c1, c2 = self.config.embed_dims
    widths = (c0 // 2, c0, c1, c2)
    return {t: (math.prod(self.config.strides[:FEATURE_TAPS[t][1]]), widths[FEATURE_TAPS[t][2]])
            for t in taps}

  def features(self, x, taps=tuple(FEATURE_TAPS), mask=None) -> dict[str, Array]:
    """The real-valued residual stream at each of ``taps``, NHWC with the merged ``T * B``
    leading axis (``s16``: the tokens after ``block3`` on their ``(h, w)`` grid). The
    transformer stage is run only when ``s16`` is asked for."""
    self.tap_info(taps)
    if "s16" not in taps:
      stages = {}
      self.check_input(x)
      h, batch = self._merge_time(x)
      if self.dtype is not None:
        h = h.astype(self.dtype)
      m = None
      if mask is not None:
        m = self._time_mask(mask, batch, h.dtype)
        h = h * upsample_mask(m, h.shape[1], h.shape[2])
      last = max(CONV_STAGES.index(FEATURE_TAPS[t][0]) for t in taps)
      for name in CONV_STAGES[:last + 1]:
        layer = getattr(self, name)
        for blk in (layer if isinstance(layer, nnx.List) else [layer]):
          h = run_block(blk, self.config.remat, h, m) if isinstance(layer, nnx.List) \
              else blk(h, m)
        stages[name] = h
    else:
      _, stages = self.forward_features(x, mask, return_stages=True)
      n = stages["downsample3"].shape
      stages["block3"] = stages["block3"].reshape(n[0], n[1], n[2], -1)
    return {t: stages[FEATURE_TAPS[t][0]] for t in taps}


class Spikformer(SpikformerEncoder):
  """LARGE-FT ``Spikformer`` (spec §4.1): the encoder plus ``head`` (and ``head_kd``).

  Call with NHWC images. Returns logits ``(B, num_classes)`` averaged over T; with ``kd`` it
  returns ``(logits, logits_kd)`` in train mode and their mean in eval mode (``model.eval()``).
  Heads use xavier_uniform weights and zero bias (spec §8 trap 24).
  """

  def __init__(self, config: SpikformerConfig, spike: SpikeConfig = LARGE_SPIKE, *, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if not config.num_classes:
      raise ValueError("a Spikformer classifier needs num_classes >= 1; the headless LARGE "
                       "backbone is SpikformerEncoder.")
    super().__init__(config, spike, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    c2 = config.embed_dims[2]
    head_kw = dict(kernel_init=jax.nn.initializers.xavier_uniform(),
                   bias_init=jax.nn.initializers.zeros, dtype=dtype, param_dtype=param_dtype,
                   rngs=rngs)
    self.head = Linear(c2, config.num_classes, **head_kw)
    if config.kd:
      self.head_spike = make_neuron(spike, head=True)
      self.head_kd = Linear(c2, config.num_classes, **head_kw)
    self.deterministic = False  # train mode; model.eval() sets True

  def head_logits(self, x):
    """Mean over tokens -> ``head`` (non-spiked) [and ``head_kd`` on SN_norm1], mean over T."""
    T = self.spike.time_steps

    def time_mean(t):
      return jnp.mean(t.reshape((T, -1) + t.shape[1:]).astype(jnp.float32), axis=0)

    pooled = jnp.mean(x.astype(jnp.float32), axis=1).astype(x.dtype)
    logits = time_mean(self.head(pooled))
    if not self.config.kd:
      return logits
    logits_kd = time_mean(self.head_kd(self.head_spike(pooled)))
    if self.deterministic:
      return (logits + logits_kd) / 2
    return logits, logits_kd

  def __call__(self, x):
    return self.head_logits(self.forward_features(x))
