"""E-SpikeFormer zoo: parameter counts, API, options and input errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spikejax.models import (STAGES, count_params, create_model, get_variant, list_models)

PINNED = {  # spec §3, 1000 classes; the DVS model (spec §6.2) with its 300 classes
    "espikeformer_dvs": 18_740_004,
    "espikeformer_t": 2_702_048,
    "espikeformer_s": 5_105_608,
    "espikeformer_m": 10_023_112,
    "espikeformer_l": 18_987_504,
}


def abstract_params(name, **kw):
  model = nnx.eval_shape(lambda: create_model(name, **kw))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name,count", sorted(PINNED.items()))
def test_param_counts_pinned(name, count):
  assert abstract_params(name) == count


@pytest.mark.parametrize("alias,name", [
    ("espikeformer_5m", "espikeformer_s"), ("espikeformer_10m", "espikeformer_m"),
    ("espikeformer_19m", "espikeformer_l"), ("Efficient_Spiking_Transformer_t", "espikeformer_t"),
    ("Efficient_Spiking_Transformer_l", "espikeformer_l")])
def test_aliases_resolve(alias, name):
  assert get_variant(alias).name == name
  assert alias not in list_models() and name in list_models()
  assert alias in list_models(include_aliases=True)


def test_unknown_model_name():
  with pytest.raises(ValueError, match="unknown model 'espikeformer_xl'.*Available"):
    create_model("espikeformer_xl")


def test_unknown_option():
  with pytest.raises(TypeError, match="unknown option 'depth'"):
    create_model("espikeformer_t", depth=3)


@functools.lru_cache(maxsize=None)
def tiny(num_classes=10, **kw):
  return create_model("espikeformer_t", num_classes=num_classes, rngs=nnx.Rngs(0), **dict(kw))


def test_forward_shapes_and_stages():
  model = tiny()
  model.eval()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  logits, stages = nnx.jit(lambda m, x: (m(x), m.stage_features(x)))(model, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert sorted(stages) == sorted(STAGES)
  assert stages["downsample1_1"].shape == (2, 32, 32, 12)
  assert stages["block3"].shape == (2, 4, 4, 96)
  assert stages["block4"].shape == (2, 4, 4, 128)


def test_input_errors_name_what_was_expected():
  model = tiny()
  with pytest.raises(ValueError, match="rank 3"):
    model(jnp.zeros((64, 64, 3)))
  with pytest.raises(ValueError, match="NCHW.*transpose"):
    model(jnp.zeros((2, 3, 64, 64)))
  with pytest.raises(ValueError, match="expected 3 channels"):
    model(jnp.zeros((2, 64, 64, 1)))
  with pytest.raises(ValueError, match="frames on axis 0.*time_steps=1"):
    model(jnp.zeros((3, 2, 64, 64, 3)))


def test_small_image_strides():
  model = tiny(strides=(1, 1, 2, 2, 1), in_channels=1)
  model.eval()
  stages = nnx.jit(lambda m, x: m.stage_features(x))(model, jnp.zeros((2, 28, 28, 1)))
  assert stages["block3"].shape == (2, 7, 7, 96)
  # resolutions not divisible by the total stride follow PyTorch's conv arithmetic
  model = tiny(strides=(2, 2, 2, 1, 1), in_channels=1)
  model.eval()
  stages = nnx.jit(lambda m, x: m.stage_features(x))(model, jnp.zeros((2, 28, 34, 1)))
  assert stages["downsample1_1"].shape[1:3] == (14, 17)
  assert stages["block3"].shape[1:3] == (4, 5)
  with pytest.raises(ValueError, match="strides must be 5 values"):
    create_model("espikeformer_t", strides=(2, 2, 2))


def test_bad_neuron_options_fail_at_construction():
  with pytest.raises(ValueError, match="spike_max"):
    create_model("espikeformer_t", spike_max=0)
  with pytest.raises(ValueError, match="temporal"):
    create_model("espikeformer_t", temporal="lif")


def test_spike_max_changes_quantiser():
  model = tiny(spike_max=8, rounding="half_up", window="open")
  neuron = model.block3[0].attn.q_spike
  y = neuron(jnp.asarray([[0.5, 7.6, 9.0]]))
  np.testing.assert_array_equal(np.asarray(y), [[1 / 8, 1.0, 1.0]])
  head = model.head_spike(jnp.asarray([[2.5, 9.0]]))
  np.testing.assert_array_equal(np.asarray(head), [[3.0, 8.0]])


MICRO = dict(embed_dims=(8, 16, 16, 16), block_depths=(1, 1))


@pytest.mark.parametrize("kw", [dict(time_steps=2, temporal="lif_hard", firing="binary"),
                                dict(time_steps=3, temporal="if_soft"), dict(time_steps=2)])
def test_multi_timestep_and_binary_modes_run_and_differentiate(kw):
  model = create_model("espikeformer_t", num_classes=10, strides=(1, 2, 2, 2, 1), **MICRO, **kw)
  model.train()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)

  def loss(m):  # cross-entropy: its gradient never vanishes even if no spike reaches the head
    return -jnp.mean(jax.nn.log_softmax(m(x))[:, 0])

  val, grads = nnx.jit(nnx.value_and_grad(loss))(model)
  if True:
    assert np.isfinite(float(val))
    body = nnx.state(grads["block3"])
    gnorm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(body))
    assert gnorm > 0, "no gradient reached the transformer blocks"
  # time-major frames (T, B, H, W, C)
  model.eval()
  T = kw["time_steps"]
  assert nnx.jit(lambda m, x: m(x))(model, jnp.zeros((T, 3, 16, 16, 3))).shape == (3, 10)


def test_bfloat16_compute():
  model = create_model("espikeformer_t", num_classes=10, dtype=jnp.bfloat16, **MICRO)
  model.eval()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  out = nnx.jit(lambda m, x: m(x))(model, x)
  assert np.all(np.isfinite(np.asarray(out)))
  assert model.block3[0].attn.q_conv.conv.kernel[...].dtype == jnp.float32


def test_count_params_matches_abstract():
  assert count_params(tiny()) == abstract_params("espikeformer_t", num_classes=10)


def test_ann_twin_replaces_every_neuron_by_relu():
  """mode 'ann' (launch/aot_compile.py --ann_twin): same parameters, ReLU where SFA fired."""
  from spikejax.models.from_config import MODES
  from spikejax.spiking import ReLUNeuron, SFANeuron
  twin = create_model("espikeformer_t", num_classes=10, **MICRO, **MODES["ann"])
  assert count_params(twin) == count_params(create_model("espikeformer_t", num_classes=10, **MICRO))
  kinds = {type(m) for _, m in nnx.iter_graph(twin) if isinstance(m, (ReLUNeuron, SFANeuron))}
  assert kinds == {ReLUNeuron}
  neuron = twin.block3[0].attn.q_spike
  np.testing.assert_array_equal(np.asarray(neuron(jnp.asarray([[-1.0, 0.3, 7.6]]))),
                                np.float32([[0.0, 0.3, 7.6]]))  # no quantiser, no ceiling, no 1/D
  with pytest.raises(ValueError, match="no spike-driven execution"):
    neuron.substep()
  with pytest.raises(ValueError, match="temporal='independent'"):
    create_model("espikeformer_t", firing="relu", temporal="lif_hard")
  twin.train()
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 16, 16, 3)), jnp.float32)
  g = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(twin)
  assert sum(float(jnp.sum(v ** 2)) for v in jax.tree.leaves(nnx.state(g["block3"]))) > 0
