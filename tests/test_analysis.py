"""Spike-driven inference, firing statistics, energy and effective rank (spec §1.4, §7)."""

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import golden_files, load_golden
from spikejax.analysis import energy, firing, rank, spike_driven
from spikejax.convert import load_official_state_dict
from spikejax.models import SpikeNeuron, create_model
from spikejax.spiking import record
from spikejax.train.checkpoints import load_trained, save_model
from spikejax.train.trainer import SplitTrainer

TINY = dict(num_classes=10, in_channels=1, strides=(2, 2, 2, 1, 1), embed_dims=(8, 16, 16, 16))


def _tiny(**kw):
  return create_model("espikeformer_t", rngs=nnx.Rngs(0), **{**TINY, **kw})


def _images(n=4, seed=1, t=None):
  shape = (n, 32, 32, 1) if t is None else (t, n, 32, 32, 1)
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
  """A tiny SFA model trained for 12 steps (half_up rounding), saved as a model directory."""
  model = _tiny(rounding="half_up")
  model.train()
  opt = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)
  runner = SplitTrainer(model, opt)
  rng = np.random.default_rng(0)
  for i in range(12):
    y = rng.integers(0, 10, 16)
    x = rng.normal(size=(16, 32, 32, 1)).astype(np.float32) + y[:, None, None, None] / 5
    runner.step({"image": jnp.asarray(x), "label": jnp.asarray(y),
                 "target": jax.nn.one_hot(y, 10)})
  runner.sync()
  out = tmp_path_factory.mktemp("trained") / "model"
  save_model(str(out), model, model_name="espikeformer_t", model_kwargs={**TINY,
                                                                         "rounding": "half_up"})
  return str(out)


# --------------------------------------------------------------------------- spike-driven


def test_trained_checkpoint_spike_driven_equals_integer(trained_dir):
  model, config = load_trained(trained_dir)
  assert config is None and model.spike.rounding == "half_up"
  x = _images(8)
  res = spike_driven.compare(model, x)
  assert res["mismatched_activations"] == 0
  assert res["max_rel_logit_diff"] < 1e-5, res["max_rel_logit_diff"]
  assert res["argmax_agree"] == 1.0
  # float64: the summation order no longer moves any membrane across a quantiser step
  res64 = spike_driven.compare(model, x, float64=True)
  assert res64["dtype"] == "float64" and res64["max_abs_logit_diff"] <= 1e-12
  # The binary spikes are genuinely front-loaded trains: per sub-step counts never increase.
  _, stats = spike_driven.run(model, x)
  assert stats["schedule"] == {"time_steps": 1, "sub_steps": 4}
  some_fire = 0
  for name, s in stats["spikes"].items():
    s = np.asarray(s)
    assert s.shape == (1, 4), name
    assert np.all(np.diff(s, axis=1) <= 0), (name, s)
    some_fire += s.sum() > 0
  assert some_fire > 10


def test_spike_counts_match_firing_histograms(trained_dir):
  """Binary spikes summed over sub-steps == integer activations from the jitted eval step."""
  model, _ = load_trained(trained_dir)
  x = _images(8, seed=3)
  _, stats = spike_driven.run(model, x)
  fs = firing.collect(model, [x])
  assert set(fs.layers) == set(stats["spikes"])
  assert len(fs.layers) == 105
  for name, layer in fs.layers.items():
    spikes = np.asarray(stats["spikes"][name])
    hist = layer.histogram
    assert hist.sum() == stats["neurons"][name] * 8, name
    total_int = float((hist * np.arange(hist.shape[1])).sum())
    assert spikes.sum() == total_int, name
    # NSFR(d) = spikes at sub-step d / neurons, both ways
    np.testing.assert_allclose(layer.nsfr, spikes / hist.sum(1, keepdims=True), rtol=1e-6)


def test_half_even_ties_are_counted():
  model = _tiny(rounding="half_even")
  sn = model.conv_block1_1[0].spike1
  u = jnp.asarray([[-1.0, 0.5, 1.5, 2.5, 3.49, 3.5, 4.0, 7.0]])
  sd = sn.substep()                     # the binary sub-step IF neuron of spike-driven mode
  walker = record.SpikeDrivenRecorder({id(sd): "conv_block1_1.0.spike1"})
  with record.spike_driven_recording(walker):
    train = sd(u).bits
  np.testing.assert_array_equal(np.asarray(train.sum(0))[0], [0, 1, 2, 3, 3, 4, 4, 4])
  np.testing.assert_array_equal(np.asarray(sn.counts(u))[0], [0, 0, 2, 2, 3, 4, 4, 4])
  assert int(walker.mismatch["conv_block1_1.0.spike1"]) == 2


