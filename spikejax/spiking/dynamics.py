"""Neuron dynamics over real timesteps ``T``: pure functions, state carried by ``lax.scan``.

Paper Eq. 1-3 (time-major input ``x[t]``, membrane after firing ``h``):

    u[t] = beta * h[t-1] + x[t]                  (integration; IF: beta = 1, LIF: beta = 1 - 1/tau)
    s[t] = fire(u[t])                            (binary: H(u - theta); SFA: R(clip(u, 0, D)))
    h[t] = u[t] - s[t] * theta                   (soft reset)
    h[t] = u[t] * (s[t] == 0) + v_reset * (s[t] > 0)   (hard reset)
    h[t] = u[t]                                  (no reset)

With ``decay_input=True`` the LIF charge follows SpikingJelly: ``u = h + (x - (h - v_reset)) / tau``.
With SFA integer firing and soft reset (IF, theta = 1) this is the "SFA across time" neuron of
spec §1.4: ``h_t = u_t - S_t`` carries the rounding residual to the next real timestep.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp
from jax import lax

from spikejax.spiking import fire as fire_lib

Reset = Literal["soft", "hard", "none"]
RESETS = ("soft", "hard", "none")


@dataclasses.dataclass(frozen=True)
class NeuronDynamics:
  """Integration and reset rule between real timesteps (paper Eq. 1 and 3)."""
  tau: float | None = None        # None -> IF (no leak); float -> LIF with beta = 1 - 1/tau
  reset: Reset = "soft"
  threshold: float = 1.0
  v_reset: float = 0.0
  decay_input: bool = False       # SpikingJelly LIF charge: h + (x - (h - v_reset)) / tau
  detach_reset: bool = False      # stop the gradient through the reset term

  def __post_init__(self):
    if self.reset not in RESETS:
      raise ValueError(f"reset must be one of {RESETS}, got {self.reset!r}.")
    if self.tau is not None and not self.tau >= 1.0:
      raise ValueError(f"LIF tau must be >= 1 (beta = 1 - 1/tau in [0, 1)), got {self.tau}.")

  @property
  def beta(self) -> float:
    return 1.0 if self.tau is None else 1.0 - 1.0 / self.tau


def charge(h, x, dyn: NeuronDynamics):
  """The membrane after integrating input ``x`` on state ``h`` (paper Eq. 1)."""
  if dyn.tau is None:
    return h + x
  if dyn.decay_input:
    return h + (x - (h - dyn.v_reset)) / dyn.tau
  return dyn.beta * h + x


def reset(u, s, dyn: NeuronDynamics):
  """The state after firing ``s`` from membrane ``u`` (paper Eq. 3)."""
  s_r = lax.stop_gradient(s) if dyn.detach_reset else s
  if dyn.reset == "soft":
    return u - s_r * dyn.threshold
  if dyn.reset == "hard":
    fired = (s_r > 0).astype(u.dtype) if dyn.detach_reset else jnp.minimum(s_r, 1.0)
    return u * (1 - fired) + dyn.v_reset * fired
  return u


def multistep(x_seq: jax.Array, fire: Callable[[jax.Array], jax.Array], dyn: NeuronDynamics,
              h0: jax.Array | None = None, *, unroll: int = 1):
  """Runs a neuron over the leading (time) axis of ``x_seq``.

  ``fire(u)`` returns the spike count ``s`` (binary 0/1 or SFA integers). Returns
  ``(spikes, h_T)``: the spikes with the same shape as ``x_seq``, and the final state.
  """
  h0 = jnp.zeros(x_seq.shape[1:], x_seq.dtype) if h0 is None else h0

  def step(h, x):
    u = charge(h, x, dyn)
    s = fire(u)
    return reset(u, s, dyn), s

  h_T, spikes = lax.scan(step, h0, x_seq, unroll=unroll)
  return spikes, h_T


def binary_fire(threshold: float = 1.0, surrogate: fire_lib.SurrogateFn | None = None):
  """``u -> H(u - threshold)`` with a surrogate gradient (vanilla direct training)."""
  h = fire_lib.heaviside(surrogate)
  return lambda u: h(u - jnp.asarray(threshold, u.dtype))


def sfa_fire_count(spike_max: int = 4, rounding: fire_lib.Rounding = "half_even",
                   window: fire_lib.Window = "closed"):
  """``u -> R(clip(u, 0, D))`` with the window gradient (SFA inside a real timestep)."""
  return lambda u: fire_lib.sfa_count(u, spike_max, rounding=rounding, window=window)


def if_neuron(x_seq, *, reset: Reset = "hard", threshold: float = 1.0, v_reset: float = 0.0,
              fire=None, detach_reset: bool = False, h0=None):
  """IF neuron (no leak) over time; binary firing with a sigmoid surrogate unless ``fire`` given."""
  dyn = NeuronDynamics(tau=None, reset=reset, threshold=threshold, v_reset=v_reset,
                       detach_reset=detach_reset)
  return multistep(x_seq, fire or binary_fire(threshold), dyn, h0)


def lif_neuron(x_seq, *, tau: float = 2.0, reset: Reset = "hard", threshold: float = 1.0,
               v_reset: float = 0.0, decay_input: bool = False, fire=None,
               detach_reset: bool = False, h0=None):
  """LIF neuron over time; binary firing with a sigmoid surrogate unless ``fire`` given."""
  dyn = NeuronDynamics(tau=tau, reset=reset, threshold=threshold, v_reset=v_reset,
                       decay_input=decay_input, detach_reset=detach_reset)
  return multistep(x_seq, fire or binary_fire(threshold), dyn, h0)


def sfa_over_time(x_seq, *, spike_max: int = 4, rounding: fire_lib.Rounding = "half_even",
                  window: fire_lib.Window = "closed", h0=None):
  """SFA with the soft-reset residual carried across real timesteps (spec §1.4).

  ``u_t = h_{t-1} + x_t``, ``S_t = R(clip(u_t, 0, D))``, ``h_t = u_t - S_t``. Returns the
  integer counts ``S`` (divide by D for the normalised output) and ``h_T``.
  """
  dyn = NeuronDynamics(tau=None, reset="soft", threshold=1.0)
  return multistep(x_seq, sfa_fire_count(spike_max, rounding, window), dyn, h0)
