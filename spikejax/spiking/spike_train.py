"""Integer activations <-> binary spike trains (spec §1.4, paper Proposition 1).

One real timestep of an SFA neuron expands into ``D`` (``spike_max``) binary sub-steps.
The IF soft-reset neuron with threshold 1, no leak, and the input ``u + 0.5`` injected
only at the first sub-step fires on the first ``S`` sub-steps and is silent after, with
``S = floor(clip(u, 0, D) + 0.5)``: the integer of ``sfa_count(..., rounding='half_up')``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def expand_spike_train(counts: jax.Array, spike_max: int, axis: int = 0) -> jax.Array:
  """Integer counts ``S`` in ``{0..D}`` -> front-loaded binary train with ``D`` sub-steps.

  Sub-step ``d`` (1-based) fires iff ``S >= d``. The new sub-step axis is inserted at
  ``axis`` of the result.
  """
  d = jnp.arange(1, spike_max + 1, dtype=counts.dtype)
  d = d.reshape((spike_max,) + (1,) * counts.ndim)
  train = (counts[None] >= d).astype(counts.dtype)
  return jnp.moveaxis(train, 0, axis)


def collapse_spike_train(train: jax.Array, axis: int = 0) -> jax.Array:
  """Binary train -> integer counts (the sum over the sub-step axis)."""
  return jnp.sum(train, axis=axis)


def if_soft_reset_substeps(u: jax.Array, spike_max: int, *, threshold: float = 1.0,
                           bias: float = 0.5, axis: int = 0) -> jax.Array:
  """Simulates the IF-SR neuron over ``D`` sub-steps with ``lax.scan`` (spec §1.4).

  ``v_1 = u + bias``; for ``d = 1..D``: ``s_d = 1[v_d >= threshold]``,
  ``v_{d+1} = v_d - s_d * threshold``; no input after the first sub-step.
  Returns the binary train with the sub-step axis at ``axis``.
  """
  v0 = u + jnp.asarray(bias, u.dtype)
  th = jnp.asarray(threshold, u.dtype)

  def step(v, _):
    s = (v >= th).astype(u.dtype)
    return v - s * th, s

  _, train = lax.scan(step, v0, None, length=spike_max)
  return jnp.moveaxis(train, 0, axis)


def nsfr_from_counts(counts: jax.Array, spike_max: int) -> jax.Array:
  """Normalised spike firing rate per sub-step (spec §7): ``NSFR(d) = P(S >= d)``."""
  d = jnp.arange(1, spike_max + 1, dtype=jnp.float32)
  c = counts.reshape(-1).astype(jnp.float32)
  return jnp.mean(c[None, :] >= d[:, None], axis=1)


# ----------------------------------------------------------------------------- execution mode


@jax.tree_util.register_pytree_node_class
class SpikeTrain:
  """The output of a spiking layer in spike-driven execution (spec §1.4, Proposition 1).

  ``bits``: binary spikes ``(D, *shape)``, one slice per sub-step of each real timestep;
  the value the integer model passes on is ``scale * sum_d bits[d]`` (``scale = 1 / norm``).
  ``source``: the spiking layer that fired it (its module, kept out of the pytree leaves).
  Only synapses (``spikejax.models.layers.Conv`` / ``Linear``) and ``spike_einsum`` consume a
  train; the shape methods below act on ``shape``, never on the sub-step axis.
  """

  def __init__(self, bits: jax.Array, scale: float = 1.0, source=None):
    self.bits = bits
    self.scale = float(scale)
    self.source = source

  def tree_flatten(self):
    return (self.bits,), (self.scale, self.source)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], *aux)

  @property
  def sub_steps(self) -> int:
    return self.bits.shape[0]

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.bits.shape[1:])

  @property
  def ndim(self) -> int:
    return self.bits.ndim - 1

  @property
  def dtype(self):
    return self.bits.dtype

  def _like(self, bits):
    return SpikeTrain(bits, self.scale, self.source)

  def reshape(self, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return self._like(self.bits.reshape((self.sub_steps,) + tuple(shape)))

  def transpose(self, *axes):
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    return self._like(self.bits.transpose((0,) + tuple(a + 1 for a in axes)))

  def counts(self) -> jax.Array:
    """The integer counts (spikes summed over the sub-steps)."""
    return jnp.sum(self.bits, axis=0)

  def value(self) -> jax.Array:
    """What the integer model passes on: ``scale * counts`` (for checks, not for compute)."""
    return self.counts() * jnp.asarray(self.scale, self.bits.dtype)

  def __jax_array__(self):
    raise TypeError(
        "a spike train reached an operation that is not a synapse: in spike-driven execution "
        "spiking layers emit binary trains that only Conv/Linear synapses "
        "(spikejax.models.layers) and spikejax.spiking.spike_einsum consume; route the "
        "neuron's output through one of them.")


def is_train(x) -> bool:
  return isinstance(x, SpikeTrain)
