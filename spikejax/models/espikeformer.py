"""E-SpikeFormer, exactly as the official base models (spec §2; official ``Model_Base/models.py``).

Layout: NHWC images; every activation carries a leading merged ``T * B`` axis. Module and
attribute names follow the official state_dict (spec §9.1) so checkpoint conversion is a
rename: ``ConvBlock1_1.0.Conv.pwconv1.0.weight`` <-> ``conv_block1_1/0/sep_conv/pwconv1/conv/kernel``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from spikejax.models.layers import BatchNorm, Linear, SpikeConfig, conv2d, make_neuron
from spikejax.spiking.spike_train import is_train
from spikejax.spiking.synapse import spike_einsum

Array = jax.Array


class ConvBN(nnx.Module):
  """Conv (no bias unless asked) followed by BatchNorm: official ``nn.Sequential(conv, bn)``."""

  def __init__(self, cin, cout, kernel_size=1, *, stride=1, padding=0, groups=1,
               use_bias=False, dtype=None, param_dtype=jnp.float32, rngs):
    self.conv = conv2d(cin, cout, kernel_size, stride=stride, padding=padding, groups=groups,
                       use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn = BatchNorm(cout, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    return self.bn(self.conv(x))


class SpikeSepConv(nnx.Module):
  """SN -> PW(d->2d)+BN -> SN -> DW kxk+BN -> SN -> PW(2d->d)+BN (spec §2.1, ``SepConv_Spike``)."""

  def __init__(self, dim, kernel_size, spike: SpikeConfig, *, dtype=None,
               param_dtype=jnp.float32, rngs):
    mid = 2 * dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.spike1 = make_neuron(spike)
    self.pwconv1 = ConvBN(dim, mid, 1, **kw)
    self.spike2 = make_neuron(spike)
    self.dwconv = ConvBN(mid, mid, kernel_size, padding=(kernel_size - 1) // 2, groups=mid, **kw)
    self.spike3 = make_neuron(spike)
    self.pwconv2 = ConvBN(mid, dim, 1, **kw)

  def __call__(self, x):
    x = self.pwconv1(self.spike1(x))
    x = self.dwconv(self.spike2(x))
    return self.pwconv2(self.spike3(x))


class ConvBlock(nnx.Module):
  """Conv-based block (``MS_ConvBlock_spike_SepConv``, spec §2.1), mlp_ratio 4."""

  def __init__(self, dim, spike: SpikeConfig, *, mlp_ratio=4, dtype=None,
               param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    hidden = int(dim * mlp_ratio)
    self.sep_conv = SpikeSepConv(dim, 7, spike, **kw)
    self.spike1 = make_neuron(spike)
    self.conv1 = conv2d(dim, hidden, 3, padding=1, use_bias=False, **kw)
    self.bn1 = BatchNorm(hidden, dtype=dtype, param_dtype=param_dtype)
    self.spike2 = make_neuron(spike)
    self.conv2 = conv2d(hidden, dim, 3, padding=1, use_bias=False, **kw)
    self.bn2 = BatchNorm(dim, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    x = x + self.sep_conv(x)
    y = self.bn1(self.conv1(self.spike1(x)))
    y = self.bn2(self.conv2(self.spike2(y)))
    return x + y


class Attention(nnx.Module):
  """E-SDSA (``MS_Attention_linear``, spec §2.1): softmax-free, (Q K^T) V, scale 2/sqrt(d_head)."""

  def __init__(self, dim, spike: SpikeConfig, *, num_heads=8, v_ratio=4, dtype=None,
               param_dtype=jnp.float32, rngs):
    if dim % num_heads:
      raise ValueError(f"attention dim {dim} is not divisible by num_heads={num_heads}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_heads = num_heads
    self.scale = 2.0 * (dim // num_heads) ** -0.5
    self.head_spike = make_neuron(spike)
    self.q_conv = ConvBN(dim, dim, **kw)
    self.q_spike = make_neuron(spike)
    self.k_conv = ConvBN(dim, dim, **kw)
    self.k_spike = make_neuron(spike)
    self.v_conv = ConvBN(dim, dim * v_ratio, **kw)
    self.v_spike = make_neuron(spike)
    self.attn_spike = make_neuron(spike)
    self.proj_conv = ConvBN(dim * v_ratio, dim, **kw)

  def _kv_first_is_exact(self, q, k, v) -> bool:
    """Whether Q (K^T V) equals (Q K^T) V bit for bit, so the cheaper order may be used.

    Spikes are integers 0..D divided by a power-of-two norm, so every product and partial
    sum of either order is an integer multiple of 1/(norm^3) bounded by N * d_k * D^3; in
    float32 all of them are exact (order-independent) while that bound stays below 2^24.
    """
    spikes = (self.q_spike, self.k_spike, self.v_spike)
    if any(is_train(t) or t.dtype != jnp.float32 for t in (q, k, v)):
      return False
    d = 1
    for sn in spikes:
      top = sn.top
      norm = float(sn.norm)
      if norm <= 0 or not norm.is_integer() or int(norm) & (int(norm) - 1):
        return False  # the norm must be a power of two (exact division)
      d = max(d, top)
    n, dk, dv = q.shape[2], q.shape[3], v.shape[3]
    cost_qk_first = n * n * (dk + dv)
    cost_kv_first = 2 * n * dk * dv
    return cost_kv_first < cost_qk_first and n * dk * d ** 3 < 2 ** 24

  def __call__(self, x):
    n, h, w, _ = x.shape
    z = self.head_spike(x)
    q = self.q_spike(self.q_conv(z))
    k = self.k_spike(self.k_conv(z))
    v = self.v_spike(self.v_conv(z))

    def heads(t):  # (n, h, w, C) -> (n, heads, N, C/heads); channel = head * C/heads + j
      return t.reshape(n, h * w, self.num_heads, -1).transpose(0, 2, 1, 3)

    q, k, v = heads(q), heads(k), heads(v)
    if self._kv_first_is_exact(q, k, v):
      # Q (K^T V): the same numbers as (Q K^T) V (see ``_kv_first_is_exact``), far fewer flops.
      o = jnp.einsum("bhnc,bhcd->bhnd", q, jnp.einsum("bhmc,bhmd->bhcd", k, v))
    else:
      # Q K^T first, as the official code; spike trains (spike-driven mode) multiply over
      # their D x D sub-step pairs (spec §1.4)
      attn = spike_einsum("bhnc,bhmc->bhnm", q, k, op=self, name="qk")
      o = spike_einsum("bhnm,bhmc->bhnc", attn, v, op=self, name="av")
    o = o * jnp.asarray(self.scale, v.dtype)
    o = o.transpose(0, 2, 1, 3).reshape(n, h, w, -1)
    return self.proj_conv(self.attn_spike(o))


class MLP(nnx.Module):
  """``MS_MLP`` (spec §2.1): SN -> Conv1d(d->4d, bias) -> BN1d -> SN -> Conv1d(4d->d, bias) -> BN1d."""

  def __init__(self, dim, spike: SpikeConfig, *, mlp_ratio=4, dtype=None,
               param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    hidden = int(dim * mlp_ratio)
    self.fc1_spike = make_neuron(spike)
    self.fc1_conv = conv2d(dim, hidden, 1, use_bias=True, **kw)
    self.fc1_bn = BatchNorm(hidden, dtype=dtype, param_dtype=param_dtype)
    self.fc2_spike = make_neuron(spike)
    self.fc2_conv = conv2d(hidden, dim, 1, use_bias=True, **kw)
    self.fc2_bn = BatchNorm(dim, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    x = self.fc1_bn(self.fc1_conv(self.fc1_spike(x)))
    return self.fc2_bn(self.fc2_conv(self.fc2_spike(x)))


class TransformerBlock(nnx.Module):
  """Transformer-based block (``MS_Block_Spike_SepConv``, spec §2.1), optional layer scales (DVS)."""

  def __init__(self, dim, spike: SpikeConfig, *, num_heads=8, mlp_ratio=4, v_ratio=4,
               layer_scale: float | None = None, dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.sep_conv = SpikeSepConv(dim, 3, spike, **kw)
    self.attn = Attention(dim, spike, num_heads=num_heads, v_ratio=v_ratio, **kw)
    self.mlp = MLP(dim, spike, mlp_ratio=mlp_ratio, **kw)
    if layer_scale is not None:
      # three separate buffers: one array shared by several Params would be donated twice by
      # the jitted train step (an error on one device, memory corruption on a sharded mesh)
      self.layer_scale1 = nnx.Param(jnp.full((dim,), layer_scale, param_dtype))
      self.layer_scale2 = nnx.Param(jnp.full((dim,), layer_scale, param_dtype))
      self.layer_scale3 = nnx.Param(jnp.full((dim,), layer_scale, param_dtype))
    self.has_layer_scale = layer_scale is not None

  def __call__(self, x):
    if self.has_layer_scale:
      x = x + self.sep_conv(x) * self.layer_scale1[...]
      x = x + self.attn(x) * self.layer_scale2[...]
      return x + self.mlp(x) * self.layer_scale3[...]
    x = x + self.sep_conv(x)
    x = x + self.attn(x)
    return x + self.mlp(x)


class DownSampling(nnx.Module):
  """[SN] -> Conv(k, s, p, bias) -> BN (spec §2.1); the stem has no SN."""

  def __init__(self, cin, cout, spike: SpikeConfig, *, kernel_size=3, stride=2, padding=1,
               first=False, dtype=None, param_dtype=jnp.float32, rngs):
    self.encode_spike = None if first else make_neuron(spike)
    self.encode_conv = conv2d(cin, cout, kernel_size, stride=stride, padding=padding,
                              use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.encode_bn = BatchNorm(cout, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    if self.encode_spike is not None:
      x = self.encode_spike(x)
    return self.encode_bn(self.encode_conv(x))


def check_image_input(x, *, in_channels: int, time_steps: int) -> None:
  """Raises a ValueError naming what was expected if ``x`` is neither NHWC images
  ``(B, H, W, C)`` nor time-major frames ``(T, B, H, W, C)`` with ``C = in_channels``."""
  T = time_steps
  shape = tuple(x.shape)
  if len(shape) not in (4, 5):
    raise ValueError(f"expected NHWC images (B, H, W, {in_channels}) or time-major frames "
                     f"(T={T}, B, H, W, {in_channels}); got an array of rank {len(shape)} "
                     f"with shape {shape}.")
  if len(shape) == 5 and shape[0] != T:
    raise ValueError(f"time-major input has {shape[0]} frames on axis 0 but the model was "
                     f"built with time_steps={T}; shape {shape}.")
  if shape[-1] != in_channels:
    hint = ""
    if shape[-3] == in_channels:
      hint = " It looks like NCHW: transpose to NHWC, e.g. x.transpose(0, 2, 3, 1)."
    raise ValueError(f"expected {in_channels} channels on the last axis (NHWC), got shape "
                     f"{shape}.{hint}")
  # Any resolution runs, as in PyTorch: each strided conv gives floor((h + 2p - k) / s) + 1
  # rows (28 px with strides (2, 2, 2, 1, 1): 14, 7, 4, 4, 4).


@dataclasses.dataclass(frozen=True)
class ESpikeFormerConfig:
  """Hyper-parameters of one E-SpikeFormer (spec §2.2, §3)."""
  embed_dims: tuple[int, int, int, int] = (32, 64, 128, 192)
  num_classes: int = 1000
  in_channels: int = 3
  num_heads: int = 8
  mlp_ratio: int = 4
  v_ratio: int = 4
  conv_depths: tuple[int, int, int] = (1, 1, 2)       # ConvBlock1_1, ConvBlock1_2, ConvBlock2_x
  block_depths: tuple[int, int] = (6, 2)               # block3, block4
  # strides of downsample1_1 (stem), downsample1_2, downsample2, downsample3, downsample4
  strides: tuple[int, int, int, int, int] = (2, 2, 2, 2, 1)
  layer_scale: float | None = None                     # DVS and segmentation variants: 1e-6
  head_init: str = "trunc_normal"                      # BASE: trunc_normal(0.02); DVS: torch default

  def __post_init__(self):
    if len(self.embed_dims) != 4 or any(d % 2 for d in self.embed_dims[:1]):
      raise ValueError(f"embed_dims must be 4 channel counts with an even first one, got "
                       f"{self.embed_dims}.")
    if len(self.strides) != 5 or any(s not in (1, 2) for s in self.strides):
      raise ValueError(f"strides must be 5 values in {{1, 2}} (downsample1_1, downsample1_2, "
                       f"downsample2, downsample3, downsample4), got {self.strides}.")
    check_head_and_channels(self.num_classes, self.in_channels)
    for d in self.embed_dims[2:]:
      if d % self.num_heads:
        raise ValueError(f"embed dim {d} is not divisible by num_heads={self.num_heads}.")

  @property
  def total_stride(self) -> int:
    return math.prod(self.strides)


def check_head_and_channels(num_classes, in_channels) -> None:
  """``num_classes`` >= 1, or 0 for a backbone without classifier; ``in_channels`` >= 1."""
  if num_classes < 0 or in_channels < 1:
    raise ValueError(f"num_classes must be >= 1 (or 0: a backbone without classification head) "
                     f"and in_channels >= 1, got {num_classes}, {in_channels}.")


STAGES = ("downsample1_1", "conv_block1_1", "downsample1_2", "conv_block1_2", "downsample2",
          "conv_block2_1", "conv_block2_2", "downsample3", "block3", "downsample4", "block4")

# Multi-scale taps of the dense-prediction backbones (addendum C.1): name -> the stage it is
# taken after, and how many of the five downsamplings precede it. With the official strides
# (2, 2, 2, 2, 1) the names are the strides. Segmentation uses (s2, s4, s8, s16b) (B.3),
# detection (s4, s8, s16a, s16b) (B.1).
FEATURE_TAPS = {"s2": ("conv_block1_1", 1), "s4": ("conv_block1_2", 2),
                "s8": ("conv_block2_2", 3), "s16a": ("block3", 4), "s16b": ("block4", 5)}


def tap_strides(strides, taps) -> dict[str, int]:
  """Input-to-tap stride of every tap in ``taps`` for the five downsampling ``strides``."""
  unknown = [t for t in taps if t not in FEATURE_TAPS]
  if unknown:
    raise ValueError(f"unknown feature tap(s) {unknown}; taps are {list(FEATURE_TAPS)}.")
  return {t: math.prod(strides[:FEATURE_TAPS[t][1]]) for t in taps}


def tap_channels(embed_dims, taps) -> dict[str, int]:
  """Channels of every tap in ``taps`` for ``embed_dims`` (c0/2, c0, c1, c2, c3)."""
  c0, c1, c2, c3 = embed_dims
  width = {"s2": c0 // 2, "s4": c0, "s8": c1, "s16a": c2, "s16b": c3}
  tap_strides((1,) * 5, taps)
  return {t: width[t] for t in taps}


class ESpikeFormer(nnx.Module):
  """``Spiking_vit_MetaFormer_Spike_SepConv`` (spec §2.2) with SFA neurons.

  Call with NHWC images ``(B, H, W, C)`` (repeated over ``T`` real timesteps, direct
  encoding) or time-major frames ``(T, B, H, W, C)``. Returns logits ``(B, num_classes)``,
  averaged over ``T``.
  """

  def __init__(self, config: ESpikeFormerConfig, spike: SpikeConfig = SpikeConfig(), *,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.spike = spike
    self.dtype = dtype
    c = config
    c0, c1, c2, c3 = c.embed_dims
    s = c.strides
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def conv_blocks(dim, n):
      return nnx.List([ConvBlock(dim, spike, mlp_ratio=c.mlp_ratio, **kw) for _ in range(n)])

    def blocks(dim, n):
      return nnx.List([TransformerBlock(dim, spike, num_heads=c.num_heads,
                                        mlp_ratio=c.mlp_ratio, v_ratio=c.v_ratio,
                                        layer_scale=c.layer_scale, **kw) for _ in range(n)])

    self.downsample1_1 = DownSampling(c.in_channels, c0 // 2, spike, kernel_size=7, stride=s[0],
                                      padding=3, first=True, **kw)
    self.conv_block1_1 = conv_blocks(c0 // 2, c.conv_depths[0])
    self.downsample1_2 = DownSampling(c0 // 2, c0, spike, stride=s[1], **kw)
    self.conv_block1_2 = conv_blocks(c0, c.conv_depths[1])
    self.downsample2 = DownSampling(c0, c1, spike, stride=s[2], **kw)
    self.conv_block2_1 = conv_blocks(c1, c.conv_depths[2] // 2 + c.conv_depths[2] % 2)
    self.conv_block2_2 = conv_blocks(c1, c.conv_depths[2] // 2)
    self.downsample3 = DownSampling(c1, c2, spike, stride=s[3], **kw)
    self.block3 = blocks(c2, c.block_depths[0])
    self.downsample4 = DownSampling(c2, c3, spike, stride=s[4], **kw)
    self.block4 = blocks(c3, c.block_depths[1])
    if not c.num_classes:   # a backbone (dense prediction): no classification head
      return
    self.head_spike = make_neuron(spike, head=True)
    if c.head_init == "trunc_normal":
      head_kernel = jax.nn.initializers.truncated_normal(0.02)
      head_bias = jax.nn.initializers.zeros
    else:
      from spikejax.models.layers import torch_bias_init, torch_kernel_init
      head_kernel, head_bias = torch_kernel_init(), torch_bias_init(c3)
    self.head = Linear(c3, c.num_classes, kernel_init=head_kernel, bias_init=head_bias,
                           dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  # ------------------------------------------------------------------ input checks
  def check_input(self, x) -> None:
    """Raises a ValueError naming what was expected if ``x`` cannot be fed to the model."""
    check_image_input(x, in_channels=self.config.in_channels, time_steps=self.spike.time_steps)

  def _merge_time(self, x):
    T = self.spike.time_steps
    if x.ndim == 4:  # direct encoding: repeat the image over T real timesteps
      x = jnp.broadcast_to(x[None], (T,) + x.shape)
    return x.reshape((-1,) + x.shape[2:]), x.shape[1]

  # ------------------------------------------------------------------ forward
  def _stages(self, x):
    """Checks and time-merges the input, then yields ``(stage name, output)`` per stage of
    ``STAGES`` (a caller may stop early)."""
    self.check_input(x)
    x, _ = self._merge_time(x)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    for name in STAGES:
      layer = getattr(self, name)
      if isinstance(layer, nnx.List):
        for blk in layer:
          x = blk(x)
      else:
        x = layer(x)
      yield name, x

  def forward_features(self, x, *, return_stages: bool = False):
    """The residual stream after block4, ``(T*B, h, w, c3)``; optionally every stage output."""
    stages = {}
    for name, x in self._stages(x):
      if return_stages:
        stages[name] = x
    return (x, stages) if return_stages else x

  def head_logits(self, x):
    """GAP over H, W -> SN (norm 1, integers) -> Linear; mean over T (spec §2.1 Head)."""
    T = self.spike.time_steps
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
    logits = self.head(self.head_spike(pooled))
    return jnp.mean(logits.reshape((T, -1) + logits.shape[1:]).astype(jnp.float32), axis=0)

  def __call__(self, x):
    if not self.config.num_classes:
      raise TypeError("this backbone was built with num_classes=0 (no classification head): "
                      "call model.features(x) for its multi-scale feature maps.")
    return self.head_logits(self.forward_features(x))

  def stage_features(self, x) -> dict[str, Array]:
    """Per-stage feature maps (NHWC, time-merged) keyed by ``STAGES`` names."""
    _, stages = self.forward_features(x, return_stages=True)
    return stages

  SEG_TAPS = ("s2", "s4", "s8", "s16b")   # the segmentation taps (B.3)

  def tap_info(self, taps) -> dict[str, tuple[int, int]]:
    """``{tap: (stride, channels)}`` for ``taps`` (``FEATURE_TAPS``; addendum C.1)."""
    strides = tap_strides(self.config.strides, taps)
    channels = tap_channels(self.config.embed_dims, taps)
    return {t: (strides[t], channels[t]) for t in taps}

  def features(self, x, taps=tuple(FEATURE_TAPS)) -> dict[str, Array]:
    """The real-valued residual stream at each of ``taps`` (``FEATURE_TAPS``; addendum C.1),
    NHWC with the merged ``T * B`` leading axis; stages past the deepest tap are not run."""
    tap_strides(self.config.strides, taps)
    wanted = {FEATURE_TAPS[t][0]: t for t in taps}
    out = {}
    for name, x in self._stages(x):
      if name in wanted:
        out[wanted[name]] = x
        if len(out) == len(wanted):
          break
    return {t: out[t] for t in taps}
