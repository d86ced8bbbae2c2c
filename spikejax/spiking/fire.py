"""Firing functions: the SFA integer fire function and binary Heaviside firing.

SFA (spec §1.1-§1.2, paper Eq. 5): ``S = R(clip(u, 0, D))``, ``y = S / norm``; the
gradient of ``S`` with respect to ``u`` is the rectangular window 1[0 <= u <= D]
(``window='closed'``, BASE/DVS code) or 1[0 < u < D] (``window='open'``, LARGE code).
The mask is written out explicitly: ``jnp.clip`` would split the gradient 0.5/0.5 at
the window edges (spec §1.2).

Binary firing (paper Eq. 2): ``S = H(u - threshold)`` with a surrogate gradient taken
from a small factory (spyx style), used by the vanilla direct-training baseline.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal

import jax
import jax.numpy as jnp

Rounding = Literal["half_even", "half_up"]
Window = Literal["closed", "open"]

ROUNDINGS = ("half_even", "half_up")
WINDOWS = ("closed", "open")


def _check(spike_max, rounding, window):
  if isinstance(spike_max, bool) or not isinstance(spike_max, int) or spike_max < 1:
    raise ValueError(f"spike_max (D) must be an integer >= 1, got {spike_max!r}.")
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
  if window not in WINDOWS:
    raise ValueError(f"window must be one of {WINDOWS}, got {window!r}.")


def round_value(x: jax.Array, rounding: Rounding) -> jax.Array:
  """Rounds to the nearest integer; ties to even (``torch.round``) or up (``floor(x+0.5)``)."""
  if rounding == "half_even":
    return jnp.round(x)
  return jnp.floor(x + jnp.asarray(0.5, x.dtype))


def quantize(u: jax.Array, spike_max: int, rounding: Rounding = "half_even") -> jax.Array:
  """The integer spike count ``S = R(clip(u, 0, D))`` in ``{0, ..., D}`` (no gradient rule)."""
  zero = jnp.zeros((), u.dtype)
  top = jnp.asarray(spike_max, u.dtype)
  return round_value(jnp.minimum(jnp.maximum(u, zero), top), rounding)


def window_mask(u: jax.Array, spike_max: int, window: Window = "closed") -> jax.Array:
  """The rectangular surrogate window as a 0/1 array of ``u``'s dtype."""
  top = jnp.asarray(spike_max, u.dtype)
  if window == "closed":
    inside = (u >= 0) & (u <= top)
  else:
    inside = (u > 0) & (u < top)
  return inside.astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _sfa_count(u, spike_max, rounding, window):
  return quantize(u, spike_max, rounding)


def _sfa_count_fwd(u, spike_max, rounding, window):
  return quantize(u, spike_max, rounding), window_mask(u, spike_max, window)


def _sfa_count_bwd(spike_max, rounding, window, mask, g):
  return (g * mask,)


_sfa_count.defvjp(_sfa_count_fwd, _sfa_count_bwd)


def sfa_count(u: jax.Array, spike_max: int = 4, *, rounding: Rounding = "half_even",
              window: Window = "closed") -> jax.Array:
  """Integer SFA activation ``S`` with the straight-through window gradient (spec §1.1-1.2)."""
  _check(spike_max, rounding, window)
  return _sfa_count(u, spike_max, rounding, window)


def sfa_fire(u: jax.Array, spike_max: int = 4, *, norm: float | None = None,
             rounding: Rounding = "half_even", window: Window = "closed") -> jax.Array:
  """SFA fire function ``y = R(clip(u, 0, D)) / norm`` (spec §1.1, paper Eq. 5).

  Args:
    u: membrane potential (any shape, float dtype).
    spike_max: D, the integer ceiling (number of binary sub-steps at inference).
    norm: divisor applied after quantisation; defaults to D. The classification-head
      neuron of the official models uses ``norm=1`` (integers reach the head).
    rounding: ``'half_even'`` (official base/DVS models) or ``'half_up'`` (large
      models; makes Proposition 1 exact).
    window: surrogate window, ``'closed'`` [0, D] or ``'open'`` (0, D).
  """
  s = sfa_count(u, spike_max, rounding=rounding, window=window)
  norm = spike_max if norm is None else norm
  if norm == 1:
    return s
  return s / jnp.asarray(norm, s.dtype)


# ----------------------------------------------------------------------------- binary
SurrogateFn = Callable[[jax.Array], jax.Array]


def rectangle(width: float = 1.0) -> SurrogateFn:
  """d spike / d u = 1/width on |u - threshold| < width/2."""
  def grad(x):
    return (jnp.abs(x) < width / 2).astype(x.dtype) / width
  return grad


def sigmoid(alpha: float = 4.0) -> SurrogateFn:
  """Derivative of sigmoid(alpha * x) (SpikingJelly's default surrogate)."""
  def grad(x):
    s = jax.nn.sigmoid(alpha * x)
    return alpha * s * (1 - s)
  return grad


def arctan(alpha: float = 2.0) -> SurrogateFn:
  """Derivative of atan(pi/2 * alpha * x)/pi + 1/2."""
  def grad(x):
    return alpha / 2 / (1 + (jnp.pi / 2 * alpha * x) ** 2)
  return grad


def triangle(width: float = 1.0) -> SurrogateFn:
  """Triangular surrogate of half-width ``width`` and peak 1/width."""
  def grad(x):
    return jnp.maximum(0.0, 1.0 - jnp.abs(x) / width) / width
  return grad


SURROGATES = {"rectangle": rectangle, "sigmoid": sigmoid, "arctan": arctan,
              "triangle": triangle}


def get_surrogate(name: str, **kwargs) -> SurrogateFn:
  if name not in SURROGATES:
    raise ValueError(f"Unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}.")
  return SURROGATES[name](**kwargs)


def heaviside(surrogate: SurrogateFn | None = None) -> Callable[[jax.Array], jax.Array]:
  """Binary firing ``H(x) = 1[x >= 0]`` with ``surrogate(x)`` as its derivative (paper Eq. 2)."""
  surrogate = surrogate or sigmoid()

  @jax.custom_vjp
  def fire(x):
    return (x >= 0).astype(x.dtype)

  def fwd(x):
    return fire(x), x

  def bwd(x, g):
    return (g * surrogate(x).astype(g.dtype),)

  fire.defvjp(fwd, bwd)
  return fire
