"""Layers with PyTorch semantics (padding, init, BatchNorm) and the synapses.

Images are NHWC. The leading axis of every activation is the merged ``T * B`` axis (time-major:
index ``t * B + b``); only spiking neurons with temporal dynamics unmerge it.

``Conv`` and ``Linear`` are the synapses of every model: on arrays they are ``nnx.Conv`` /
``nnx.Linear``; fed a ``SpikeTrain`` (spike-driven execution, spec §1.4) they take the binary
sub-steps one by one with weights scaled by the train's ``1 / norm`` and no bias, sum the
sub-step currents on the membrane and add the bias once per real timestep.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from spikejax.spiking import record
from spikejax.spiking.neurons import (TEMPORAL_MODES, Neuron, SpikeConfig, make_neuron)
from spikejax.spiking.spike_train import SpikeTrain, is_train

Array = jax.Array

# --------------------------------------------------------------------------- init


def torch_kernel_init():
  """PyTorch's default conv/linear weight init, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""
  return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# --------------------------------------------------------------------------- synapses


def _train_current(layer, train: SpikeTrain, out_sharding=None):
  """Sub-step currents of ``layer`` for a binary train, summed, plus the bias once."""
  kernel = layer.kernel[...]
  bias = layer.bias[...] if layer.bias is not None else None
  layer.kernel[...] = kernel * jnp.asarray(train.scale, kernel.dtype)
  if bias is not None:
    layer.bias[...] = jnp.zeros_like(bias)
  try:   # a synapse is linear: one call over all D sub-steps (leading axis D)
    current = layer._apply(train.bits, out_sharding)
  finally:
    layer.kernel[...] = kernel
    if bias is not None:
      layer.bias[...] = bias
  u = jnp.sum(current, axis=0)
  return u if bias is None else u + bias.astype(u.dtype)


class _Synapse:
  """``__call__`` of the synapses: arrays as the parent class, spike trains sub-step by
  sub-step (``_train_current``); the op is recorded for energy accounting in both cases."""

  kind = "linear"

  def _apply(self, x, out_sharding=None):
    return super().__call__(x, out_sharding=out_sharding)

  def __call__(self, x, out_sharding=None):
    if is_train(x):
      y = _train_current(self, x, out_sharding)
    else:
      y = self._apply(x, out_sharding)
    record.synapse(self, self.kind, x, y.shape)
    return y


class Linear(_Synapse, nnx.Linear):
  """``nnx.Linear`` that also consumes spike trains (see the module docstring)."""
  kind = "linear"


class Conv(_Synapse, nnx.Conv):
  """``nnx.Conv`` that also consumes spike trains (see the module docstring)."""
  kind = "conv"


def linear(in_features: int, out_features: int, **kwargs) -> Linear:
  """A ``Linear`` synapse (``nnx.Linear`` arguments)."""
  return Linear(in_features, out_features, **kwargs)


# --------------------------------------------------------------------------- conv / linear


def conv2d(in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
           padding: int = 0, groups: int = 1, use_bias: bool = True, dtype=None,
           param_dtype=jnp.float32, kernel_init=None, bias_init=None,
           rngs: nnx.Rngs) -> nnx.Module:
  """A 2-D conv with explicit symmetric padding (PyTorch semantics, spec §8 trap 17).

  A 1x1 stride-1 dense conv is built as ``nnx.Linear`` on the channel axis (same maths).
  ``kernel_init`` / ``bias_init`` default to PyTorch's; a kernel init sees the shape
  ``(kh, kw, in, out)``, or ``(in, out)`` for the 1x1 ``Linear``.
  """
  fan_in = in_features // groups * kernel_size * kernel_size
  kernel_init = kernel_init or torch_kernel_init()
  bias_init = bias_init or torch_bias_init(fan_in)
  if kernel_size == 1 and stride == 1 and groups == 1 and padding == 0:
    return Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                      param_dtype=param_dtype, kernel_init=kernel_init,
                      bias_init=bias_init, rngs=rngs)
  extra = {}
  if groups > 1 and groups == in_features == out_features and stride == 1:
    extra["conv_general_dilated"] = depthwise_conv_general_dilated
  elif groups == 1 and kernel_size <= 3:
    extra["conv_general_dilated"] = dense_conv_general_dilated
  return Conv(in_features, out_features, (kernel_size, kernel_size), strides=stride,
                  padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                  use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=kernel_init, bias_init=bias_init, rngs=rngs, **extra)


