"""Parity of Meta-SpikeFormer (V2) with the official PyTorch model (addendum A) on the
``Spiking_vit_MetaFormer`` files of ../shared/golden (spikingjelly 0.0.0.0.12 multi-step LIF).

Official stage features are ``(T, B, C, H, W)``; ours are time-merged NHWC ``(T*B, H, W, C)``,
the same order (time-major). Eval is compared in float32 and float64; the train pass in float64 (see its test).
"""

import pathlib

import numpy as np
import optax
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from conftest import golden_files, load_golden, production_compiler
from spikejax.convert import (export_state_dict, load_official_state_dict,
                              official_stage_name, official_v2_neuron_name)
from spikejax.models import STAGES, SpikeNeuron, as_dtype, create_model

FILES = golden_files("metaspikformer")
pytestmark = pytest.mark.skipif(not FILES, reason="no Meta-SpikeFormer file in ../shared/golden")


def _model(g):
  sd = {k[len("state_dict/"):]: v for k, v in g.items() if k.startswith("state_dict/")}
  model = create_model("metaspikformer_15m", num_classes=int(g["meta/num_classes"]),
                       embed_dims=tuple(int(d) for d in g["meta/embed_dim"]),
                       time_steps=int(g["meta/time_steps"]))
  load_official_state_dict(model, sd)
  return model, {k: v.shape for k, v in sd.items()}


def _time_merged(r):
  """Official ``(T, B, C, H, W)`` -> ours ``(T*B, H, W, C)``."""
  return r.transpose(0, 1, 3, 4, 2).reshape((-1,) + r.shape[3:] + r.shape[2:3])


@pytest.fixture(scope="module", params=FILES, ids=lambda p: p.stem)
def golden(request, golden_dir):
  return load_golden(request.param)


def test_eval_logits_every_stage_and_firing_rates(golden):
  g = golden
  model, _ = _model(g)
  model.eval()
  x = g["input"].transpose(0, 2, 3, 1)
  neurons = [(p, m) for p, m in nnx.iter_modules(model) if isinstance(m, SpikeNeuron)]
  assert len(neurons) == 77  # addendum A.3: 4 CB x 4 + 8 TB x 7 + 4 downsamplers + 1 head
  with production_compiler():   # the float32 programs users run
    logits, stages = nnx.jit(lambda m, x: (m(x), m.stage_features(x)))(model, jnp.asarray(x))
    for _, m in neurons:
      m.record = True
    inter = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(x)[1])(model, jnp.asarray(x))
  ref = g["logits_eval"]
  logits = np.asarray(logits)
  np.testing.assert_array_equal(logits.argmax(-1), ref.argmax(-1))
  assert np.abs(logits - ref).max() <= 1e-5 * np.abs(ref).max()
  for name in STAGES:
    r = _time_merged(g["features_eval/" + official_stage_name(name)])
    got = np.asarray(stages[name])
    assert got.shape == r.shape, name
    err = np.abs(got - r).max() / np.abs(r).max()
    assert err <= 1e-5, f"stage {name}: relative error {err}"
  rates = {}
  for path, v in nnx.to_flat_state(inter):
    h = np.asarray(v.get_value()[0] if isinstance(v.get_value(), tuple) else v.get_value())
    assert h.shape == (int(g["meta/time_steps"]), 2)   # (T, top + 1): binary spikes
    rates[official_v2_neuron_name(path[:-1])] = h[:, 1].sum() / h.sum()
  ref_rates = {k[len("firing_rate_eval/"):]: float(v) for k, v in g.items()
               if k.startswith("firing_rate_eval/")}
  assert set(rates) == set(ref_rates)
  for k, v in ref_rates.items():   # exact counts: the same spikes as the official model
    assert rates[k] == pytest.approx(v, abs=1e-7), k


def test_eval_stages_float64(golden):
  """In float64 no membrane sits within rounding error of a threshold: every stage to 1e-6."""
  g = golden
  model, _ = _model(g)
  model.eval()
  with jax.enable_x64(True):
    stages = nnx.jit(lambda m, x: m.stage_features(x))(
        as_dtype(model, jnp.float64), jnp.asarray(g["input"].transpose(0, 2, 3, 1), jnp.float64))
    stages = {k: np.asarray(v) for k, v in stages.items()}
  for name in STAGES:
    r = _time_merged(g["features_eval/" + official_stage_name(name)])
    err = np.abs(stages[name] - r).max() / np.abs(r).max()
    assert err <= 1e-6, f"stage {name}: relative error {err}"


REFERENCE64 = pathlib.Path(__file__).parent / "data" / "v2_official_float64_train.npz"


def test_train_pass_float64_against_the_official_code_in_float64(golden):
  """Train mode (batch statistics, BNAndPad frames from the updated running statistics,
  surrogate gradients through LIF over T): logits, loss, every gradient, every BN's running
  statistics and every LIF's spike count against the official train pass in float64
  (tests/data/make_v2_float64_reference.py; the golden file's float32 train pass is not
  reproducible in another float order, see that script)."""
  g = golden
  ref = dict(np.load(REFERENCE64))
  model, shapes = _model(g)
  with jax.enable_x64(True):
    model = as_dtype(model, jnp.float64)
    model.train()
    for _, m in nnx.iter_modules(model):
      if isinstance(m, SpikeNeuron):
        m.record = True
    x = jnp.asarray(g["input"].transpose(0, 2, 3, 1), jnp.float64)
    y = jnp.asarray(g["labels"])

    def loss_fn(m):
      logits, inter = nnx.capture(m, nnx.Intermediate)(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, inter)

    (loss, (logits, inter)), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    loss, logits = float(loss), np.asarray(logits)
    got = export_state_dict(grads, shapes)
    state = export_state_dict(model, shapes)
    spikes = {official_v2_neuron_name(p[:-1]): float(np.asarray(v.get_value()[0])[:, 1].sum())
              for p, v in nnx.to_flat_state(inter)}
  np.testing.assert_allclose(loss, float(ref["loss_train"]), rtol=1e-7)   # float32 logits
  r = ref["logits_train"]
  assert np.abs(logits - r).max() <= 1e-6 * np.abs(r).max()   # the head returns float32
  assert {k[len("spikes_train/"):]: float(v) for k, v in ref.items()
          if k.startswith("spikes_train/")} == spikes
  norms = {k[len("grad_norm/"):]: float(v) for k, v in ref.items() if k.startswith("grad_norm/")}
  assert set(norms) == set(got)
  total = np.sqrt(sum(v ** 2 for v in norms.values()))
  for i, k in enumerate(sorted(norms)):
    d = np.random.default_rng(i).standard_normal(got[k].shape)   # as the reference script
    assert abs(np.linalg.norm(got[k]) - norms[k]) <= 1e-5 * norms[k] + 1e-9 * total, k
    proj = float(ref["grad_proj/" + k])
    assert abs(float((got[k] * d).sum()) - proj) <= 1e-5 * norms[k] * np.sqrt(d.size) + \
        1e-9 * total, k
  n = 0
  for k, v in ref.items():
    if k.startswith("running_after_train/"):
      np.testing.assert_allclose(state[k[len("running_after_train/"):]], v, rtol=1e-9,
                                 atol=1e-12, err_msg=k)
      n += 1
  assert n == 2 * 133   # every BatchNorm: 4 CB x 4 + 8 TB x (4 x 3 + 2) + 5 downsamplers
