"""Spiking primitives: SFA fire function, spike trains (Proposition 1), neurons over time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spikejax import spiking

U = np.array([-1, 0.2, 0.5, 1.5, 2.5, 3.49, 3.5, 4.0, 4.6, 7.0], np.float32)


def test_value_table_spec_1_1():
  # spec §1.1, BASE MultiSpike D=4 (half-to-even).
  y = spiking.sfa_fire(jnp.asarray(U), 4)
  np.testing.assert_array_equal(np.asarray(y), [0, 0, 0, 0.5, 0.5, 0.75, 1, 1, 1, 1])
  # half-up rounding moves the ties 0.5 and 2.5 up (LARGE code).
  y = spiking.sfa_fire(jnp.asarray(U), 4, rounding="half_up")
  np.testing.assert_array_equal(np.asarray(y), [0, 0, 0.25, 0.5, 0.75, 0.75, 1, 1, 1, 1])
  # head neuron: norm 1 passes the integers.
  y = spiking.sfa_fire(jnp.asarray(U), 4, norm=1)
  np.testing.assert_array_equal(np.asarray(y), [0, 0, 0, 2, 2, 3, 4, 4, 4, 4])


def test_gradient_table_spec_1_2():
  g = jax.grad(lambda u: spiking.sfa_fire(u, 4).sum())(jnp.asarray(U))
  np.testing.assert_array_equal(np.asarray(g), [0, .25, .25, .25, .25, .25, .25, .25, 0, 0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("window,at_edges", [("closed", 1.0), ("open", 0.0)])
def test_gradient_window_edges(dtype, window, at_edges):
  D = 4
  eps = 1 / 16  # representable around 0 and D in bfloat16
  pts = jnp.asarray([0.0, D, -eps, eps, D - eps, D + eps], dtype)
  g = jax.grad(lambda u: spiking.sfa_count(u, D, window=window).astype(jnp.float32).sum())(pts)
  np.testing.assert_array_equal(np.asarray(g, np.float32), [at_edges, at_edges, 0, 1, 1, 0])
  assert g.dtype == dtype


def test_naive_clip_gradient_is_wrong_at_edges():
  # Why the explicit mask exists: jnp.clip splits the gradient at the edge.
  g = jax.grad(lambda u: jnp.clip(u, 0.0, 4.0).sum())(jnp.asarray([0.0, 4.0]))
  assert not np.allclose(np.asarray(g), 1.0)
  g = jax.grad(lambda u: spiking.sfa_count(u, 4).sum())(jnp.asarray([0.0, 4.0]))
  np.testing.assert_array_equal(np.asarray(g), [1.0, 1.0])


def test_bfloat16_values():
  y = spiking.sfa_fire(jnp.asarray(U, jnp.bfloat16), 4)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), [0, 0, 0, .5, .5, .75, 1, 1, 1, 1])


def test_transforms_jit_vmap_scan_grad():
  x = jnp.linspace(-1, 6, 24, dtype=jnp.float32).reshape(4, 6)
  f = lambda u: spiking.sfa_fire(u, 4, rounding="half_up")
  ref = f(x)
  np.testing.assert_array_equal(jax.jit(f)(x), ref)
  np.testing.assert_array_equal(jax.vmap(f)(x), ref)
  _, ys = jax.lax.scan(lambda c, row: (c, f(row)), 0.0, x)
  np.testing.assert_array_equal(ys, ref)
  gj = jax.jit(jax.grad(lambda u: f(u).sum()))(x)
  gv = jax.vmap(jax.grad(lambda u: f(u).sum()))(x)
  np.testing.assert_array_equal(gj, gv)
  np.testing.assert_array_equal(gj, np.where((x >= 0) & (x <= 4), 0.25, 0.0))


def test_bad_options():
  with pytest.raises(ValueError, match="spike_max"):
    spiking.sfa_fire(jnp.ones(2), 0)
  with pytest.raises(ValueError, match="rounding"):
    spiking.sfa_fire(jnp.ones(2), 4, rounding="nearest")
  with pytest.raises(ValueError, match="window"):
    spiking.sfa_fire(jnp.ones(2), 4, window="half")


# ----------------------------------------------------------------------- spike trains


@pytest.mark.parametrize("D", [1, 4, 8])
def test_proposition_1_half_up_exact(D):
  u = jnp.linspace(-2.0, D + 2.0, 200_001, dtype=jnp.float32)
  ticks = jnp.arange(-4, 2 * D + 5, dtype=jnp.float32) / 2  # every tie k + 0.5 included
  u = jnp.concatenate([u, ticks, jnp.nextafter(ticks, 10.0), jnp.nextafter(ticks, -10.0)])
  train = spiking.if_soft_reset_substeps(u, D)
  counts = spiking.quantize(u, D, "half_up")
  np.testing.assert_array_equal(spiking.collapse_spike_train(train), counts)
  # front-loaded: the IF-SR train equals the expansion of the integer count.
  np.testing.assert_array_equal(train, spiking.expand_spike_train(counts, D))
  assert set(np.unique(np.asarray(train))) <= {0.0, 1.0}


def test_half_even_differs_exactly_at_even_ties():
  D = 4
  u = jnp.linspace(-2.0, 6.0, 160_001, dtype=jnp.float32)
  ticks = jnp.arange(-4, 13, dtype=jnp.float32) / 2  # every k + 0.5 and integer, exactly
  u = jnp.concatenate([u, ticks, jnp.nextafter(ticks, 10.0), jnp.nextafter(ticks, -10.0)])
  spikes = spiking.collapse_spike_train(spiking.if_soft_reset_substeps(u, D))
  even = spiking.quantize(u, D, "half_even")
  diff = np.asarray(spikes != even)
  # The even ties 0.5 and 2.5 (round-half-even goes down, IF-SR up); and the float32 value just
  # below 0.5, where u + 0.5 itself rounds to 1.0 (IF-SR and floor(u + 0.5) both fire).
  below = float(np.nextafter(np.float32(0.5), np.float32(0)))
  np.testing.assert_array_equal(np.unique(np.asarray(u)[diff]),
                                np.asarray([below, 0.5, 2.5], np.float32))
  np.testing.assert_array_equal(np.asarray(spikes - even)[diff], [1.0] * int(diff.sum()))


def test_expand_collapse_roundtrip_and_axis():
  s = jnp.asarray([[0, 1, 2], [3, 4, 4]], jnp.float32)
  t = spiking.expand_spike_train(s, 4, axis=-1)
  assert t.shape == (2, 3, 4)
  np.testing.assert_array_equal(t[1, 0], [1, 1, 1, 0])
  np.testing.assert_array_equal(spiking.collapse_spike_train(t, axis=-1), s)


def test_nsfr_monotone():
  s = jnp.asarray([0, 1, 2, 4, 4, 3], jnp.float32)
  nsfr = np.asarray(spiking.nsfr_from_counts(s, 4))
  np.testing.assert_allclose(nsfr, [5 / 6, 4 / 6, 3 / 6, 2 / 6])


# ----------------------------------------------------------------------- neurons over T


def _loop_reference(x, *, beta, reset, fire, threshold=1.0, v_reset=0.0, decay_input=False,
                    tau=None):
  h = np.zeros_like(x[0])
  out = []
  for t in range(x.shape[0]):
    if tau is not None and decay_input:
      u = h + (x[t] - (h - v_reset)) / tau
    else:
      u = beta * h + x[t]
    s = fire(u)
    if reset == "soft":
      h = u - s * threshold
    elif reset == "hard":
      h = np.where(s > 0, v_reset, u)
    else:
      h = u
    out.append(s)
  return np.stack(out)


@pytest.mark.parametrize("reset", ["soft", "hard", "none"])
@pytest.mark.parametrize("tau", [None, 2.0, 4.0])
def test_binary_neurons_match_python_loop(reset, tau):
  x = np.random.default_rng(0).normal(0.6, 0.8, (7, 5, 3)).astype(np.float32)
  fire = lambda u: (u >= 1.0).astype(np.float32)
  if tau is None:
    s, _ = spiking.if_neuron(jnp.asarray(x), reset=reset)
    ref = _loop_reference(x, beta=1.0, reset=reset, fire=fire)
  else:
    s, _ = spiking.lif_neuron(jnp.asarray(x), tau=tau, reset=reset)
    ref = _loop_reference(x, beta=1 - 1 / tau, reset=reset, fire=fire)
  np.testing.assert_array_equal(np.asarray(s), ref)


def test_lif_decay_input_matches_loop():
  x = np.random.default_rng(1).normal(0.8, 1.0, (6, 10)).astype(np.float32)
  s, _ = spiking.lif_neuron(jnp.asarray(x), tau=2.0, reset="hard", decay_input=True)
  ref = _loop_reference(x, beta=None, reset="hard", tau=2.0, decay_input=True,
                        fire=lambda u: (u >= 1.0).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(s), ref)


def test_sfa_over_time_carries_residual():
  x = np.random.default_rng(2).uniform(-1, 5, (5, 50)).astype(np.float32)
  s, h = spiking.sfa_over_time(jnp.asarray(x), spike_max=4)
  fire = lambda u: np.round(np.clip(u, 0, 4))
  ref = _loop_reference(x, beta=1.0, reset="soft", fire=fire)
  np.testing.assert_array_equal(np.asarray(s), ref)
  # the carried state is the rounding residual u_T - S_T
  assert np.asarray(h).shape == (50,)


def test_sfa_with_lif_hard_reset_between_steps():
  x = np.random.default_rng(3).uniform(-1, 5, (4, 20)).astype(np.float32)
  dyn = spiking.NeuronDynamics(tau=2.0, reset="hard")
  s, _ = spiking.multistep(jnp.asarray(x), spiking.sfa_fire_count(4), dyn)
  ref = _loop_reference(x, beta=0.5, reset="hard", fire=lambda u: np.round(np.clip(u, 0, 4)))
  np.testing.assert_array_equal(np.asarray(s), ref)


def test_binary_surrogate_gradient_flows():
  x = jnp.full((3, 4), 0.9)
  g = jax.grad(lambda x: spiking.lif_neuron(x, tau=2.0)[0].sum())(x)
  assert np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)
  for name in ("rectangle", "sigmoid", "arctan", "triangle"):
    sg = spiking.get_surrogate(name)
    assert float(sg(jnp.asarray(0.0))) > 0
  with pytest.raises(ValueError, match="surrogate"):
    spiking.get_surrogate("erf")


# ----------------------------------------------------------------------- spike maps


def test_spike_map_is_the_channel_and_time_averaged_firing_of_the_first_examples():
  from flax import nnx
  from spikejax.spiking import neurons, record
  T, B, H, W, C, D = 2, 3, 4, 5, 6, 4
  u = np.random.default_rng(1).uniform(-1, 5, (T * B, H, W, C)).astype(np.float32)

  class Net(nnx.Module):
    def __init__(self):
      self.sn = neurons.SFANeuron(D, time_steps=T)
      self.tokens = neurons.SFANeuron(D, time_steps=T)

    def __call__(self, x):
      return self.sn(x), self.tokens(x.reshape(T * B, H * W, C))   # (T*B, N, C): no map

  net = Net()
  with record.recording(net, maps=2):
    (s, _), inter = nnx.capture(net, nnx.Intermediate)(jnp.asarray(u))
  maps = record.sown_histograms(inter, "spike_map")
  assert list(maps) == ["sn"] and net.sn.record_map == 0      # reset after the block
  counts = np.asarray(s).reshape(T, B, H, W, C) * net.sn.norm    # the output is S / norm
  np.testing.assert_allclose(np.asarray(maps["sn"]), counts[:, :2].mean(axis=(0, 4)) / D,
                             rtol=1e-6)

  images = np.random.default_rng(2).uniform(size=(2, 8, 10, 1))
  half = np.full((2, 4, 5), 0.1)
  half[1] = 0.2                     # each column is scaled to its own largest rate
  layers = {"c": np.zeros((2, 2, 2)), "b": np.ones((2, 4, 5)), "a": half}
  grid, shown = record.spike_map_grid(images, layers)
  assert shown == ["a", "b", "c"] and grid.dtype == np.uint8     # finest first, then by name
  assert grid.shape == (2 * 8 + 2, 4 * 10 + 3 * 2)
  assert (grid[:8, 12:22] == 128).all() and (grid[10:, 12:22] == 255).all()
  assert (grid[:8, 24:34] == 255).all()
  assert (grid[:8, 36:46] == 0).all() and (grid[8:10] == 0).all()  # gap rows are dark
  assert grid[:8, :10].min() == 0 and grid[:8, :10].max() == 255  # the input, scaled
  many = {f"l{i:02d}": np.zeros((2, 4, 4)) for i in range(20)}
  assert record.spike_map_grid(images, many, max_layers=5)[1] == \
      ["l00", "l05", "l10", "l14", "l19"]
