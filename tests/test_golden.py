"""Parity with the official PyTorch model on every file of ../shared/golden (spec §2, §9).

Eval mode runs jitted. Train mode (batch statistics) runs in float64: in train mode a single
activation that lies within one float32 ulp of a rounding tie flips when XLA's arithmetic
differs from PyTorch's by an ulp, and batch statistics then spread the flip (measured on the
224 px file: float32 op by op within 1.5e-7 of PyTorch in the clean-clone run of 43a8014, but
0.40 apart for that same commit in a fresh install with jax/jaxlib 0.10.2 on 2026-12-03;
jitted within 0.54; float64 meets the tolerances below).

Eval stage features and the activation histogram are compared exactly in float64. In float32 a
membrane one ulp from a tie can round the other way: on the 224 px file the float64 value of one
block4 activation is 0.50000006 (PyTorch float32: 1), ours in float32 is 0.5 (half-even: 0);
the flip changes 152 elements of block4's output. Float32 is then held to the logits and to
at most one moved activation per million.

The float32 jitted passes compile with all of XLA's optimizations, as users run them
(``conftest.production_compiler``); the float64 passes with the suite's reduced compiler.
"""

import numpy as np
import optax
import pytest
import jax.numpy as jnp
from flax import nnx

import jax

from conftest import golden_files, load_golden, production_compiler
from spikejax.convert import export_state_dict, load_official_state_dict, official_stage_name
from spikejax.models import STAGES, SpikeNeuron, as_dtype, create_model

FILES = golden_files("espikeformer")
pytestmark = pytest.mark.skipif(not FILES, reason="no E-SpikeFormer file in ../shared/golden")


def _model(g):
  sd = {k[len("state_dict/"):]: v for k, v in g.items() if k.startswith("state_dict/")}
  model = create_model(str(g["meta/model"]), num_classes=int(g["meta/num_classes"]))
  load_official_state_dict(model, sd)
  return model, {k: v.shape for k, v in sd.items()}


@pytest.fixture(scope="module", params=FILES, ids=lambda p: p.stem)
def golden(request, golden_dir):
  return load_golden(request.param)


def test_eval_logits_and_every_stage(golden):
  g = golden
  model, _ = _model(g)
  model.eval()
  x = g["input"].transpose(0, 2, 3, 1)
  with production_compiler():   # the float32 program users run
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x)))
  ref = g["logits_eval"]
  np.testing.assert_array_equal(logits.argmax(-1), ref.argmax(-1))
  assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()
  with jax.enable_x64(True):   # stage by stage, without float32 rounding ties
    stages = nnx.jit(lambda m, x: m.stage_features(x))(as_dtype(model, jnp.float64),
                                                         jnp.asarray(x, jnp.float64))
    stages = {k: np.asarray(v) for k, v in stages.items()}
  for name in STAGES:
    r = g["features_eval/" + official_stage_name(name)].transpose(0, 2, 3, 1)
    got = stages[name]
    assert got.shape == r.shape, name
    err = np.abs(got - r).max() / np.abs(r).max()
    assert err <= 1e-5, f"stage {name}: relative error {err}"


def test_train_logits_loss_grads_running_stats(golden):
  g = golden
  model, shapes = _model(g)
  model.train()
  with jax.enable_x64(True):   # without float32 rounding ties (module docstring)
    model = as_dtype(model, jnp.float64)
    x = jnp.asarray(g["input"].transpose(0, 2, 3, 1), jnp.float64)
    y = jnp.asarray(g["labels"])

    def loss_fn(m):
      logits = m(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    logits, loss = np.asarray(logits, np.float32), float(loss)
    grads = jax.tree.map(lambda v: np.asarray(v, np.float32), grads)
  ref = g["logits_train"]
  assert np.abs(np.asarray(logits) - ref).max() <= 1e-4 * np.abs(ref).max()
  np.testing.assert_allclose(float(loss), float(g["loss_train"]), rtol=1e-5)

  got = export_state_dict(grads, shapes)
  ref_grads = {k[len("grad/"):]: v for k, v in g.items() if k.startswith("grad/")}
  assert set(ref_grads) == set(got)
  total = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in ref_grads.values()))
  err_total = np.sqrt(sum(float(((got[k] - v).astype(np.float64) ** 2).sum())
                          for k, v in ref_grads.items()))
  assert err_total <= 1e-4 * total
  for k, v in ref_grads.items():  # per tensor, relative to its own norm (floor: 1e-6 of total)
    err = np.linalg.norm(got[k] - v)
    assert err <= 1e-4 * np.linalg.norm(v) + 1e-6 * total, k

  state = export_state_dict(model, shapes)
  for k, v in g.items():
    if k.startswith("running_after_train/"):
      key = k[len("running_after_train/"):]
      np.testing.assert_allclose(state[key], v, rtol=1e-5, atol=1e-6, err_msg=key)


def _body_histogram(model, x):
  neurons = [(p, m) for p, m in nnx.iter_modules(model) if isinstance(m, SpikeNeuron)]
  assert len(neurons) == 105  # spec §2.2: 4 x 5 + 8 x 10 + 4 + 1
  for _, m in neurons:
    m.record = True

  @nnx.jit
  def run(m, x):
    return nnx.capture(m, nnx.Intermediate)(x)[1]

  hist = np.zeros(5)
  for path, v in nnx.to_flat_state(run(model, x)):
    if path[0] != "head_spike":
      h = np.asarray(v.get_value()[0] if isinstance(v.get_value(), tuple) else v.get_value())
      assert h.shape == (1, 5)  # (T, D + 1)
      hist += h.sum(0)
  return hist


def test_activation_histogram(golden):
  """Eval pass: the same number of integer activations 0..4 as the official model.

  The official histogram covers the 104 body neurons (norm D); the head neuron is excluded.
  Exact in float64; in float32 at most one activation per million moves (rounding ties).
  """
  g = golden
  model, _ = _model(g)
  model.eval()
  x = g["input"].transpose(0, 2, 3, 1)
  ref = g["activation_histogram_eval"]
  with jax.enable_x64(True):
    hist64 = _body_histogram(as_dtype(model, jnp.float64), jnp.asarray(x, jnp.float64))
  np.testing.assert_array_equal(hist64, ref)
  with production_compiler():
    hist32 = _body_histogram(model, jnp.asarray(x))
  assert hist32.sum() == ref.sum()
  moved = np.abs(hist32 - ref).sum() / 2
  assert moved <= 1e-6 * ref.sum(), (hist32, ref)