# --------------------------------------------------------------------------- depthwise conv
#
# XLA:CPU lowers a grouped convolution to a dense one with a block-diagonal kernel (C times
# the work); its filter gradient likewise. A stride-1 depthwise conv is instead written as
# k*k shifted multiply-adds (one fused elementwise loop), with a custom VJP: the input
# gradient is the same shift-sum over the padded output gradient with the flipped kernel,
# and the kernel gradient is k*k reductions done over row chunks small enough to stay in
# cache (a scan over (batch, row block)).


def _shift_sum(xp: Array, w: Array, out_h: int, out_w: int) -> Array:
  """sum_{i,j} xp[:, i:i+out_h, j:j+out_w, :] * w[i, j, :] (taps accumulated row-major)."""
  kh, kw = w.shape[:2]
  out = None
  for i in range(kh):
    for j in range(kw):
      t = xp[:, i:i + out_h, j:j + out_w, :] * w[i, j]
      out = t if out is None else out + t
  return out


def _row_chunk(h: int, row_bytes: int, kh: int, budget: int = 1 << 18) -> int:
  """The largest divisor r of h whose (r + kh - 1) padded rows fit in ``budget`` bytes."""
  best = 1
  for r in range(1, h + 1):
    if h % r == 0 and (r + kh - 1) * row_bytes <= budget:
      best = r
  return best


def _depthwise_kernel_grad(xp: Array, g: Array, kh: int, kw: int) -> Array:
  """dk[i, j, c] = sum_{b,y,x} xp[b, y+i, x+j, c] * g[b, y, x, c], as (kh, kw, C) float32.

  A scan over chunks that stay in cache: row blocks of one image for large images, groups of
  whole images for small ones (one step per image would be thousands of tiny kernels).
  """
  b, h, w, c = g.shape
  acc_dtype = jnp.promote_types(g.dtype, jnp.float32)
  row_bytes = xp.shape[2] * c * xp.dtype.itemsize
  r = _row_chunk(h, row_bytes, kh)
  n = h // r
  group = 1
  if n == 1:  # whole images fit: take as many per step as the budget allows
    group = _row_chunk(b, (h + kh - 1) * row_bytes, 1)
  if n > 1:  # overlapping row windows: (b * n, r + kh - 1, wp, c)
    rows = jnp.arange(n)[:, None] * r + jnp.arange(r + kh - 1)[None]
    xw = xp[:, rows].reshape((b * n, r + kh - 1) + xp.shape[2:])
  else:
    xw = xp
  xw = xw.reshape((b * n // group, group) + xw.shape[1:])
  gw = g.reshape(b * n // group, group, r, w, c)

  def body(acc, xg):
    xs, gs = xg
    taps = [jnp.sum((xs[:, i:i + r, j:j + w] * gs).astype(acc_dtype), axis=(0, 1, 2))
            for i in range(kh) for j in range(kw)]
    return acc + jnp.stack(taps).reshape(kh, kw, c), None

  acc, _ = jax.lax.scan(body, jnp.zeros((kh, kw, c), acc_dtype), (xw, gw))
  return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x: Array, kernel: Array, padding: tuple[tuple[int, int], tuple[int, int]]):
  return _depthwise_fwd(x, kernel, padding)[0]


def _depthwise_fwd(x, kernel, padding):
  (pt, pb), (pl, pr) = padding
  kh, kw = kernel.shape[:2]
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  out_h, out_w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  return _shift_sum(xp, kernel[:, :, 0, :], out_h, out_w), (xp, kernel)


def _depthwise_bwd(padding, res, g):
  xp, kernel = res
  (pt, pb), (pl, pr) = padding
  kh, kw = kernel.shape[:2]
  h, w = xp.shape[1] - pt - pb, xp.shape[2] - pl - pr
  # out[y] = sum_i xp[y + i] k[i]  =>  dxp[y'] = sum_i g[y' - i] k[i]; keep rows pt..pt+h.
  gp = jnp.pad(g, ((0, 0), (kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr), (0, 0)))
  dx = _shift_sum(gp, kernel[::-1, ::-1, 0, :], h, w)
  dk = _depthwise_kernel_grad(xp, g, kh, kw).astype(kernel.dtype)[:, :, None, :]
  return dx.astype(xp.dtype), dk


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                   rhs_dilation=None, dimension_numbers=None,
                                   feature_group_count=1, precision=None, **kwargs):
  """``lax.conv_general_dilated`` with a fast path for stride-1 NHWC depthwise convs."""
  ones = (None, (1, 1), [1, 1])
  c = lhs.shape[-1]
  fast = (lhs.ndim == 4 and rhs.ndim == 4 and rhs.shape[2] == 1 and rhs.shape[3] == c
          and feature_group_count == c and tuple(window_strides) == (1, 1)
          and lhs_dilation in ones and rhs_dilation in ones
          and not isinstance(padding, str) and all(p >= 0 for pp in padding for p in pp)
          and all(p <= k - 1 for pp, k in zip(padding, rhs.shape[:2]) for p in pp)
          and dimension_numbers is not None
          and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
          and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
          and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2)
          and kwargs.get("preferred_element_type") is None
          and lhs.dtype == rhs.dtype)
  if not fast:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers,
                                        feature_group_count=feature_group_count,
                                        precision=precision, **kwargs)
  pad = tuple((int(a), int(b)) for a, b in padding)
  return _depthwise(lhs, rhs, pad)


