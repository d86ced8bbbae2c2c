"""Synaptic products that accept spike trains (spec §1.4): the spike-driven attention matmuls.

Conv and linear synapses live with the models (``spikejax.models.layers``); this is the one
operation between two spiking layers' outputs (attention), written once for every family.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from spikejax.spiking import record
from spikejax.spiking.spike_train import is_train


def spike_einsum(spec: str, a, b, *, op=None, name: str = "matmul"):
  """``jnp.einsum(spec, a, b)`` where either operand may be a ``SpikeTrain``.

  A train contributes its sub-steps one by one; with two trains every ``(d, e)`` pair of
  sub-steps is multiplied (spike AND spike) and accumulated, the ``D x D`` pairs of spike-driven
  attention (spec §1.4). The result is real-valued. ``op``/``name`` label the product for the
  op records of ``spikejax.spiking.record`` (energy accounting); plain arrays are a plain einsum.
  """
  if not (is_train(a) or is_train(b)):
    return jnp.einsum(spec, a, b)
  fn = lambda x, y: jnp.einsum(spec, x, y)
  if is_train(a) and is_train(b):
    out = jax.vmap(jax.vmap(fn, (None, 0)), (0, None))(a.bits, b.bits)   # (D, E, ...)
    out = jnp.sum(out, axis=(0, 1)) * jnp.asarray(a.scale * b.scale, out.dtype)
  elif is_train(a):
    out = jax.vmap(fn, (0, None))(a.bits, b)
    out = jnp.sum(out, axis=0) * jnp.asarray(a.scale, out.dtype)
  else:
    out = jax.vmap(fn, (None, 0))(a, b.bits)
    out = jnp.sum(out, axis=0) * jnp.asarray(b.scale, out.dtype)
  record.matmul(spec, a, b, op=op, name=name)
  return out