def test_time_steps_schedule_and_temporal_membrane():
  """T x D: SFA with the soft-reset residual carried across T=2 real timesteps."""
  model = _tiny(rounding="half_up", time_steps=2, temporal="if_soft")
  model.train()
  nnx.jit(lambda m, x: m(x))(model, _images(8, t=2))    # non-trivial BN running stats
  x = _images(4, seed=5, t=2)
  res = spike_driven.compare(model, x)
  assert res["mismatched_activations"] == 0
  assert res["max_rel_logit_diff"] < 1e-5
  _, stats = spike_driven.run(model, x)
  assert stats["schedule"] == {"time_steps": 2, "sub_steps": 4}
  assert np.asarray(stats["spikes"]["block4.0.mlp.fc1_spike"]).shape == (2, 4)


def test_vanilla_binary_model_runs_spike_driven():
  model = _tiny(firing="binary", temporal="lif_hard", time_steps=2, tau=2.0)
  x = _images(4)
  res = spike_driven.compare(model, x)
  assert res["max_abs_logit_diff"] < 1e-5 and res["mismatched_activations"] == 0
  _, stats = spike_driven.run(model, x)
  assert stats["schedule"] == {"time_steps": 2, "sub_steps": 1}
  fs = firing.collect(model, [x])
  layer = fs.layers["block3.0.attn.q_spike"]
  assert layer.nsfr.shape == (2, 1) and layer.fractions.shape == (2,)


@pytest.mark.skipif(not golden_files(), reason="../shared/golden is absent")
@pytest.mark.parametrize("rounding", ["half_up"])   # half_even: same code path, ties unit-tested
def test_golden_model_spike_driven(rounding):
  """Official weights: spike-driven logits equal the integer model's (spec §1.4)."""
  path = [p for p in golden_files() if "espikeformer_t" in p.name][0]
  g = load_golden(path)
  sd = {k[len("state_dict/"):]: v for k, v in g.items() if k.startswith("state_dict/")}
  model = create_model(str(g["meta/model"]), num_classes=int(g["meta/num_classes"]),
                       rounding=rounding)
  load_official_state_dict(model, sd)
  res = spike_driven.compare(model, jnp.asarray(g["input"].transpose(0, 2, 3, 1)))
  if rounding == "half_up":
    assert res["mismatched_activations"] == 0
  # half_even: ties (none occur on this input) would be counted; logits must agree anyway
  assert res["max_rel_logit_diff"] < 1e-5, res
  assert res["argmax_agree"] == 1.0


# --------------------------------------------------------------------------- firing