# --------------------------------------------------------------------------- dense conv
#
# On XLA:CPU a small dense conv is often faster (and its gradients much faster) as an explicit
# im2col + one matmul: measured for channel-expanding 3x3 convs (Cin < Cout) with outputs of at
# most 16x16 pixels and for any conv with at most 2x2 output pixels; the rest stay on XLA's conv.


def _im2col_conv(x: Array, kernel: Array, strides, padding) -> Array:
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  out_h = (xp.shape[1] - kh) // sh + 1
  out_w = (xp.shape[2] - kw) // sw + 1
  cols = jnp.concatenate(
      [xp[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  y = cols.reshape(-1, kh * kw * cin) @ kernel.reshape(kh * kw * cin, cout)
  return y.reshape(x.shape[0], out_h, out_w, cout)


def dense_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                               rhs_dilation=None, dimension_numbers=None,
                               feature_group_count=1, precision=None, **kwargs):
  """``lax.conv_general_dilated``, as im2col + matmul for small NHWC convs where that is faster."""
  ones = (None, (1, 1), [1, 1])
  ok = (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
        and lhs_dilation in ones and rhs_dilation in ones and not isinstance(padding, str)
        and dimension_numbers is not None
        and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
        and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
        and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2)
        and kwargs.get("preferred_element_type") is None and lhs.dtype == rhs.dtype
        and rhs.shape[2] >= 8)
  if ok:
    kh, kw, cin, cout = rhs.shape
    out_h = (lhs.shape[1] + sum(padding[0]) - kh) // window_strides[0] + 1
    out_w = (lhs.shape[2] + sum(padding[1]) - kw) // window_strides[1] + 1
    ok = out_h * out_w <= 4 or (cin < cout and out_h * out_w <= 256)
  if not ok:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers,
                                        feature_group_count=feature_group_count,
                                        precision=precision, **kwargs)
  return _im2col_conv(lhs, rhs, tuple(window_strides),
                      tuple((int(a), int(b)) for a, b in padding))


# --------------------------------------------------------------------------- batch norm


