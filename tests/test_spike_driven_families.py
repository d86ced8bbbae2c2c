"""Spike-driven execution, firing statistics and energy for every family (spec §1.4, §7).

Spike-driven inference is an execution mode of the same modules (neurons swapped for binary
sub-step IF neurons), so it must equal integer inference for each registered family without
code per family: the LARGE model the main job trains, the MIM encoder, the DVS model at
T = 2, Meta-SpikeFormer with SFA neurons and the spiking Semantic FPN (rounding half up,
float64).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spikejax.analysis import energy, firing, spike_driven
from spikejax.models import create_model, predict
from spikejax.spiking import SpikeTrain, record, to_spike_driven

LARGE = dict(embed_dims=(8, 16, 32), depth=2, strides=(2, 2, 2, 1), num_classes=10,
             in_channels=1, layer_scale=0.5, drop_path_rate=0.0)
MAE = dict(embed_dims=(8, 16, 16), depth=2, strides=(2, 2, 2, 1), img_size=(32, 32),
           decoder_dim=16, decoder_depth=1, decoder_heads=4, in_channels=1)
DVS = dict(embed_dims=(8, 16, 16, 16), strides=(2, 2, 2, 1, 1), num_classes=10,
           time_steps=2, rounding="half_up", layer_scale=0.5)


V2_SFA = dict(embed_dims=(8, 16, 16, 16), strides=(2, 2, 2, 1, 1), num_classes=10, in_channels=1,
              firing="sfa", temporal="independent", rounding="half_up", time_steps=1)


def _warm_bn(model, x):
  """Train-mode forwards until the BatchNorm running statistics are near the batch's (momentum
  0.1: 0.9^25 < 0.1), so eval-mode membranes are normalised and most layers fire."""
  model.train()
  step = nnx.jit(predict)
  for _ in range(25):
    step(model, x)
  model.eval()


# the spiking Semantic FPN (addendum B.3): backbone, QFPN and QFPNHead, logits per pixel
SEMFPN = dict(embed_dims=(8, 16, 16, 16), block_depths=(1, 1), num_classes=5, in_channels=1,
              neck_channels=8, head_channels=8, rounding="half_up", layer_scale=0.5)

SEMFPN_LARGE = dict(embed_dims=(8, 16, 32), depth=2, num_classes=5, in_channels=1,
                    neck_channels=8, head_channels=8, layer_scale=0.5, drop_path_rate=0.0)

# the spiking Mask R-CNN (addendum B.2): backbone, SpikeFPN, RPN, box and mask heads on the RoIs
# of the fixed-size inference (1000 proposal slots, 100 detection slots per image)
MASKRCNN = dict(embed_dims=(8, 16, 16, 16), block_depths=(1, 1), num_classes=3, in_channels=1,
                num_heads=2, fpn_channels=8, fc_channels=16, rounding="half_up",
                layer_scale=0.5)

CASES = {
    "spikformer12_512": (lambda: create_model("spikformer12_512", rngs=nnx.Rngs(0), **LARGE),
                         (4, 32, 32, 1), 4),
    "spikmae_12_512": (lambda: create_model("spikmae_12_512", rngs=nnx.Rngs(1), **MAE),
                       (4, 32, 32, 1), 4),
    "espikeformer_dvs": (lambda: create_model("espikeformer_dvs", rngs=nnx.Rngs(2), **DVS),
                         (2, 4, 32, 32, 2), 4),
    # Meta-SpikeFormer with SFA neurons: the "+ SFA training" row of Table V (addendum A.4)
    "metaspikformer_sfa": (lambda: create_model("metaspikformer_15m", rngs=nnx.Rngs(4), **V2_SFA),
                           (4, 32, 32, 1), 4),
    "semfpn_espikeformer": (lambda: create_model("semfpn_espikeformer_m", rngs=nnx.Rngs(5),
                                                 **SEMFPN), (2, 32, 32, 1), 4),
    "semfpn_spikformer": (lambda: create_model("semfpn_spikformer12_512", rngs=nnx.Rngs(6),
                                               **SEMFPN_LARGE), (2, 32, 32, 1), 4),
    "maskrcnn_espikeformer": (lambda: create_model("maskrcnn_espikeformer_l", rngs=nnx.Rngs(7),
                                                   **MASKRCNN), (2, 32, 32, 1), 4),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
  build, shape, d = CASES[request.param]
  model = build()
  x = jax.random.normal(jax.random.key(3), shape)
  _warm_bn(model, x)
  return request.param, model, x, d


def test_spike_driven_equals_integer_float64(case):
  name, model, x, d = case
  res = spike_driven.compare(model, x, float64=True)
  assert res["rounding"] == "half_up"
  assert res["mismatched_activations"] == 0, res["mismatched_layers"]
  scale = max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(res["logits_integer"]))
  assert scale > 0
  assert res["max_abs_logit_diff"] <= 1e-9 * max(scale, 1.0), (name, res["max_abs_logit_diff"])
  _, stats = spike_driven.run(model, x)
  T = model.spike.time_steps
  assert stats["schedule"] == {"time_steps": T, "sub_steps": d}
  names = [n for n, _ in record.spiking_layers(model)]
  assert set(stats["spikes"]) == set(names)
  firing_layers = 0
  for layer, s in stats["spikes"].items():
    s = np.asarray(s)
    assert s.shape == (T, d), layer
    assert np.all(np.diff(s, axis=1) <= 0), (layer, s)      # front-loaded trains
    firing_layers += s.sum() > 0
  assert firing_layers >= len(names) // 3, (firing_layers, len(names))   # not vacuous


def test_spike_counts_equal_firing_histograms(case):
  """Binary spikes summed over sub-steps == the integer activations firing.collect sees."""
  name, model, x, _ = case
  _, stats = spike_driven.run(model, x)
  fs = firing.collect(model, [x])
  assert set(fs.layers) == set(stats["spikes"]), name
  batch = x.shape[1] if x.ndim == 5 else x.shape[0]
  for layer, lf in fs.layers.items():
    hist = lf.histogram
    assert hist.sum() == stats["neurons"][layer] * batch * model.spike.time_steps, layer
    assert float((hist * np.arange(hist.shape[1])).sum()) == float(
        np.asarray(stats["spikes"][layer]).sum()), layer


def test_energy_report(case):
  name, model, x, _ = case
  fs = firing.collect(model, [x])
  shape = (1,) + tuple(x.shape[-3:])
  rep = energy.energy_report(model, shape, fs)
  rows = rep["layers"]
  assert rows[0]["op"] == "MAC" and rows[0]["input"] is None          # the stem sees the image
  spiking = {n for n, _ in record.spiking_layers(model)}
  ac = [r for r in rows if r["op"] == "AC"]
  assert ac and all(r["input"] in spiking for r in ac)
  assert {r["kind"] for r in rows} >= {"conv", "matmul"}
  # every spiking layer feeds some synapse or spike product; a product of two trains is
  # weighted by its first operand's rate (spec §7): Q K^T by Q (E-SDSA), K^T V by K (LARGE)
  fed = {r["input"] for r in ac}
  other = ("attn.k_spike" if name in ("espikeformer_dvs", "semfpn_espikeformer",   # E-SDSA
                                      "maskrcnn_espikeformer")
           else "attn.v_spike")
  second = {n for n in spiking if n.endswith(other)}
  assert spiking - second <= fed, spiking - second - fed
  T = model.spike.time_steps
  want = sum(r["macs"] * T * fs.layers[r["input"]].mean for r in ac)
  np.testing.assert_allclose(rep["sops"], want, rtol=1e-9)
  assert 0 < rep["snn_energy_mj"] and rep["ann_energy_mj"] > 0
  assert rep["time_steps"] == T and rep["spike_max"] == 4
  if name.startswith(("spik", "semfpn_spik")):   # LARGE: RepConv's 2nd conv sees reals: MACs
    assert any(r["op"] == "MAC" and ".conv2." in r["layer"] for r in rows[1:]), name
  if name.startswith("maskrcnn"):   # B.5: RoIAlign and fc_cls / fc_reg are MACs, per image
    macs = {r["layer"]: r["macs"] for r in rows if r["op"] == "MAC"}
    assert {"bbox_roi_align", "mask_roi_align", "bbox_head.fc_cls", "bbox_head.fc_reg"} <= set(macs)
    assert macs["bbox_head.fc_cls"] == 16 * 4 * 1000       # (fc 16 -> 3 + 1) x 1000 proposals
    assert macs["mask_roi_align"] == 100 * 14 * 14 * 8 * 4 * 4   # 100 detections, 2 x 2 samples
    assert sum(r["layer"] == "rpn_head.rpn_conv" for r in rows) == 5   # shared over 5 levels


def test_spike_trains_only_reach_synapses():
  """A train fed to a non-synapse op is a clear error, not a silent integer fallback."""
  train = SpikeTrain(jnp.ones((4, 2, 3)), 0.25)
  with pytest.raises(TypeError, match="not a synapse"):
    jnp.exp(train)
  assert train.reshape(6).shape == (6,) and train.transpose(1, 0).shape == (3, 2)
  np.testing.assert_array_equal(np.asarray(train.value()), np.ones((2, 3)))


def test_to_spike_driven_swaps_every_neuron():
  model = create_model("spikformer12_512", rngs=nnx.Rngs(0), **LARGE)
  before = [n for n, _ in record.spiking_layers(model)]
  graphdef, state = nnx.split(model)
  copy = to_spike_driven(nnx.merge(graphdef, state))
  from spikejax.spiking import SubstepIF
  subs = [(n, m) for n, m in record.spiking_layers(copy) if isinstance(m, SubstepIF)]
  assert [n for n, _ in subs] == before
  # the original model is untouched
  assert not any(isinstance(m, SubstepIF) for _, m in record.spiking_layers(model))


FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not __import__("os").path.isdir(FMNIST),
                    reason="apt-get install -y dataset-fashion-mnist")
def test_analysis_clis_on_a_default_config_workdir(tmp_path, capsys):
  """``python -m spikejax.analysis.{energy,spike_driven} --checkpoint WORKDIR`` on a workdir of
  the default Fashion-MNIST config (``spikformer12_512``, the main job's model) in smoke mode."""
  import json
  from configs import fashion_mnist
  from spikejax.analysis import energy as energy_cli
  from spikejax.train import trainer
  c = fashion_mnist.get_config("runlocal")
  assert c.model_name == "spikformer12_512"
  c.progress_bar = False
  c.max_train_steps = 2
  workdir = str(tmp_path / "fmnist")
  trainer.train_and_evaluate(c, workdir)
  capsys.readouterr()
  assert energy_cli.main(["--checkpoint", workdir, "--batches", "1", "--batch-size", "16",
                          "--json"]) == 0
  rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rep["model"] == "spikformer12_512" and rep["snn_energy_mj"] > 0
  assert rep["firing"]["images"] == 16 and 0 < rep["firing"]["mean_rate"] < 4
  assert rep["image_shape"] == [1, 32, 32, 1] and rep["sops"] > 0
  assert spike_driven.main(["--checkpoint", workdir, "--batches", "1", "--batch-size", "16",
                            "--float64", "--json"]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res["rounding"] == "half_up" and res["images"] == 16 and res["float64"]
  assert res["mismatched_activations"] == 0 and res["argmax_agree"] == 1.0
  assert res["max_abs_logit_diff"] <= 1e-9
  assert np.asarray(res["spikes_per_substep"]).shape == (1, 4)
