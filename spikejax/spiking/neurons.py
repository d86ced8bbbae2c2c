"""Spiking neurons as NNX classes (spec §1, paper Eq. 1-5 and Proposition 1).

Every neuron is elementwise and parameter-free here. Its input is the membrane potential with
a leading merged ``T * B`` axis (time-major, index ``t * B + b``); a neuron with temporal
``dynamics`` unmerges ``T`` and carries its state ``h`` across real timesteps with
``lax.scan`` (``initial_state`` / ``step``, spyx style); without dynamics the ``T`` frames are
independent (the official models). The output is ``S / norm``.

* ``SFANeuron``: integer firing ``S = R(clip(u, 0, D))`` with the window gradient (Eq. 5).
* ``BinaryNeuron``: ``S = H(u - threshold)`` with a surrogate gradient (Eq. 2), e.g. binary LIF.
* ``ReLUNeuron``: ``S = max(u, 0)``, the ANN twin of a spiking network (same synapses, no
  quantiser), the reference for what the spiking neurons cost (``launch/aot_compile.py
  --ann_twin``); it has no spike-driven mode.
* ``SubstepIF``: the binary sub-step IF neuron of Proposition 1 that stands in for another
  neuron in spike-driven execution: ``D`` binary sub-steps per real timestep, emitted as a
  ``SpikeTrain``; the source neuron's dynamics still act between real timesteps.

Models build their neurons from a ``SpikeConfig`` with ``make_neuron``: ``NEURONS`` is the one
table of neuron kinds (keyed by ``SpikeConfig.firing``) and ``TEMPORAL`` the one table of
temporal rules. A new neuron is one class here plus one ``NEURONS`` entry.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from spikejax.spiking import dynamics as dyn_lib
from spikejax.spiking import fire as fire_lib
from spikejax.spiking import record
from spikejax.spiking import spike_train as train_lib
from spikejax.spiking.dynamics import NeuronDynamics

Array = jax.Array

# temporal rule between real timesteps -> (integrator, reset); None: independent frames
TEMPORAL: dict[str, tuple[str, str] | None] = {
    "independent": None,
    "if_soft": ("if", "soft"),
    "if_hard": ("if", "hard"),
    "lif_soft": ("lif", "soft"),
    "lif_hard": ("lif", "hard"),
}
TEMPORAL_MODES = tuple(TEMPORAL)


@dataclasses.dataclass(frozen=True)
class SpikeConfig:
  """How the spiking neurons of a model fire (spec §1, paper §4): the neuron spec.

  Attributes:
    time_steps: T, the number of real timesteps (1 for static images with SFA).
    spike_max: D, the integer ceiling of SFA firing (= binary sub-steps at inference).
    norm: divisor after quantisation (default D; the DVS model uses 1). Head neurons use 1.
    rounding, window: SFA rounding rule and surrogate window (``spikejax.spiking.sfa_fire``).
    firing: the neuron kind, a key of ``NEURONS``: ``'sfa'`` integer firing, ``'binary'``
      Heaviside spikes with a surrogate gradient (vanilla direct training) or ``'relu'``
      (the ANN twin, not spiking).
    temporal: dynamics between real timesteps, a key of ``TEMPORAL``: ``'independent'``
      (per-frame, the official code), or IF/LIF with soft/hard reset.
    tau, threshold, v_reset, decay_input, detach_reset: LIF/IF parameters (binary firing
      uses ``threshold``; SFA's unit threshold is implicit in its integers).
    surrogate, surrogate_alpha: the surrogate of binary firing.
  """
  time_steps: int = 1
  spike_max: int = 4
  norm: float | None = None
  rounding: fire_lib.Rounding = "half_even"
  window: fire_lib.Window = "closed"
  firing: str = "sfa"
  temporal: str = "independent"
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
    if self.rounding not in fire_lib.ROUNDINGS:
      raise ValueError(f"rounding must be one of {fire_lib.ROUNDINGS}, got {self.rounding!r}.")
    if self.window not in fire_lib.WINDOWS:
      raise ValueError(f"window must be one of {fire_lib.WINDOWS}, got {self.window!r}.")
    if self.firing not in NEURONS:
      raise ValueError(f"firing must be one of {sorted(NEURONS)}, got {self.firing!r}.")
    if self.temporal not in TEMPORAL:
      raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {self.temporal!r}.")
    fire_lib.get_surrogate(self.surrogate)

  @property
  def output_norm(self) -> float:
    return NEURONS[self.firing].output_norm(self)

  @property
  def sub_steps(self) -> int:
    """Binary sub-steps per real timestep in spike-driven execution (D for SFA, else 1)."""
    return NEURONS[self.firing].sub_steps(self)


def temporal_dynamics(spec: SpikeConfig, *, threshold: float = 1.0) -> NeuronDynamics | None:
  """The ``NeuronDynamics`` of ``spec.temporal`` (``None`` for independent frames)."""
  rule = TEMPORAL[spec.temporal]
  if rule is None:
    return None
  kind, reset = rule
  return NeuronDynamics(tau=spec.tau if kind == "lif" else None, reset=reset,
                        threshold=threshold, v_reset=spec.v_reset, decay_input=spec.decay_input,
                        detach_reset=spec.detach_reset)


class Neuron(nnx.Module):
  """Base class: membrane ``u`` ``(T*B, ...)`` -> spikes / norm (see the module docstring).

  Subclasses define ``fire(u)`` (the counts of one real timestep) and ``top`` (the largest
  count). With ``record=True`` the neuron sows ``spike_hist``, the ``(T, top + 1)`` histogram
  of its counts per real timestep; with ``record_map=k`` a spatial neuron (``(T*B, H, W, C)``)
  sows ``spike_map``, the ``(k, H, W)`` firing of its first ``k`` examples per position
  (``spikejax.spiking.record``).
  """

  top: int = 1
  spiking_neuron = True      # what spikejax.spiking.record.spiking_layers looks for

  def __init__(self, *, time_steps: int = 1, norm: float = 1.0,
               dynamics: NeuronDynamics | None = None, spec: SpikeConfig | None = None):
    self.time_steps = time_steps
    self.norm = float(norm)
    self.dynamics = dynamics
    self.config = spec
    self.record = False
    self.record_map = 0

  def fire(self, u: Array) -> Array:
    raise NotImplementedError(f"{type(self).__name__} must define fire(u)")

  # ------------------------------------------------------------------ state over T
  def initial_state(self, shape, dtype) -> Array:
    """``h_0``: the membrane state before the first real timestep."""
    return jnp.zeros(shape, dtype)

  def step(self, h: Array, x: Array) -> tuple[Array, Array]:
    """One real timestep: charge, fire, reset -> ``(h_t, S_t)`` (paper Eq. 1-3)."""
    u = dyn_lib.charge(h, x, self.dynamics)
    s = self.fire(u)
    return dyn_lib.reset(u, s, self.dynamics), s

  def _unmerge(self, u: Array) -> Array:
    T = self.time_steps
    if u.shape[0] % T:
      raise ValueError(f"leading axis {u.shape[0]} is not a multiple of time_steps={T}.")
    return u.reshape((T, u.shape[0] // T) + u.shape[1:])

  def counts(self, u: Array) -> Array:
    """The spike counts (integers for SFA, 0/1 for binary) for membrane input ``u``."""
    if self.dynamics is None:
      return self.fire(u)
    x_seq = self._unmerge(u)
    _, s = lax.scan(self.step, self.initial_state(x_seq.shape[1:], x_seq.dtype), x_seq)
    return s.reshape(u.shape)

  # ------------------------------------------------------------------ records
  def histogram(self, s: Array) -> Array:
    """``(T, top + 1)`` float32: per real timestep, how many counts equal 0, 1, ..., top."""
    st = s.reshape(self.time_steps, -1)
    return jnp.stack([jnp.sum(st == k, axis=1) for k in range(self.top + 1)],
                     axis=1).astype(jnp.float32)

  def spike_map(self, s: Array, k: int) -> Array:
    """``(k, H, W)`` float32 in [0, 1]: the counts of the first ``k`` examples at each
    position, averaged over channels and real timesteps, over ``top`` (the paper's
    channel-averaged spike maps, Fig. 8, as firing rates)."""
    st = s.reshape((self.time_steps, s.shape[0] // self.time_steps) + s.shape[1:])[:, :k]
    return (st.astype(jnp.float32).mean(axis=(0, -1)) / self.top)

  def __call__(self, u: Array) -> Array:
    s = self.counts(u)
    if self.record:
      self.sow(nnx.Intermediate, "spike_hist", self.histogram(s))
    if self.record_map and s.ndim == 4:
      self.sow(nnx.Intermediate, "spike_map", self.spike_map(s, self.record_map))
    if self.norm == 1.0:
      return s
    return s / jnp.asarray(self.norm, s.dtype)

  # ------------------------------------------------------------------ spike-driven mode
  def sub_step_fire(self, u: Array) -> Array:
    """Binary train ``(D, ...)`` of one real timestep whose sum equals ``fire(u)``.

    The default (binary neurons) is the spike itself as a single sub-step.
    """
    return self.fire(u)[None]

  def substep(self) -> "SubstepIF":
    """The spike-driven stand-in for this neuron (binary sub-steps, same dynamics)."""
    return SubstepIF(self)


class SFANeuron(Neuron):
  """SFA integer neuron: ``S = R(clip(u, 0, D))``, window gradient (spec §1.1-1.2, Eq. 5).

  Without dynamics every real timestep fires independently (the official models); with IF/LIF
  soft-reset dynamics ``h_t = u_t - S_t`` carries the rounding residual (spec §1.4).
  """

  def __init__(self, spike_max: int = 4, *, norm: float | None = None,
               rounding: fire_lib.Rounding = "half_even", window: fire_lib.Window = "closed",
               time_steps: int = 1, dynamics: NeuronDynamics | None = None,
               spec: SpikeConfig | None = None):
    super().__init__(time_steps=time_steps, norm=spike_max if norm is None else norm,
                     dynamics=dynamics, spec=spec)
    self.spike_max = spike_max
    self.rounding = rounding
    self.window = window
    self.top = spike_max

  def fire(self, u):
    return fire_lib.sfa_count(u, self.spike_max, rounding=self.rounding, window=self.window)

  def sub_step_fire(self, u):
    """Proposition 1: IF soft reset, threshold 1, ``u + 0.5`` injected at the first sub-step."""
    return train_lib.if_soft_reset_substeps(u, self.spike_max)

  @classmethod
  def from_spec(cls, spec: SpikeConfig, *, head: bool = False) -> "SFANeuron":
    return cls(spec.spike_max, norm=1.0 if head else cls.output_norm(spec),
               rounding=spec.rounding, window=spec.window, time_steps=spec.time_steps,
               dynamics=temporal_dynamics(spec), spec=spec)

  @staticmethod
  def output_norm(spec: SpikeConfig) -> float:
    return float(spec.spike_max if spec.norm is None else spec.norm)

  @staticmethod
  def sub_steps(spec: SpikeConfig) -> int:
    return spec.spike_max


class BinaryNeuron(Neuron):
  """Binary neuron ``S = H(u - threshold)`` with a surrogate gradient (paper Eq. 2).

  With LIF hard-reset dynamics (``tau``, ``decay_input``, ``detach_reset``) it is the binary
  LIF of direct training and of Meta-SpikeFormer; with none it fires per frame.
  """

  def __init__(self, threshold: float = 1.0, *, surrogate: str = "sigmoid",
               surrogate_alpha: float | None = 4.0, time_steps: int = 1,
               dynamics: NeuronDynamics | None = None, spec: SpikeConfig | None = None):
    super().__init__(time_steps=time_steps, norm=1.0, dynamics=dynamics, spec=spec)
    fire_lib.get_surrogate(surrogate)       # a clear error for an unknown name, up front
    self.threshold = float(threshold)
    # the surrogate by name (static, hashable): equal models have equal graph definitions
    self.surrogate = surrogate
    self.surrogate_alpha = surrogate_alpha
    self.top = 1

  def fire(self, u):
    kw = ({"alpha": self.surrogate_alpha}
          if self.surrogate in ("sigmoid", "arctan") and self.surrogate_alpha is not None else {})
    h = fire_lib.heaviside(fire_lib.get_surrogate(self.surrogate, **kw))
    return h(u - jnp.asarray(self.threshold, u.dtype))

  @classmethod
  def from_spec(cls, spec: SpikeConfig, *, head: bool = False) -> "BinaryNeuron":
    del head  # binary spikes are passed on as they are
    return cls(spec.threshold, surrogate=spec.surrogate, surrogate_alpha=spec.surrogate_alpha,
               time_steps=spec.time_steps,
               dynamics=temporal_dynamics(spec, threshold=spec.threshold), spec=spec)

  @staticmethod
  def output_norm(spec: SpikeConfig) -> float:
    return 1.0

  @staticmethod
  def sub_steps(spec: SpikeConfig) -> int:
    return 1


class ReLUNeuron(Neuron):
  """``S = max(u, 0)``: the ANN twin's activation in place of a spiking neuron.

  Same place in the network, same merged ``T * B`` input, no quantiser, no ceiling and no
  dynamics (``temporal`` must be ``'independent'``): the reference for what the spiking
  neurons cost in compute and memory traffic. It is not a spiking layer (firing records skip
  it) and has no spike-driven execution.
  """

  spiking_neuron = False

  def __init__(self, *, time_steps: int = 1, spec: SpikeConfig | None = None):
    super().__init__(time_steps=time_steps, norm=1.0, dynamics=None, spec=spec)

  def fire(self, u):
    return jax.nn.relu(u)

  def counts(self, u):
    return self.fire(u)

  def substep(self):
    raise ValueError("an ANN twin (firing='relu') has no spike-driven execution: it does not "
                     "spike. Use firing='sfa' or 'binary'.")

  @classmethod
  def from_spec(cls, spec: SpikeConfig, *, head: bool = False) -> "ReLUNeuron":
    del head
    if spec.temporal != "independent":
      raise ValueError(f"firing='relu' (the ANN twin) has no dynamics between timesteps: give "
                       f"temporal='independent', not {spec.temporal!r}.")
    return cls(time_steps=spec.time_steps, spec=spec)

  @staticmethod
  def output_norm(spec: SpikeConfig) -> float:
    return 1.0

  @staticmethod
  def sub_steps(spec: SpikeConfig) -> int:
    return 1


# The one table of neuron kinds: SpikeConfig.firing -> class (with from_spec, output_norm,
# sub_steps). Register a new neuron here.
NEURONS: dict[str, type[Neuron]] = {"sfa": SFANeuron, "binary": BinaryNeuron,
                                    "relu": ReLUNeuron}


def make_neuron(spec: SpikeConfig, *, head: bool = False) -> Neuron:
  """The neuron ``spec`` describes; ``head=True``: a classification-head neuron (norm 1)."""
  return NEURONS[spec.firing].from_spec(spec, head=head)


class SubstepIF(Neuron):
  """Binary sub-step IF neuron standing in for ``source`` in spike-driven execution (Prop. 1).

  Per real timestep the membrane ``u`` (the same one the source neuron sees) drives
  ``source.sub_step_fire``: for SFA an IF neuron with soft reset, threshold 1, ``v_1 = u + 0.5``
  and no further input, which fires on its first ``S`` of ``D`` sub-steps; between real
  timesteps the source's dynamics apply with the count ``S`` as the reset. The output is a
  ``SpikeTrain`` of ``D`` binary sub-steps (``scale = 1 / norm``). Inside
  ``spikejax.spiking.record.spike_driven_recording`` it records its spikes per ``(t, d)``, how
  many of its counts differ from the source's own rounding (ties under ``half_even``), and
  spike maps when asked.
  """

  def __init__(self, source: Neuron):
    super().__init__(time_steps=source.time_steps, norm=source.norm, dynamics=source.dynamics,
                     spec=source.config)
    self.source = source
    self.top = source.top

  def fire(self, u):
    return self.source.fire(u)

  def trains(self, u: Array) -> Array:
    """Membrane input ``u`` ``(T*B, ...)`` -> binary train ``(D, T*B, ...)``."""
    src = self.source
    if self.dynamics is None:
      return src.sub_step_fire(u)
    x_seq = self._unmerge(u)

    def step(h, x):
      v = dyn_lib.charge(h, x, self.dynamics)
      tr = src.sub_step_fire(v)
      return dyn_lib.reset(v, jnp.sum(tr, axis=0), self.dynamics), tr

    _, trains = lax.scan(step, self.initial_state(x_seq.shape[1:], x_seq.dtype), x_seq)
    return jnp.moveaxis(trains, 1, 0).reshape((trains.shape[1],) + u.shape)

  def __call__(self, u: Array) -> train_lib.SpikeTrain:
    bits = self.trains(u)
    rec = record.active_recorder()
    if rec is not None:
      self._record(rec, u, bits)
    return train_lib.SpikeTrain(bits, 1.0 / self.norm, self)

  def _record(self, rec, u, bits):
    name = rec.name(self)
    d, T = bits.shape[0], self.time_steps
    per_t = bits.reshape(d, T, -1)
    # a neuron shared by several inputs (a detector's RPN head on every level) adds them up
    spikes = jnp.sum(per_t, axis=2).T.astype(jnp.float32)          # (T, D)
    neurons = per_t.shape[2] // (u.shape[0] // T) * rec.per_image(u.shape[0])
    wrong = jnp.sum(jnp.sum(bits, axis=0) != self.source.counts(u)).astype(jnp.int32)
    rec.spikes[name] = rec.spikes[name] + spikes if name in rec.spikes else spikes
    rec.neurons[name] = rec.neurons.get(name, 0) + neurons
    rec.mismatch[name] = rec.mismatch[name] + wrong if name in rec.mismatch else wrong
    if name in rec.map_names:
      if bits.ndim != 5:
        raise ValueError(f"spike maps need a spatial layer (N, H, W, C); {name} has shape "
                         f"{tuple(u.shape)}.")
      m = jnp.mean(bits.astype(jnp.float32), axis=-1)                # (D, T*B, H, W)
      rec.maps[name] = jnp.moveaxis(m.reshape((d, T, -1) + m.shape[2:]), 0, 1)

  def substep(self) -> "SubstepIF":
    return self


def to_spike_driven(model: nnx.Module) -> nnx.Module:
  """Swaps every neuron of ``model`` (in place) for its ``SubstepIF`` stand-in; returns it.

  The synapses and everything else are the same modules: spike-driven inference is an
  execution mode of the model, not a second implementation (spec §1.4).
  """
  targets = []
  for path, m in nnx.iter_modules(model):
    if isinstance(m, Neuron) and not isinstance(m, SubstepIF) and path:
      targets.append((path, m))
  for path, m in targets:
    parent = model
    for p in path[:-1]:
      parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    key = path[-1]
    if isinstance(key, int):
      parent[key] = m.substep()
    else:
      setattr(parent, key, m.substep())
  return model
