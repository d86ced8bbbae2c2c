"""Effective rank of encoder features (paper Eq. 29; Roy and Vetterli, 2007).

For a feature matrix ``Z`` (rows: tokens or samples, columns: channels) with singular values
``sigma_i``, ``p_i = sigma_i / sum_j sigma_j`` and

    erank(Z) = exp( - sum_i p_i log p_i ),

a continuous count of the dimensions the features really use: ``1 <= erank <= rank(Z)``.
The paper tracks it during MIM pretraining (Fig. 10b: it falls with binary spikes and rises
with SFA).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def effective_rank(features: jax.Array, *, center: bool = False) -> jax.Array:
  """``erank`` of ``features``: a matrix ``(N, C)``, or NHWC / ``(..., C)`` maps flattened to
  ``(prod(...), C)``. ``center`` subtracts the column means first. Computed in float32."""
  z = jnp.asarray(features, jnp.float32)
  if z.ndim < 2:
    raise ValueError(f"effective_rank needs a matrix (N, C) or feature maps (..., C); got shape "
                     f"{z.shape}.")
  z = z.reshape(-1, z.shape[-1])
  if center:
    z = z - jnp.mean(z, axis=0, keepdims=True)
  s = jnp.linalg.svd(z, compute_uv=False)
  total = jnp.sum(s)
  p = s / jnp.where(total > 0, total, 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.where(total > 0, jnp.exp(entropy), 0.0)
