"""Layers with PyTorch semantics (padding, init, BatchNorm) and the spiking-neuron layer.

Images are NHWC. The leading axis of every activation is the merged ``T * B`` axis (time-major:
index ``t * B + b``); only spiking neurons with temporal dynamics unmerge it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from spikejax import spiking

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


# --------------------------------------------------------------------------- conv / linear


def conv2d(in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
           padding: int = 0, groups: int = 1, use_bias: bool = True, dtype=None,
           param_dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Module:
  """A 2-D conv with explicit symmetric padding (PyTorch semantics, spec §8 trap 17).

  A 1x1 stride-1 dense conv is built as ``nnx.Linear`` on the channel axis (same maths).
  """
  fan_in = in_features // groups * kernel_size * kernel_size
  if kernel_size == 1 and stride == 1 and groups == 1 and padding == 0:
    return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                      param_dtype=param_dtype, kernel_init=torch_kernel_init(),
                      bias_init=torch_bias_init(fan_in), rngs=rngs)
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=stride,
                  padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                  use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=torch_kernel_init(), bias_init=torch_bias_init(fan_in), rngs=rngs)


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
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      if mask is None:
        n = math.prod(x.shape[:-1])
        mean = jnp.mean(xf, axis=axes)
        var = jnp.mean(jnp.square(xf - mean), axis=axes)
      else:
        m = jnp.broadcast_to(mask.astype(jnp.float32), x.shape[:-1] + (1,))
        n = jnp.maximum(jnp.sum(m), 1.0)
        mean = jnp.sum(xf * m, axis=axes) / n
        var = jnp.sum(jnp.square(xf - mean) * m, axis=axes) / n
      unbiased = var * (n / jnp.maximum(n - 1, 1))
      mom = self.momentum
      self.mean[...] = (1 - mom) * self.mean[...] + mom * jax.lax.stop_gradient(mean)
      self.var[...] = (1 - mom) * self.var[...] + mom * jax.lax.stop_gradient(unbiased)
    inv = jax.lax.rsqrt(var + self.epsilon) * self.scale[...].astype(jnp.float32)
    y = (xf - mean) * inv + self.bias[...].astype(jnp.float32)
    if mask is not None:
      y = y * mask.astype(jnp.float32)
    return y.astype(out_dtype)


# --------------------------------------------------------------------------- spiking neuron

FiringMode = Literal["sfa", "binary"]
Temporal = Literal["independent", "if_soft", "if_hard", "lif_soft", "lif_hard"]
TEMPORAL_MODES = ("independent", "if_soft", "if_hard", "lif_soft", "lif_hard")


@dataclasses.dataclass(frozen=True)
class SpikeConfig:
  """How every spiking neuron (SN) of a model fires (spec §1, paper §4).

  Attributes:
    time_steps: T, the number of real timesteps (1 for static images with SFA).
    spike_max: D, the integer ceiling of SFA firing (= binary sub-steps at inference).
    norm: divisor after quantisation (default D; the DVS model uses 1). The head neuron
      always uses 1.
    rounding, window: SFA rounding rule and surrogate window (``spikejax.spiking.sfa_fire``).
    firing: ``'sfa'`` integer firing or ``'binary'`` Heaviside spikes with a surrogate
      gradient (vanilla direct training).
    temporal: dynamics between real timesteps: ``'independent'`` (per-frame, the official
      code), or IF/LIF with soft/hard reset with the membrane carried by ``lax.scan``.
    tau, threshold, v_reset, decay_input, detach_reset: LIF/IF parameters (binary firing
      uses ``threshold``; SFA's unit threshold is implicit in its integers).
    surrogate, surrogate_alpha: the surrogate of binary firing.
  """
  time_steps: int = 1
  spike_max: int = 4
  norm: float | None = None
  rounding: spiking.fire.Rounding = "half_even"
  window: spiking.fire.Window = "closed"
  firing: FiringMode = "sfa"
  temporal: Temporal = "independent"
  tau: float = 2.0
  threshold: float = 1.0
  v_reset: float = 0.0
  decay_input: bool = True
  detach_reset: bool = False
  surrogate: str = "sigmoid"
  surrogate_alpha: float = 4.0

  def __post_init__(self):
    if not isinstance(self.time_steps, int) or self.time_steps < 1:
      raise ValueError(f"time_steps (T) must be an integer >= 1, got {self.time_steps!r}.")
    if isinstance(self.spike_max, bool) or not isinstance(self.spike_max, int) \
        or self.spike_max < 1:
      raise ValueError(f"spike_max (D) must be an integer >= 1, got {self.spike_max!r}.")
    if self.rounding not in spiking.ROUNDINGS:
      raise ValueError(f"rounding must be one of {spiking.ROUNDINGS}, got {self.rounding!r}.")
    if self.window not in spiking.WINDOWS:
      raise ValueError(f"window must be one of {spiking.WINDOWS}, got {self.window!r}.")
    if self.firing not in ("sfa", "binary"):
      raise ValueError(f"firing must be 'sfa' or 'binary', got {self.firing!r}.")
    if self.temporal not in TEMPORAL_MODES:
      raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {self.temporal!r}.")
    spiking.get_surrogate(self.surrogate)

  @property
  def output_norm(self) -> float:
    if self.firing == "binary":
      return 1.0
    return float(self.spike_max if self.norm is None else self.norm)


class SpikeNeuron(nnx.Module):
  """The SN layer: elementwise, no parameters (spec §1).

  Input: the membrane potential with a leading merged ``T * B`` axis. Output: the spike
  value passed on (``S / norm``). With ``record=True`` the neuron sows small firing
  statistics (histogram of the counts 0..D and their sum) as ``nnx.Intermediate``.
  """

  def __init__(self, config: SpikeConfig, *, head: bool = False):
    self.config = config
    self.norm = 1.0 if head else config.output_norm
    self.record = False

  def counts(self, u: Array) -> Array:
    """The spike counts (integers for SFA, 0/1 for binary) for membrane input ``u``."""
    c = self.config
    if c.firing == "sfa":
      fire = spiking.sfa_fire_count(c.spike_max, c.rounding, c.window)
    else:
      kw = {"alpha": c.surrogate_alpha} if c.surrogate in ("sigmoid", "arctan") else {}
      fire = spiking.binary_fire(c.threshold, spiking.get_surrogate(c.surrogate, **kw))
    if c.temporal == "independent":
      return fire(u)
    T = c.time_steps
    if u.shape[0] % T:
      raise ValueError(f"leading axis {u.shape[0]} is not a multiple of time_steps={T}.")
    kind, reset = c.temporal.split("_")
    dyn = spiking.NeuronDynamics(
        tau=c.tau if kind == "lif" else None, reset=reset,
        threshold=c.threshold if c.firing == "binary" else 1.0, v_reset=c.v_reset,
        decay_input=c.decay_input, detach_reset=c.detach_reset)
    x_seq = u.reshape((T, u.shape[0] // T) + u.shape[1:])
    s, _ = spiking.multistep(x_seq, fire, dyn)
    return s.reshape(u.shape)

  def __call__(self, u: Array) -> Array:
    s = self.counts(u)
    if self.record:
      top = self.config.spike_max if self.config.firing == "sfa" else 1
      hist = jnp.stack([jnp.sum(s == k) for k in range(top + 1)]).astype(jnp.float32)
      self.sow(nnx.Intermediate, "spike_hist", hist)
    if self.norm == 1.0:
      return s
    return s / jnp.asarray(self.norm, s.dtype)