def test_firing_statistics_sfa(trained_dir):
  model, _ = load_trained(trained_dir)
  x = _images(8)
  labels = np.arange(8) % 10
  batches = [{"image": x, "label": labels, "mask": np.ones(8)},
             {"image": x, "label": labels, "mask": np.r_[np.ones(5), np.zeros(3)]}]
  fs = firing.collect(model, batches)
  assert fs.images == 13 and fs.batches == 2 and 0.0 <= fs.accuracy <= 1.0
  for layer in fs.body():
    assert 0.0 <= layer.mean <= 4.0
    np.testing.assert_allclose(layer.fractions.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(layer.nonzero, 1 - layer.fractions[0])
    nsfr = layer.nsfr[0]
    assert nsfr.shape == (4,) and np.all(np.diff(nsfr) <= 1e-12)
    np.testing.assert_allclose(nsfr.sum(), layer.mean, rtol=1e-6)  # sum_d P(S>=d) = E[S]
  curve = fs.nsfr_curve()
  assert curve.shape == (4,) and np.all(np.diff(curve) <= 0)
  json.dumps(fs.as_dict())


# --------------------------------------------------------------------------- energy

SPEC_MACS = {  # spec §2.2 at 224 px: conv+linear G, stem M, attention M, total G
    "espikeformer_t": (1.0296, 22.13, 159.8, 1.189),
    "espikeformer_s": (1.8778, 29.50, 221.3, 2.099),
    "espikeformer_m": (3.9351, 44.26, 313.5, 4.249),
    "espikeformer_l": (7.2001, 59.01, 433.3, 7.633),
}


@pytest.mark.parametrize("name", sorted(SPEC_MACS))
def test_dense_macs_equal_spec_table(name):
  model = create_model(name, rngs=nnx.Rngs(0))
  rep = energy.energy_report(model, (1, 224, 224, 3))
  conv, stem, attn, total = SPEC_MACS[name]
  assert round(rep["dense_macs_conv_linear"] / 1e9, 4) == conv
  assert round(rep["stem_macs"] / 1e6, 2) == stem
  assert round(rep["dense_macs_attention"] / 1e6, 1) == attn
  assert round(rep["dense_macs"] / 1e9, 3) == total
  assert rep["snn_energy_mj"] is None
  np.testing.assert_allclose(rep["ann_energy_mj"], rep["dense_macs"] * 4.6e-9)


def test_energy_formula_with_rates(trained_dir):
  model, _ = load_trained(trained_dir)
  shape = (1, 32, 32, 1)
  names = [n for n, _ in firing.spiking_layers(model)]
  rep = energy.energy_report(model, shape, {n: 0.5 for n in names}, e_mac_pj=5.0, e_ac_pj=1.0)
  stem, total = rep["stem_macs"], rep["dense_macs"]
  np.testing.assert_allclose(rep["snn_energy_mj"], (5.0 * stem + 1.0 * 0.5 * (total - stem)) * 1e-9)
  fs = firing.collect(model, [_images(4)])
  rep = energy.energy_report(model, shape, fs)
  by_layer = {r["layer"]: r for r in rep["layers"]}
  fc1 = by_layer["block3.0.mlp.fc1_conv"]
  assert fc1["input"] == "block3.0.mlp.fc1_spike"
  np.testing.assert_allclose(fc1["input_rate"], fs.layers["block3.0.mlp.fc1_spike"].mean)
  np.testing.assert_allclose(fc1["energy_pj"], 0.9 * fc1["macs"] * fc1["input_rate"])
  assert rep["ann_over_snn"] > 1
  with pytest.raises(KeyError, match="no firing rate"):
    energy.energy_report(model, shape, {"head_spike": 1.0})


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="apt-get install -y dataset-fashion-mnist")
def test_evaluate_cli_scores_the_image_alone_and_its_views(trained_dir, capsys):
  from spikejax.analysis import cli
  from spikejax.analysis import evaluate as evaluate_tool
  argv = ["--checkpoint", trained_dir, "--config", "configs/fashion_mnist.py:runlocal",
          "--batches", "2", "--batch-size", "16", "--shift", "1", "--json"]
  assert evaluate_tool.main(argv) == 0
  rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rep["examples"] == 32 and set(rep) == {"examples", "single", "mirror", "mirror+shift1"}
  model, _ = load_trained(trained_dir)
  model.eval()
  args = argparse.Namespace(batches=2, batch_size=16)
  batches = list(cli.eval_batches(cli.load_config("configs/fashion_mnist.py:runlocal"), args))
  x = np.concatenate([b["image"] for b in batches])
  y = np.concatenate([b["label"] for b in batches])
  plain = np.asarray(model(jnp.asarray(x)))
  both = (plain + np.asarray(model(jnp.asarray(x[:, :, ::-1])))) / 2
  np.testing.assert_allclose(rep["single"]["accuracy"], np.mean(plain.argmax(-1) == y))
  np.testing.assert_allclose(rep["mirror"]["accuracy"], np.mean(both.argmax(-1) == y))
  ce = -jax.nn.log_softmax(both)[np.arange(32), y].mean()
  np.testing.assert_allclose(rep["mirror"]["loss"], ce, rtol=1e-5)
  assert 0.0 <= rep["mirror+shift1"]["accuracy"] <= 1.0
  with pytest.raises(SystemExit):
    evaluate_tool.main(argv[:-3] + ["--shift", "-1"])


def test_energy_cli_dense_json():
  out = subprocess.run([sys.executable, "-m", "spikejax.analysis.energy", "--model",
                        "espikeformer_t", "--resolution", "64", "--json"],
                       capture_output=True, text=True, check=True).stdout
  assert "E = E_MAC * T * FL_stem" in out and "dense MACs" in out
  rep = json.loads(out.strip().splitlines()[-1])
  assert rep["stem_macs"] == 7 * 7 * 3 * 12 * 32 * 32   # 7x7 stem, 3 -> c0/2, 64 px -> 32 px
  assert rep["snn_energy_mj"] is None


# --------------------------------------------------------------------------- effective rank


def test_effective_rank():
  np.testing.assert_allclose(rank.effective_rank(jnp.eye(6)), 6.0, rtol=1e-5)
  r1 = jnp.outer(jnp.arange(1.0, 9.0), jnp.arange(1.0, 5.0))
  np.testing.assert_allclose(rank.effective_rank(r1), 1.0, rtol=1e-4)
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, 16))        # NHWC maps -> (32, 16)
  e = float(rank.effective_rank(z))
  assert 1.0 < e <= 16.0
  # two equal singular values and one half as large: exp(H(0.4, 0.4, 0.2))
  d = jnp.diag(jnp.asarray([2.0, 2.0, 1.0]))
  p = np.array([0.4, 0.4, 0.2])
  np.testing.assert_allclose(rank.effective_rank(d), np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
  assert float(rank.effective_rank(jnp.zeros((4, 3)))) == 0.0
  with pytest.raises(ValueError, match="matrix"):
    rank.effective_rank(jnp.ones(5))