class BatchNorm(nnx.Module):
  """BatchNorm over every axis but the last, with PyTorch semantics (spec §8 trap 19).

  Training normalises with the biased batch variance and updates ``var`` with the unbiased
  one; ``momentum`` is PyTorch's (0.1 weights the new batch). Statistics are computed in
  float32. With ``mask`` (broadcastable to ``x[..., :1]``, 1 = active) statistics use active
  positions only and masked outputs are exactly zero (SparK sparse BN, spec §4.2).
  """

  def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
               dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs
    self.num_features = num_features
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.use_running_average = False

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    out_dtype = self.dtype or x.dtype
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))   # float32, or float64 under x64
    axes = tuple(range(x.ndim - 1))
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      if mask is None:
        n = math.prod(x.shape[:-1])
        y, mean, var = _batch_norm_train(xf, self.scale[...].astype(xf.dtype),
                                         self.bias[...].astype(xf.dtype), self.epsilon)
        self._update_stats(mean, var, n)
        return y.astype(out_dtype)
      m = jnp.broadcast_to(mask.astype(jnp.float32), x.shape[:-1] + (1,))
      n = jnp.maximum(jnp.sum(m), 1.0)
      mean = jnp.sum(xf * m, axis=axes) / n
      var = jnp.sum(jnp.square(xf - mean) * m, axis=axes) / n
      self._update_stats(mean, var, n)
    y, _ = _normalize(xf, mean, var, self.scale[...].astype(xf.dtype),
                      self.bias[...].astype(xf.dtype), self.epsilon)
    if mask is not None:
      y = y * mask.astype(jnp.float32)
    return y.astype(out_dtype)

  def _update_stats(self, mean, var, n):
    """PyTorch's running statistics: biased ``var`` in, the unbiased one stored."""
    unbiased = var * (n / jnp.maximum(n - 1, 1))
    mom = self.momentum
    # set_value, not ``[...] =``: flax's indexed assignment reads ``value.sharding``, which on a
    # tracer raises an error whose message walks the whole traced graph (16 s of the 4-step
    # smoke run's 188 s under cProfile, tests/test_train.py).
    self.mean.set_value(((1 - mom) * self.mean[...] + mom * jax.lax.stop_gradient(mean))
                        .astype(self.mean.dtype))
    self.var.set_value(((1 - mom) * self.var[...] + mom * jax.lax.stop_gradient(unbiased))
                       .astype(self.var.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x, scale, bias, epsilon):
  """Training-mode batch norm over every axis but the last: ``(y, batch mean, biased var)``.

  The hand-written backward is the textbook one (two reductions and one elementwise pass);
  autodiff of the two-pass forward makes more passes over ``x``: the ``espikeformer_s`` train
  step at 224, batch 8, took 0.868 s against 0.903 s with autodiff (medians of 6, one process).
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _normalize(x, mean, var, scale, bias, epsilon):
  """``(x - mean) / sqrt(var + eps) * scale + bias`` and ``1 / sqrt(var + eps)``."""
  inv = jax.lax.rsqrt(var + epsilon)
  return (x - mean) * (inv * scale) + bias, inv


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  y, inv = _normalize(x, mean, var, scale, bias, epsilon)
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, res, cts):
  del epsilon
  x, mean, inv, scale = res
  gy, gmean, gvar = cts
  axes = tuple(range(x.ndim - 1))
  n = math.prod(x.shape[:-1])
  xc = x - mean
  dbias = jnp.sum(gy, axis=axes)
  dscale_hat = jnp.sum(gy * xc, axis=axes)          # = sum(gy * xhat) / inv
  dscale = dscale_hat * inv
  # dx = scale*inv*(gy - mean(gy) - xhat*mean(gy*xhat)) + dmean/n + dvar*2*xc/n
  k = scale * inv
  c2 = (2.0 / n) * gvar - k * inv * inv * dscale_hat / n
  dx = k * gy + xc * c2 + (gmean - k * dbias) / n
  return dx, dscale, dbias


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


# --------------------------------------------------------------------------- spiking neuron
#
# The neuron classes live in ``spikejax.spiking.neurons``; models build theirs from a
# ``SpikeConfig`` with ``make_neuron``. ``SpikeNeuron`` is their common base class.

SpikeNeuron = Neuron
FiringMode = str
Temporal = str
