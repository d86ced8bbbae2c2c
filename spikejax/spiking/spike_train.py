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
