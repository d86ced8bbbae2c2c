"""Spiking FPN and the Mask R-CNN heads of the paper's Table II detector (addendum B.1-B.2).

The official ``SDT_V3/Detection`` model (mmdet 3.x): the BASE E-SpikeFormer backbone (or the
Meta-SpikeFormer one) without classification head returning the taps ``(s4, s8, s16a, s16b)``
(C.1), the ``SpikeFPN`` neck and the spiking RPN, box and mask heads. Every conv and FC of the
neck and heads is fed by its own SFA neuron with **Norm 1** (integers 0..4 reach the synapse,
half-to-even, window [0, 4]: trap 3); the top-down sums, RoIAlign and the box head's
``fc_cls`` / ``fc_reg`` (which read the un-spiked FC output) are real-valued (B.4).

* ``SpikeFPN``: ``lateral_i = Conv1x1(SN(x_i))`` (bias), nearest top-down add,
  ``out_i = Conv3x3(SN(lateral_i))`` (bias), ``P6 = maxpool(k 1, s 2)(out_3)``; Xavier-uniform.
  ``fpn_eval_binary`` reproduces the registered official neuron, which clamps to [0, 1] in
  eval mode only (trap 2); the default clamps to 4 in both modes.
* ``SpikeRPNHead``: ``SN -> Conv3x3 -> SN -> {Conv1x1 -> A objectness, Conv1x1 -> 4A deltas}``
  on every level (shared weights); normal(0.01) init.
* ``SharedSpike2FCBBoxHead``: ``flatten(C*7*7) -> SN -> FC -> SN -> FC``, then ``fc_cls``
  (``num_classes + 1``) and class-specific ``fc_reg`` (``4 * num_classes``) on the un-spiked
  output.
* ``SpikeFCNMaskHead``: ``4 x [SN -> Conv3x3 + ReLU] -> SN -> ConvTranspose 2x2 s2 -> SN ->
  Conv1x1 (num_classes)``; the deconv and logits conv keep PyTorch's default init (trap 11).

Layout: NHWC with the merged ``T * B`` leading axis (RoI features: ``T * R``); the heads
average their outputs over ``T``. ``level_strides`` says which strides the anchors and RoIAlign
are told: ``'official'`` declares [4, 8, 16, 32] (+ 64 for P6) on maps of stride
[4, 8, 16, 16, 32] (trap 1, the default for parity), ``'true'`` the maps' own strides.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from spikejax.models.layers import SpikeConfig, conv2d, linear, make_neuron
from spikejax.models.layers import torch_bias_init, torch_kernel_init
from spikejax.models.segmentation import head_spike_config, resize_nearest
from spikejax.spiking import record
from spikejax.spiking.spike_train import is_train

Array = jax.Array

DET_TAPS = ("s4", "s8", "s16a", "s16b")   # E-SpikeFormer and V2 (addendum C.1)
LevelStrides = Literal["official", "true"]


def _xavier():
  return jax.nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1)


def _conv(cin, cout, k, *, kernel_init, bias_init=jax.nn.initializers.zeros, dtype,
          param_dtype, rngs):
  return conv2d(cin, cout, k, padding=(k - 1) // 2, use_bias=True, dtype=dtype,
                param_dtype=param_dtype, kernel_init=kernel_init, bias_init=bias_init,
                rngs=rngs)


class SpikeFPN(nnx.Module):
  """``SpikeFPN`` (B.2): lateral 1x1 and output 3x3 convs, each after an SFA neuron (Norm 1)."""

  def __init__(self, in_channels: Sequence[int], out_channels: int, spike: SpikeConfig, *,
               num_outs: int = 5, eval_binary: bool = False, dtype=None,
               param_dtype=jnp.float32, rngs):
    if num_outs < len(in_channels):
      raise ValueError(f"num_outs={num_outs} is fewer than the {len(in_channels)} input levels.")
    kw = dict(kernel_init=_xavier(), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.lateral_spikes = nnx.List([make_neuron(spike, head=True) for _ in in_channels])
    self.lateral_convs = nnx.List([_conv(c, out_channels, 1, **kw) for c in in_channels])
    self.fpn_spikes = nnx.List([make_neuron(spike, head=True) for _ in in_channels])
    self.fpn_convs = nnx.List([_conv(out_channels, out_channels, 3, **kw) for _ in in_channels])
    self.num_outs = num_outs
    self.eval_binary = eval_binary
    self.deterministic = False    # model.eval() sets True

  def _spike(self, neuron, x):
    s = neuron(x)
    if self.eval_binary and self.deterministic:   # the registered official FPN (trap 2)
      s = jnp.minimum(s, jnp.ones((), s.dtype))
    return s

  def __call__(self, feats: Sequence[Array]) -> list[Array]:
    laterals = [conv(self._spike(sn, x)) for sn, conv, x in
                zip(self.lateral_spikes, self.lateral_convs, feats, strict=True)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
    outs = [conv(self._spike(sn, x)) for sn, conv, x in
            zip(self.fpn_spikes, self.fpn_convs, laterals, strict=True)]
    while len(outs) < self.num_outs:        # max_pool2d(kernel 1, stride 2): every other pixel
      outs.append(outs[-1][:, ::2, ::2])
    return outs


class SpikeRPNHead(nnx.Module):
  """``SpikeRPNHead`` (B.2): shared over levels; ``(objectness (n, h, w, A), deltas (n, h, w,
  4A))`` per level, averaged over ``T``."""

  def __init__(self, channels: int, num_anchors: int, spike: SpikeConfig, *, dtype=None,
               param_dtype=jnp.float32, rngs):
    kw = dict(kernel_init=jax.nn.initializers.normal(0.01), dtype=dtype,
              param_dtype=param_dtype, rngs=rngs)
    self.time_steps = spike.time_steps
    self.conv_spike = make_neuron(spike, head=True)
    self.rpn_conv = _conv(channels, channels, 3, **kw)
    self.cls_spike = make_neuron(spike, head=True)
    self.rpn_cls = _conv(channels, num_anchors, 1, **kw)
    self.reg_spike = make_neuron(spike, head=True)
    self.rpn_reg = _conv(channels, 4 * num_anchors, 1, **kw)

  def __call__(self, feats: Sequence[Array]) -> list[tuple[Array, Array]]:
    out = []
    for x in feats:
      h = self.rpn_conv(self.conv_spike(x))
      out.append((time_mean(self.rpn_cls(self.cls_spike(h)), self.time_steps),
                  time_mean(self.rpn_reg(self.reg_spike(h)), self.time_steps)))
    return out


class SharedSpike2FCBBoxHead(nnx.Module):
  """``SharedSpike2FCBBoxHead`` (B.2) on RoI features ``(T*R, 7, 7, C)``: ``(class logits
  (R, num_classes + 1), class-specific deltas (R, 4 * num_classes))``."""

  def __init__(self, channels: int, roi_size: int, fc_channels: int, num_classes: int,
               spike: SpikeConfig, *, dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    flat = channels * roi_size * roi_size
    self.time_steps = spike.time_steps
    self.roi_size = roi_size
    self.fc1_spike = make_neuron(spike, head=True)
    self.shared_fc1 = linear(flat, fc_channels, kernel_init=_xavier(),
                             bias_init=jax.nn.initializers.zeros, **kw)
    self.fc2_spike = make_neuron(spike, head=True)
    self.shared_fc2 = linear(fc_channels, fc_channels, kernel_init=_xavier(),
                             bias_init=jax.nn.initializers.zeros, **kw)
    self.fc_cls = linear(fc_channels, num_classes + 1,
                         kernel_init=jax.nn.initializers.normal(0.01),
                         bias_init=jax.nn.initializers.zeros, **kw)
    self.fc_reg = linear(fc_channels, 4 * num_classes,
                         kernel_init=jax.nn.initializers.normal(0.001),
                         bias_init=jax.nn.initializers.zeros, **kw)

  def __call__(self, rois: Array) -> tuple[Array, Array]:
    # flatten in PyTorch's (C, h, w) order so the FC weights load from the official layout
    x = jnp.transpose(rois, (0, 3, 1, 2)).reshape(rois.shape[0], -1)
    x = self.shared_fc1(self.fc1_spike(x))
    x = self.shared_fc2(self.fc2_spike(x))
    return (time_mean(self.fc_cls(x), self.time_steps),
            time_mean(self.fc_reg(x), self.time_steps))


class ConvTranspose2x2(nnx.Module):
  """PyTorch ``ConvTranspose2d(k=2, s=2)``: each input pixel writes a 2x2 block
  ``out[2i + a, 2j + b] = x[i, j] @ W[a, b] + bias`` (kernel stored ``(2, 2, in, out)``);
  PyTorch's default init (kaiming_uniform(a=sqrt 5) over its fan_in = out * 2 * 2)."""

  def __init__(self, cin: int, cout: int, *, dtype=None, param_dtype=jnp.float32, rngs):
    fan_in = cout * 4    # PyTorch computes the transposed conv's fan from weight dim 1
    bound = 1.0 / math.sqrt(fan_in)
    self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (2, 2, cin, cout), param_dtype,
                                               -bound, bound))
    self.bias = nnx.Param(torch_bias_init(fan_in)(rngs.params(), (cout,), param_dtype))
    self.dtype = dtype

  def __call__(self, x) -> Array:
    """NHWC ``x`` (or a ``SpikeTrain``: its sub-steps' currents summed, spike-driven).

    One matmul ``(pixels, in) @ (in, 2 * 2 * out)`` and a pixel shuffle: XLA:CPU ran the
    equivalent 6-axis einsum 3.5x slower (forward + gradient, 256 RoIs of 14 x 14 x 32)."""
    kernel = self.kernel[...]
    cin, cout = kernel.shape[2:]
    taps = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin, 4 * cout)   # (in, (a, b, out))
    if is_train(x):
      dtype = self.dtype or x.bits.dtype
      w = taps.astype(dtype) * jnp.asarray(x.scale, dtype)
      y = jnp.sum(jnp.einsum("dnhwc,co->dnhwo", x.bits.astype(dtype), w), axis=0)
      shape = x.bits.shape[1:]
    else:
      dtype = self.dtype or x.dtype
      y = jnp.einsum("nhwc,co->nhwo", x.astype(dtype), taps.astype(dtype))
      shape = x.shape
    n, h, w_ = y.shape[:3]
    y = jnp.transpose(y.reshape(n, h, w_, 2, 2, cout), (0, 1, 3, 2, 4, 5))
    # each input pixel meets each of the 2 x 2 taps once: MACs = kernel size x input pixels
    record.synapse(self, "conv", x, shape[:-1] + (cout,))
    return y.reshape(n, 2 * h, 2 * w_, cout) + self.bias[...].astype(dtype)


