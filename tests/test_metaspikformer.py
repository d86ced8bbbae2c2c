"""Meta-SpikeFormer (V2, addendum A): counts, neurons, kd heads, conversion, analysis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spikejax import convert
from spikejax.analysis import energy, firing
from spikejax.models import MetaSpikformer, SpikeNeuron, create_model, get_variant, list_models
from spikejax.models.metaspikformer import AttentionV2, BNAndPad
from spikejax.spiking import BinaryNeuron, SFANeuron

PINNED = {  # addendum A.4 (official code, 1000 classes, 224 px)
    ("metaspikformer_15m", False): 15_112_208, ("metaspikformer_15m", True): 15_473_208,
    ("metaspikformer_31m", False): 31_333_864, ("metaspikformer_31m", True): 31_814_864,
    ("metaspikformer_55m", False): 55_350_248, ("metaspikformer_55m", True): 55_991_248,
}
TINY = dict(embed_dims=(8, 16, 16, 16), strides=(2, 2, 2, 1, 1), num_classes=10, in_channels=1)


def _params(model):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name,kd", sorted(PINNED))
def test_param_counts_pinned(name, kd):
  assert _params(nnx.eval_shape(lambda: create_model(name, kd=kd))) == PINNED[name, kd]


def test_registry_and_the_v2_neuron():
  assert {"metaspikformer_15m", "metaspikformer_31m", "metaspikformer_55m"} <= set(list_models())
  assert get_variant("metaspikformer_8_384").name == "metaspikformer_31m"   # official names
  assert get_variant("metaspikformer_8_512").name == "metaspikformer_55m"
  m = nnx.eval_shape(lambda: create_model("metaspikformer_15m", time_steps=4))
  assert isinstance(m, MetaSpikformer)
  neurons = [(p, n) for p, n in nnx.iter_modules(m) if isinstance(n, SpikeNeuron)]
  assert len(neurons) == 77 and all(isinstance(n, BinaryNeuron) for _, n in neurons)
  for p, n in neurons:   # addendum A.1: LIF tau 2, decay_input, hard reset to 0, detach, sigmoid 4
    d = n.dynamics
    assert (d.tau, d.reset, d.v_reset, d.decay_input, d.detach_reset) == (2.0, "hard", 0.0,
                                                                         True, True)
    assert n.surrogate == "sigmoid" and n.surrogate_alpha == 4.0 and n.time_steps == 4
    assert n.threshold == (0.5 if p[-1] == "attn_spike" else 1.0), p
  attn = [a for _, a in nnx.iter_modules(m) if isinstance(a, AttentionV2)]
  assert len(attn) == 8 and all(a.scale == 0.125 for a in attn)


def test_sfa_row_uses_the_v3_attention_conventions():
  m = nnx.eval_shape(lambda: create_model("metaspikformer_15m", firing="sfa",
                                          temporal="independent"))
  neurons = [n for _, n in nnx.iter_modules(m) if isinstance(n, SpikeNeuron)]
  assert all(isinstance(n, SFANeuron) for n in neurons)
  attn = [a for _, a in nnx.iter_modules(m) if isinstance(a, AttentionV2)]
  assert attn[0].scale == pytest.approx((256 // 8) ** -0.5)       # block3, dim 256, 8 heads
  assert attn[-1].scale == pytest.approx((360 // 8) ** -0.5)      # block4, dim 360
  assert all(a.attn_spike.norm == 4.0 for a in attn)               # plain SN (norm D)


def test_kd_heads_and_input_errors():
  model = create_model("metaspikformer_15m", kd=True, time_steps=2, rngs=nnx.Rngs(0), **TINY)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)
  logits, logits_kd = model(x)                       # train mode: both heads
  assert logits.shape == logits_kd.shape == (2, 10)
  model.eval()
  both = model(x)
  assert both.shape == (2, 10)
  # eval: the mean of both heads on the same spikes (BN now on running statistics)
  pooled = jnp.mean(model.forward_features(x), axis=(1, 2))
  s = model.head_spike(pooled)
  want = (model.head(s).reshape(2, 2, 10).mean(0) + model.head_kd(s).reshape(2, 2, 10).mean(0)) / 2
  np.testing.assert_allclose(np.asarray(both), np.asarray(want), rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="channels on the last axis"):
    model(jnp.zeros((2, 1, 16, 16)))
  with pytest.raises(ValueError, match="time_steps=2"):
    model(jnp.zeros((3, 2, 16, 16, 1)))
  with pytest.raises(TypeError, match="unknown option 'depth' for a Meta-SpikeFormer"):
    create_model("metaspikformer_15m", depth=3)


def test_bn_and_pad_frames_with_bn_of_zero_from_running_statistics():
  layer = BNAndPad(3)
  layer.bn.scale[...] = jnp.array([1.0, 2.0, 0.5])
  layer.bn.bias[...] = jnp.array([0.1, -0.2, 0.3])
  layer.bn.mean[...] = jnp.array([0.5, -1.0, 2.0])
  layer.bn.var[...] = jnp.array([1.0, 4.0, 0.25])
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 3)), jnp.float32)
  y = layer(x)                       # train mode: interior on batch statistics
  assert y.shape == (2, 6, 6, 3)
  bn = layer.bn                      # the frame: BN(0) with the just-updated running statistics
  frame = np.asarray(bn.bias[...] - bn.mean[...] * bn.scale[...] / jnp.sqrt(bn.var[...] + 1e-5))
  for edge in (y[:, 0], y[:, -1], y[:, :, 0], y[:, :, -1]):
    np.testing.assert_allclose(np.asarray(edge), np.broadcast_to(frame, edge.shape), rtol=1e-6)
  xm = np.asarray(x).reshape(-1, 3)
  want = (xm - xm.mean(0)) / np.sqrt(xm.var(0) + 1e-5) * np.asarray(bn.scale[...]) + \
      np.asarray(bn.bias[...])
  np.testing.assert_allclose(np.asarray(y[:, 1:-1, 1:-1]).reshape(-1, 3), want, rtol=1e-5,
                             atol=1e-5)
  # no gradient reaches gamma/beta through the frame (official: weight/bias detached)
  layer.bn.use_running_average = True
  frame_grad = nnx.grad(lambda m: jnp.sum(m(x)[:, 0]))(layer)
  inner_grad = nnx.grad(lambda m: jnp.sum(m(x)[:, 1:-1, 1:-1]))(layer)
  for name in ("scale", "bias"):
    np.testing.assert_array_equal(np.asarray(frame_grad.bn[name][...]), 0.0)
    assert np.all(np.asarray(inner_grad.bn[name][...]) != 0.0)


def test_official_state_dict_round_trip():
  model = create_model("metaspikformer_15m", time_steps=2, rngs=nnx.Rngs(0), **TINY)
  sd = convert.export_state_dict(model)
  assert "block3.0.attn.q_conv.0.body.1.bn.running_mean" in sd          # official V2 keys
  assert "block3.0.attn.q_conv.0.body.2.2.weight" in sd and "block3.0.attn.q_conv.1.bias" in sd
  assert "ConvBlock1_1.0.Conv.dwconv.weight" in sd and "downsample1_1.encode_conv.bias" in sd
  other = create_model("metaspikformer_15m", time_steps=2, rngs=nnx.Rngs(1), **TINY)
  convert.load_official_state_dict(other, sd)
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(other))):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), str(p))
  assert convert.official_v2_neuron_name(("conv_block1_1", 0, "sep_conv", "spike1")) == \
      "ConvBlock1_1.0.Conv.lif1"
  assert convert.official_v2_neuron_name(("block4", 1, "attn", "attn_spike")) == \
      "block4.1.attn.attn_lif"
  assert convert.official_v2_neuron_name(("head_spike",)) == "lif"


def test_firing_and_energy_for_the_lif_baseline():
  """The analysis tools read V2 through the core mechanism: binary rates, AC for spikes,
  MAC for RepConv's depthwise conv (it sees BN outputs, not spikes)."""
  model = create_model("metaspikformer_15m", time_steps=2, rngs=nnx.Rngs(0), **TINY)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 1)), jnp.float32) * 3
  model.eval()
  fs = firing.collect(model, [x])
  assert len(fs.layers) == 77
  assert all(lf.histogram.shape[1] == 2 for lf in fs.layers.values())     # binary spikes
  assert 0 < fs.mean_rate() < 1
  rep = energy.energy_report(model, (1, 16, 16, 1), fs)
  assert rep["time_steps"] == 2 and rep["snn_energy_mj"] > 0 and rep["sops"] > 0
  rows = rep["layers"]
  assert rows[0]["op"] == "MAC"
  assert any(r["op"] == "MAC" and ".body.2.0" in r["layer"] for r in rows[1:])   # RepConv dw
  assert any(r["op"] == "AC" and r["kind"] == "matmul" for r in rows)          # K^T V


def test_imagenet_stage2_recipe_runlocal_on_mock_data(tmp_path):
  """Stage 2 of the V2 recipe (kd heads, T = 2 in smoke mode, binary LIF) trains, evaluates and
  checkpoints through the one loop on tfds mock data."""
  import tensorflow_datasets as tfds
  from configs import imagenet_metaspikformer
  from spikejax.train import trainer
  c = imagenet_metaspikformer.get_config("stage2,runlocal")
  with tfds.testing.mock_data(num_examples=32):
    s = trainer.train_and_evaluate(c, str(tmp_path))
  assert s["step"] == 2 and s["checkpoint"].endswith("/2")
  assert np.isfinite(s["history"][-1]["test_loss"])
