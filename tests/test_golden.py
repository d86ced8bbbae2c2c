"""Parity with the official PyTorch model on every file of ../shared/golden (spec §2, §9).

Eval mode runs jitted. Train mode (batch statistics) runs op by op: in train mode a single
activation that lies within one float32 ulp of a rounding tie flips when XLA fuses the
BatchNorm arithmetic differently from PyTorch, and batch statistics then spread the flip
(measured on the 224 px file: eager logits within 1.5e-7 of PyTorch, jitted within 0.54;
float64 matches PyTorch to 9e-8). Op-by-op execution rounds like PyTorch's eager kernels.
"""

import numpy as np
import optax
import pytest
import jax.numpy as jnp
from flax import nnx

from conftest import golden_files, load_golden
from spikejax.convert import export_state_dict, load_official_state_dict, official_stage_name
from spikejax.models import STAGES, SpikeNeuron, create_model

FILES = golden_files()
pytestmark = pytest.mark.skipif(not FILES, reason="../shared/golden is absent")


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
  x = jnp.asarray(g["input"].transpose(0, 2, 3, 1))
  logits, stages = nnx.jit(lambda m, x: (m(x), m.stage_features(x)))(model, x)
  ref = g["logits_eval"]
  logits = np.asarray(logits)
  np.testing.assert_array_equal(logits.argmax(-1), ref.argmax(-1))
  assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()
  for name in STAGES:
    r = g["features_eval/" + official_stage_name(name)].transpose(0, 2, 3, 1)
    got = np.asarray(stages[name])
    assert got.shape == r.shape, name
    err = np.abs(got - r).max() / np.abs(r).max()
    assert err <= 1e-5, f"stage {name}: relative error {err}"


def test_train_logits_loss_grads_running_stats(golden):
  g = golden
  model, shapes = _model(g)
  model.train()
  x = jnp.asarray(g["input"].transpose(0, 2, 3, 1))
  y = jnp.asarray(g["labels"])

  def loss_fn(m):
    logits = m(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
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


def test_activation_histogram(golden):
  """Eval pass: the same number of integer activations 0..4 as the official model.

  The official histogram covers the 104 body neurons (norm D); the head neuron is excluded.
  """
  g = golden
  model, _ = _model(g)
  model.eval()
  neurons = [(p, m) for p, m in nnx.iter_modules(model) if isinstance(m, SpikeNeuron)]
  assert len(neurons) == 105  # spec §2.2: 4 x 5 + 8 x 10 + 4 + 1
  for _, m in neurons:
    m.record = True

  @nnx.jit
  def run(m, x):
    return nnx.capture(m, nnx.Intermediate)(x)[1]

  inter = run(model, jnp.asarray(g["input"].transpose(0, 2, 3, 1)))
  hist = np.zeros(5)
  for path, v in nnx.to_flat_state(inter):
    if path[0] != "head_spike":
      h = np.asarray(v.get_value()[0] if isinstance(v.get_value(), tuple) else v.get_value())
      assert h.shape == (1, 5)  # (T, D + 1)
      hist += h.sum(0)
  np.testing.assert_array_equal(hist, g["activation_histogram_eval"])