class SpikeFCNMaskHead(nnx.Module):
  """``SpikeFCNMaskHead`` (B.2) on RoI features ``(T*R, 14, 14, C)``: mask logits
  ``(R, 28, 28, num_classes)`` averaged over ``T``."""

  def __init__(self, channels: int, num_convs: int, num_classes: int, spike: SpikeConfig, *,
               dtype=None, param_dtype=jnp.float32, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.time_steps = spike.time_steps
    # mmcv ConvModule with ReLU: kaiming normal, fan_out
    kaiming = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    self.conv_spikes = nnx.List([make_neuron(spike, head=True) for _ in range(num_convs)])
    self.convs = nnx.List([_conv(channels, channels, 3, kernel_init=kaiming, **kw)
                           for _ in range(num_convs)])
    self.upsample_spike = make_neuron(spike, head=True)
    self.upsample = ConvTranspose2x2(channels, channels, **kw)
    self.logits_spike = make_neuron(spike, head=True)
    self.conv_logits = conv2d(channels, num_classes, 1, use_bias=True,
                              kernel_init=torch_kernel_init(), **kw)   # trap 11: defaults

  def __call__(self, rois: Array) -> Array:
    x = rois
    for sn, conv in zip(self.conv_spikes, self.convs, strict=True):
      x = jax.nn.relu(conv(sn(x)))
    x = self.upsample(self.upsample_spike(x))
    return time_mean(self.conv_logits(self.logits_spike(x)), self.time_steps)


def time_mean(x: Array, time_steps: int) -> Array:
  """Mean over the ``T`` of a merged ``(T * n, ...)`` leading axis, in float32."""
  return jnp.mean(x.reshape((time_steps, -1) + x.shape[1:]).astype(jnp.float32), axis=0)


@dataclasses.dataclass(frozen=True)
class MaskRCNNConfig:
  """The neck and heads of the spiking Mask R-CNN (B.2); the backbone is configured apart.

  Attributes:
    num_classes: object classes (80 for COCO); the box classifier adds background.
    fpn_channels: the FPN / RPN / RoI width (256; 192 for the 10M config).
    fc_channels: the box head's shared FC width (1024; 768 for the 10M config).
    num_outs: FPN outputs (the four taps + max-pooled P6).
    roi_size, mask_roi_size: RoIAlign output sizes for the box and mask heads.
    anchor_ratios, anchor_scale: RPN anchors per location (ratios 0.5 / 1 / 2, scale 8).
    mask_convs: the mask head's 3x3 convs.
    level_strides: ``'official'`` (trap 1) or ``'true'``.
    fpn_eval_binary: the registered official FPN neuron's eval-time clamp to [0, 1] (trap 2).
  """
  num_classes: int = 80
  fpn_channels: int = 256
  fc_channels: int = 1024
  num_outs: int = 5
  roi_size: int = 7
  mask_roi_size: int = 14
  anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
  anchor_scale: float = 8.0
  mask_convs: int = 4
  level_strides: LevelStrides = "official"
  fpn_eval_binary: bool = False

  def __post_init__(self):
    for name in ("num_classes", "fpn_channels", "fc_channels", "roi_size", "mask_roi_size"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}.")
    if self.num_outs < 4:
      raise ValueError(f"num_outs must be >= 4 (the four taps), got {self.num_outs}.")
    if not self.anchor_ratios or any(r <= 0 for r in self.anchor_ratios):
      raise ValueError(f"anchor_ratios must be positive, got {self.anchor_ratios}.")
    if self.level_strides not in ("official", "true"):
      raise ValueError(f"level_strides must be 'official' (trap 1, parity) or 'true', got "
                       f"{self.level_strides!r}.")
    if self.mask_convs < 0:
      raise ValueError(f"mask_convs must be >= 0, got {self.mask_convs}.")


class MaskRCNN(nnx.Module):
  """Backbone (``num_classes=0``) + ``SpikeFPN`` + RPN, box and mask heads (B.1-B.2).

  The backbone keeps the classification model's parameter names under ``backbone/``.
  ``pyramid(x)`` gives the FPN levels; ``rpn(levels)`` the per-level objectness and deltas;
  ``bbox_head`` / ``mask_head`` run on RoIAlign outputs. ``strides`` are the levels' true
  strides, ``declared_strides`` what anchors and RoIAlign use (``level_strides``).
  """

  CHECKPOINT_PREFIX = "backbone/"

  def __init__(self, backbone: nnx.Module, config: MaskRCNNConfig, *, dtype=None,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    if getattr(backbone.config, "num_classes", 0):
      raise ValueError("the detection backbone must be built with num_classes=0.")
    self.backbone = backbone
    self.config = config
    self.spike = backbone.spike
    self.head_spike_config = head_spike_config(backbone.spike)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    info = backbone.tap_info(DET_TAPS)
    taps = [info[t][0] for t in DET_TAPS]
    self.strides = tuple(taps + [taps[-1] * 2 ** k for k in range(1, config.num_outs - 3)])
    declared = [4 * 2 ** k for k in range(config.num_outs)]
    self.declared_strides = self.strides if config.level_strides == "true" else tuple(declared)
    c, sp = config.fpn_channels, self.head_spike_config
    self.neck = SpikeFPN([info[t][1] for t in DET_TAPS], c, sp, num_outs=config.num_outs,
                         eval_binary=config.fpn_eval_binary, **kw)
    self.rpn_head = SpikeRPNHead(c, len(config.anchor_ratios), sp, **kw)
    self.bbox_head = SharedSpike2FCBBoxHead(c, config.roi_size, config.fc_channels,
                                            config.num_classes, sp, **kw)
    self.mask_head = SpikeFCNMaskHead(c, config.mask_convs, config.num_classes, sp, **kw)

  def check_input(self, x) -> None:
    self.backbone.check_input(x)

  def pyramid(self, x) -> list[Array]:
    """The FPN levels P2..P6 (NHWC, merged ``T * B``) for NHWC images ``x``."""
    feats = self.backbone.features(x, DET_TAPS)
    return self.neck([feats[t] for t in DET_TAPS])

  def rpn(self, levels: Sequence[Array]) -> list[tuple[Array, Array]]:
    return self.rpn_head(levels)

  def __call__(self, x):
    """The dense outputs: ``(levels, rpn)``; proposals, RoIs and the heads come after."""
    levels = self.pyramid(x)
    return levels, self.rpn(levels)

  def predict(self, x, image_hw=None, test=None):
    """Fixed-size detections (``spikejax.models.maskrcnn.predict``; ``test``: a
    ``MaskRCNNTestConfig``, default mmdet's test settings): what inference, spike-driven runs,
    firing statistics and energy evaluate."""
    from spikejax.models import maskrcnn   # pylint: disable=import-outside-toplevel
    return maskrcnn.predict(self, x, image_hw, test or maskrcnn.MaskRCNNTestConfig())

  def loss(self, batch, key, train=None, mask_stride: int = 1):
    """``(total, parts)``: the training losses of a detection batch (``maskrcnn.losses``)."""
    from spikejax.models import maskrcnn   # pylint: disable=import-outside-toplevel
    return maskrcnn.losses(self, batch, key, train or maskrcnn.MaskRCNNTrainConfig(),
                           mask_stride)

