"""Spiking Semantic FPN (addendum B.3): a backbone's multi-scale taps -> QFPN -> QFPNHead.

The official ``SDT_V3/Segmentation`` model (mmseg 1.x): the E-SpikeFormer backbone with three
per-channel layer scales per transformer block (init 1e-6, trap 6) returning the taps
``(s2, s4, s8, s16b)`` (C.1; trap 8: block3 is skipped), the ``QFPN`` neck and the ``QFPNHead``
decode head. Every conv of the neck and head is fed by an SFA neuron (``MultiSpike_norm``:
integers 0..4 divided by 4, half-to-even); the top-down sums and the bilinear upsamplings are
real-valued (B.4). The same modules sit on a Meta-SpikeFormer (V2) backbone for Table III's
baseline rows.

Layout as everywhere: NHWC, the leading axis the merged ``T * B``. The logits are averaged over
``T`` at the head's resolution (stride 2 of the input), then resized bilinearly (half-pixel
centres, PyTorch's ``align_corners=False``) to the input's size: ``model(x)`` is
``(B, H, W, num_classes)``. ``model.decode(x)`` gives the head's own stride-2 logits.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from spikejax.models.espikeformer import ESpikeFormer
from spikejax.models.layers import BatchNorm, SpikeConfig, conv2d, make_neuron

Array = jax.Array

SEG_TAPS = ESpikeFormer.SEG_TAPS       # E-SpikeFormer and V2; each backbone names its own


def _conv(cin, cout, k, *, use_bias, init, dtype, param_dtype, rngs):
  """A conv with ``init``: ``'xavier'`` (uniform, zero bias: mmcv ``xavier_init``, the
  QFPN/QFPNHead convs) or ``'normal'`` (std 0.01, zero bias: mmseg's ``conv_seg``)."""
  if init == "xavier":
    kernel_init = jax.nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1)
  else:
    kernel_init = jax.nn.initializers.normal(0.01)
  return conv2d(cin, cout, k, padding=(k - 1) // 2, use_bias=use_bias, dtype=dtype,
                param_dtype=param_dtype, kernel_init=kernel_init,
                bias_init=jax.nn.initializers.zeros, rngs=rngs)


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
  """PyTorch ``F.interpolate(mode='nearest', size=size)`` on NHWC: source index
  ``floor(dst * in / out)``."""
  h, w = x.shape[1:3]
  rows = jnp.minimum((jnp.arange(size[0]) * h) // size[0], h - 1)
  cols = jnp.minimum((jnp.arange(size[1]) * w) // size[1], w - 1)
  return x[:, rows][:, :, cols]


def resize_bilinear(x: Array, size: tuple[int, int]) -> Array:
  """PyTorch ``F.interpolate(mode='bilinear', align_corners=False)`` on NHWC (half-pixel
  centres; no antialiasing, as PyTorch without ``antialias``)."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  out = jax.image.resize(x.astype(jnp.promote_types(x.dtype, jnp.float32)),
                         (x.shape[0], size[0], size[1], x.shape[3]), "bilinear",
                         antialias=False)
  return out.astype(x.dtype)


class ConvUnit(nnx.Module):
  """SN -> Conv(k) -> BN: one QFPN lateral/output conv or one QFPNHead unit (B.3)."""

  def __init__(self, cin, cout, k, spike: SpikeConfig, *, use_bias, dtype=None,
               param_dtype=jnp.float32, rngs):
    self.spike = make_neuron(spike)
    self.conv = _conv(cin, cout, k, use_bias=use_bias, init="xavier", dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)
    self.bn = BatchNorm(cout, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    return self.bn(self.conv(self.spike(x)))


class QFPN(nnx.Module):
  """``QFPN`` (B.3): ``lateral_i = BN(Conv1x1(SN(x_i)))`` (bias), top-down nearest upsample +
  add (real-valued), ``out_i = BN(Conv3x3(SN(lateral_i)))`` (bias); Xavier-uniform convs."""

  def __init__(self, in_channels: Sequence[int], out_channels: int, spike: SpikeConfig, *,
               dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.lateral_convs = nnx.List([ConvUnit(c, out_channels, 1, spike, **kw)
                                   for c in in_channels])
    self.fpn_convs = nnx.List([ConvUnit(out_channels, out_channels, 3, spike, **kw)
                               for _ in in_channels])

  def __call__(self, feats: Sequence[Array]) -> list[Array]:
    laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
    return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]


class QFPNHead(nnx.Module):
  """``QFPNHead`` (Semantic FPN, B.3): per level ``i`` a stack of ``max(1, log2(stride_i /
  stride_0))`` units ``[SN -> Conv3x3 (no bias) -> BN]``, each followed by a bilinear x2
  upsample on coarser levels; the level outputs summed at the finest map; ``out_spike`` (SN)
  -> ``conv_seg`` Conv1x1 (bias, normal(0.01) init). No dropout (it is commented out
  officially)."""

  def __init__(self, in_channels: int, channels: int, num_classes: int,
               strides: Sequence[int], spike: SpikeConfig, *, dtype=None,
               param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.strides = tuple(int(s) for s in strides)
    self.upsample = []
    stacks = []
    for i, s in enumerate(self.strides):
      ratio = s // self.strides[0]
      if ratio * self.strides[0] != s or ratio & (ratio - 1):
        raise ValueError(f"feature strides must be the finest one times powers of two, got "
                         f"{self.strides}.")
      n = max(1, ratio.bit_length() - 1)
      stacks.append(nnx.List([ConvUnit(in_channels if k == 0 else channels, channels, 3, spike,
                                       use_bias=False, **kw) for k in range(n)]))
      self.upsample.append(ratio > 1)
    self.scale_heads = nnx.List(stacks)
    self.upsample = tuple(self.upsample)
    self.out_spike = make_neuron(spike)
    self.conv_seg = _conv(channels, num_classes, 1, use_bias=True, init="normal", **kw)

  def __call__(self, feats: Sequence[Array]) -> Array:
    out = None
    for stack, up, x in zip(self.scale_heads, self.upsample, feats, strict=True):
      for unit in stack:
        x = unit(x)
        if up:
          x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
      out = x if out is None else out + resize_bilinear(x, out.shape[1:3])
    return self.conv_seg(self.out_spike(out))


@dataclasses.dataclass(frozen=True)
class SemanticFPNConfig:
  """The neck and head of a spiking Semantic FPN (B.3); the backbone is configured apart."""
  num_classes: int = 150
  taps: tuple[str, ...] | None = None    # None: the backbone's ``SEG_TAPS``
  neck_channels: int = 128
  head_channels: int = 128

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    if self.taps is not None and (len(self.taps) < 1 or len(set(self.taps)) != len(self.taps)):
      raise ValueError(f"taps must name distinct feature taps, got {self.taps}.")
    if min(self.neck_channels, self.head_channels) < 1:
      raise ValueError(f"neck_channels and head_channels must be >= 1, got "
                       f"{self.neck_channels}, {self.head_channels}.")


def head_spike_config(backbone_spike: SpikeConfig) -> SpikeConfig:
  """The neck/head neurons: the backbone's when it fires SFA integers (E-SpikeFormer); for a
  binary backbone (Meta-SpikeFormer's LIF) the official ``MultiSpike_norm`` (D = 4, Norm = 4,
  half-to-even, frames independent) at the backbone's ``T``."""
  if backbone_spike.firing == "sfa":
    return backbone_spike
  return SpikeConfig(time_steps=backbone_spike.time_steps, spike_max=4, norm=4.0,
                     rounding="half_even", window="closed", firing="sfa",
                     temporal="independent")


class SemanticFPN(nnx.Module):
  """Backbone (``num_classes=0``) + ``QFPN`` + ``QFPNHead`` (module docstring).

  ``backbone`` is an ``ESpikeFormer`` or ``MetaSpikformer`` without classification head; its
  parameters keep the classification model's names under ``backbone/`` (so a classification
  checkpoint or an official ImageNet state_dict loads by name, ``CHECKPOINT_PREFIX``).
  """

  CHECKPOINT_PREFIX = "backbone/"

  def __init__(self, backbone: nnx.Module, config: SemanticFPNConfig, *, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if getattr(backbone.config, "num_classes", 0):
      raise ValueError("the segmentation backbone must be built with num_classes=0.")
    self.backbone = backbone
    self.config = config
    self.spike = backbone.spike
    self.dtype = dtype
    self.head_spike_config = head_spike_config(backbone.spike)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.taps = tuple(backbone.SEG_TAPS if config.taps is None else config.taps)
    info = backbone.tap_info(self.taps)      # names checked by the backbone's family
    widths = {t: c for t, (_, c) in info.items()}
    strides = [info[t][0] for t in self.taps]
    self.strides = tuple(strides)      # of the taps (a tuple: the graph must stay hashable)
    if strides != sorted(strides):
      raise ValueError(f"taps must run from fine to coarse, got {self.taps} with strides "
                       f"{strides}.")
    self.neck = QFPN([widths[t] for t in self.taps], config.neck_channels,
                     self.head_spike_config, **kw)
    self.decode_head = QFPNHead(config.neck_channels, config.head_channels, config.num_classes,
                                strides,
                                self.head_spike_config, **kw)

  @property
  def output_stride(self) -> int:
    return self.strides[0]

  def check_input(self, x) -> None:
    self.backbone.check_input(x)

  def decode(self, x) -> Array:
    """Per-pixel logits at the head's resolution (the finest tap), averaged over ``T``:
    ``(B, H / stride, W / stride, num_classes)`` in float32."""
    feats = self.backbone.features(x, self.taps)
    logits = self.decode_head(self.neck([feats[t] for t in self.taps]))
    T = self.spike.time_steps
    return jnp.mean(logits.reshape((T, -1) + logits.shape[1:]).astype(jnp.float32), axis=0)

  def __call__(self, x) -> Array:
    """Per-pixel class logits ``(B, H, W, num_classes)`` (float32) for NHWC images ``x``."""
    size = x.shape[-3:-1]
    return resize_bilinear(self.decode(x), tuple(size))
