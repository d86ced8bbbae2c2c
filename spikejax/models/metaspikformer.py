"""Meta-SpikeFormer (Spike-driven Transformer V2), the baseline of the paper's Table V.

Exactly the official V2 ``classification/models.py`` (addendum A.1-A.4): the E-SpikeFormer
layout (``downsample1_1`` ... ``block4``, spec §2.2) with V2 blocks. The V2 neuron is the binary
multi-step LIF of the ``vanilla`` mode (tau 2, decay_input, hard reset to 0, detach_reset,
sigmoid surrogate alpha 4, ``>=``); ``firing='sfa'`` gives the paper's "+ SFA training" row,
the same architecture with SFA neurons and the V3 BASE attention conventions (addendum A.4).

Layout: NHWC images, a leading merged ``T * B`` axis (time-major), so every BatchNorm pools its
statistics over T and B as the official code does. Module names follow the official state_dict
(``spikejax.convert`` renames them; neurons are ``*spike*`` here, ``*lif*`` there).
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
from flax import nnx

from spikejax.models.espikeformer import (MLP, DownSampling, ESpikeFormer,
                                         check_head_and_channels)
from spikejax.models.layers import BatchNorm, Linear, SpikeConfig, conv2d, make_neuron
from spikejax.spiking.synapse import spike_einsum

Array = jax.Array

# The V2 neuron (addendum A.1): what ``SpikeConfig`` fields the registry sets for this family.
V2_SPIKE = dict(firing="binary", temporal="lif_hard", tau=2.0, threshold=1.0, v_reset=0.0,
                decay_input=True, detach_reset=True, surrogate="sigmoid", surrogate_alpha=4.0)


class BNAndPad(nnx.Module):
  """``BNAndPadLayer`` (addendum A.3): BN, then a 1 px frame of ``BN(0)``.

  The frame value ``beta - mean * gamma / sqrt(var + eps)`` uses the *running* statistics in
  train and eval (in train mode those just updated by this batch, as PyTorch reads them after
  the BN call) and detached ``gamma``/``beta``: no gradient reaches BN through the frame.
  """

  def __init__(self, num_features: int, *, pad: int = 1, dtype=None, param_dtype=jnp.float32):
    self.bn = BatchNorm(num_features, dtype=dtype, param_dtype=param_dtype)
    self.pad = pad

  def __call__(self, x):
    y = self.bn(x)
    if self.pad <= 0:
      return y
    bn = self.bn
    scale = jax.lax.stop_gradient(bn.scale[...]).astype(jnp.float32)
    bias = jax.lax.stop_gradient(bn.bias[...]).astype(jnp.float32)
    frame = bias - bn.mean[...] * scale / jnp.sqrt(bn.var[...] + bn.epsilon)
    p = self.pad
    out = jnp.broadcast_to(frame.astype(y.dtype),
                           (y.shape[0], y.shape[1] + 2 * p, y.shape[2] + 2 * p, y.shape[3]))
    return out.at[:, p:-p, p:-p, :].set(y)


class RepConv(nnx.Module):
  """``RepConv`` (addendum A.3): 1x1 -> BNAndPad -> 3x3 depthwise (pad 0) -> 1x1 -> BN.

  ``body`` mirrors the official ``nn.Sequential(conv1x1, bn, nn.Sequential(dw, pw, BN))``.
  """

  def __init__(self, cin: int, cout: int, *, dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.body = nnx.List([
        conv2d(cin, cin, 1, use_bias=False, **kw),
        BNAndPad(cin, dtype=dtype, param_dtype=param_dtype),
        nnx.List([conv2d(cin, cin, 3, padding=0, groups=cin, use_bias=False, **kw),
                  conv2d(cin, cout, 1, use_bias=False, **kw),
                  BatchNorm(cout, dtype=dtype, param_dtype=param_dtype)]),
    ])

  def __call__(self, x):
    conv1x1, bn_pad, (dw, pw, bn) = self.body
    return bn(pw(dw(bn_pad(conv1x1(x)))))


class RepConvBN(nnx.Module):
  """The attention's ``nn.Sequential(RepConv, BatchNorm2d)`` (one more BN after RepConv)."""

  def __init__(self, cin: int, cout: int, *, dtype=None, param_dtype=jnp.float32, rngs):
    self.conv = RepConv(cin, cout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.bn = BatchNorm(cout, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    return self.bn(self.conv(x))


class SepConvV2(nnx.Module):
  """V2 ``SepConv`` (addendum A.3): SN -> PW(d->2d) -> BN -> SN -> DW 7x7 -> PW(2d->d) -> BN.

  No BN or neuron between the depthwise and the second pointwise conv; all convs bias-free.
  """

  def __init__(self, dim: int, spike: SpikeConfig, *, kernel_size: int = 7, dtype=None,
               param_dtype=jnp.float32, rngs):
    mid = 2 * dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.spike1 = make_neuron(spike)
    self.pwconv1 = conv2d(dim, mid, 1, use_bias=False, **kw)
    self.bn1 = BatchNorm(mid, dtype=dtype, param_dtype=param_dtype)
    self.spike2 = make_neuron(spike)
    self.dwconv = conv2d(mid, mid, kernel_size, padding=(kernel_size - 1) // 2, groups=mid,
                         use_bias=False, **kw)
    self.pwconv2 = conv2d(mid, dim, 1, use_bias=False, **kw)
    self.bn2 = BatchNorm(dim, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    x = self.bn1(self.pwconv1(self.spike1(x)))
    return self.bn2(self.pwconv2(self.dwconv(self.spike2(x))))


class ConvBlockV2(nnx.Module):
  """``MS_ConvBlock`` (addendum A.3): ``x + SepConv(x)``, then ``+ BN(conv3x3(SN(BN(conv3x3(SN(x))))))``."""

  def __init__(self, dim: int, spike: SpikeConfig, *, mlp_ratio: int = 4, dtype=None,
               param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    hidden = dim * mlp_ratio
    self.sep_conv = SepConvV2(dim, spike, **kw)
    self.spike1 = make_neuron(spike)
    self.conv1 = conv2d(dim, hidden, 3, padding=1, use_bias=False, **kw)
    self.bn1 = BatchNorm(hidden, dtype=dtype, param_dtype=param_dtype)
    self.spike2 = make_neuron(spike)
    self.conv2 = conv2d(hidden, dim, 3, padding=1, use_bias=False, **kw)
    self.bn2 = BatchNorm(dim, dtype=dtype, param_dtype=param_dtype)

  def __call__(self, x):
    x = x + self.sep_conv(x)
    y = self.bn1(self.conv1(self.spike1(x)))
    return x + self.bn2(self.conv2(self.spike2(y)))


class AttentionV2(nnx.Module):
  """``MS_Attention_RepConv_qkv_id`` (addendum A.3): Q (K^T V) x scale, no softmax, V not expanded.

  Binary LIF (V2): scale 0.125 and an ``attn_spike`` threshold of 0.5. SFA neurons (the
  "+ SFA" row, V3 BASE's version of this block): scale ``(C / heads) ** -0.5`` and a plain
  ``attn_spike``. ``scale`` / ``attn_threshold`` override either.
  """

  def __init__(self, dim: int, spike: SpikeConfig, *, num_heads: int = 8,
               scale: float | None = None, attn_threshold: float | None = None, dtype=None,
               param_dtype=jnp.float32, rngs):
    if dim % num_heads:
      raise ValueError(f"attention dim {dim} is not divisible by num_heads={num_heads}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    binary = spike.firing == "binary"
    self.num_heads = num_heads
    if scale is None:
      scale = 0.125 if binary else (dim // num_heads) ** -0.5
    self.scale = float(scale)
    if attn_threshold is None and binary:
      attn_threshold = 0.5
    attn_spec = (spike if attn_threshold is None
                 else dataclasses.replace(spike, threshold=float(attn_threshold)))
    self.head_spike = make_neuron(spike)
    self.q_conv = RepConvBN(dim, dim, **kw)
    self.k_conv = RepConvBN(dim, dim, **kw)
    self.v_conv = RepConvBN(dim, dim, **kw)
    self.q_spike = make_neuron(spike)
    self.k_spike = make_neuron(spike)
    self.v_spike = make_neuron(spike)
    self.attn_spike = make_neuron(attn_spec)
    self.proj_conv = RepConvBN(dim, dim, **kw)

  def __call__(self, x):
    n, h, w, _ = x.shape
    z = self.head_spike(x)
    q = self.q_spike(self.q_conv(z))
    k = self.k_spike(self.k_conv(z))
    v = self.v_spike(self.v_conv(z))

    def heads(t):  # (n, h, w, C) -> (n, heads, N, C/heads); channel = head * C/heads + j
      return t.reshape(n, h * w, self.num_heads, -1).transpose(0, 2, 1, 3)

    q, k, v = heads(q), heads(k), heads(v)
    kv = spike_einsum("bhmc,bhmd->bhcd", k, v, op=self, name="kv")
    o = spike_einsum("bhnc,bhcd->bhnd", q, kv, op=self, name="qkv")
    o = o * jnp.asarray(self.scale, o.dtype)
    o = o.transpose(0, 2, 1, 3).reshape(n, h, w, -1)
    return self.proj_conv(self.attn_spike(o))


class BlockV2(nnx.Module):
  """``MS_Block`` (addendum A.3): ``x + Attn(x)``, ``x + MLP(x)``; no SepConv, no layer scale."""

  def __init__(self, dim: int, spike: SpikeConfig, *, num_heads: int = 8, mlp_ratio: int = 4,
               attn_scale: float | None = None, attn_threshold: float | None = None,
               dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn = AttentionV2(dim, spike, num_heads=num_heads, scale=attn_scale,
                            attn_threshold=attn_threshold, **kw)
    self.mlp = MLP(dim, spike, mlp_ratio=mlp_ratio, **kw)

  def __call__(self, x):
    x = x + self.attn(x)
    return x + self.mlp(x)


@dataclasses.dataclass(frozen=True)
class MetaSpikformerConfig:
  """Hyper-parameters of one Meta-SpikeFormer (addendum A.3-A.4)."""
  embed_dims: tuple[int, int, int, int] = (64, 128, 256, 360)
  num_classes: int = 1000
  in_channels: int = 3
  num_heads: int = 8
  mlp_ratio: int = 4
  conv_depths: tuple[int, int, int] = (1, 1, 2)       # ConvBlock1_1, ConvBlock1_2, ConvBlock2_x
  block_depths: tuple[int, int] = (6, 2)               # block3, block4
  # strides of downsample1_1 (stem), downsample1_2, downsample2, downsample3, downsample4
  strides: tuple[int, int, int, int, int] = (2, 2, 2, 2, 1)
  kd: bool = False                                     # a second head ``head_kd`` (stage 2)
  attn_scale: float | None = None                      # None: by neuron (0.125 for LIF)
  attn_threshold: float | None = None                  # None: by neuron (0.5 for LIF)

  def __post_init__(self):
    if len(self.embed_dims) != 4 or self.embed_dims[0] % 2:
      raise ValueError(f"embed_dims must be 4 channel counts with an even first one, got "
                       f"{self.embed_dims}.")
    if len(self.strides) != 5 or any(s not in (1, 2) for s in self.strides):
      raise ValueError(f"strides must be 5 values in {{1, 2}} (downsample1_1, downsample1_2, "
                       f"downsample2, downsample3, downsample4), got {self.strides}.")
    check_head_and_channels(self.num_classes, self.in_channels)
    if not isinstance(self.kd, bool):
      raise ValueError(f"kd must be a boolean, got {self.kd!r}.")
    for d in self.embed_dims[2:]:
      if d % self.num_heads:
        raise ValueError(f"embed dim {d} is not divisible by num_heads={self.num_heads}.")


class MetaSpikformer(nnx.Module):
  """``Spiking_vit_MetaFormer`` (V2): NHWC images ``(B, H, W, C)`` repeated over ``T`` (or
  time-major frames ``(T, B, H, W, C)``) -> logits ``(B, num_classes)``, the mean over ``T``.

  With ``kd`` the train-mode output is ``(logits, logits_kd)`` and the eval-mode output their
  average (addendum A.2), as the LARGE ``Spikformer``.
  """

  def __init__(self, config: MetaSpikformerConfig, spike: SpikeConfig = SpikeConfig(**V2_SPIKE),
               *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.spike = spike
    self.dtype = dtype
    c = config
    c0, c1, c2, c3 = c.embed_dims
    s = c.strides
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def conv_blocks(dim, n):
      return nnx.List([ConvBlockV2(dim, spike, mlp_ratio=c.mlp_ratio, **kw) for _ in range(n)])

    def blocks(dim, n):
      return nnx.List([BlockV2(dim, spike, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
                               attn_scale=c.attn_scale, attn_threshold=c.attn_threshold, **kw)
                       for _ in range(n)])

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
    self.deterministic = False  # train mode; model.eval() sets True
    if not c.num_classes:   # a backbone (dense prediction): no classification head
      return
    self.head_spike = make_neuron(spike, head=True)
    head_kw = dict(kernel_init=jax.nn.initializers.truncated_normal(0.02),
                   bias_init=jax.nn.initializers.zeros, dtype=dtype, param_dtype=param_dtype,
                   rngs=rngs)
    self.head = Linear(c3, c.num_classes, **head_kw)
    if c.kd:
      self.head_kd = Linear(c3, c.num_classes, **head_kw)

  # The same stage layout, input handling and stage outputs as E-SpikeFormer (spec §2.2): its
  # methods, not copies (they read only config.in_channels, spike.time_steps, dtype, STAGES).
  check_input = ESpikeFormer.check_input
  _merge_time = ESpikeFormer._merge_time
  _stages = ESpikeFormer._stages
  forward_features = ESpikeFormer.forward_features
  stage_features = ESpikeFormer.stage_features
  features = ESpikeFormer.features
  tap_info = ESpikeFormer.tap_info
  SEG_TAPS = ESpikeFormer.SEG_TAPS

  def head_logits(self, x):
    """Mean over H, W -> SN -> ``head`` [and ``head_kd``] -> mean over T (addendum A.2)."""
    T = self.spike.time_steps

    def time_mean(t):
      return jnp.mean(t.reshape((T, -1) + t.shape[1:]).astype(jnp.float32), axis=0)

    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
    spikes = self.head_spike(pooled)
    logits = time_mean(self.head(spikes))
    if not self.config.kd:
      return logits
    logits_kd = time_mean(self.head_kd(spikes))
    if self.deterministic:
      return (logits + logits_kd) / 2
    return logits, logits_kd

  __call__ = ESpikeFormer.__call__
