"""The main job: config validation, end-to-end smoke run, exact resume, failures."""

import copy
import os

import jax
import numpy as np
import pytest

from configs import fashion_mnist
from spikejax.train import checkpoints, trainer

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_data = pytest.mark.skipif(not os.path.isdir(FMNIST),
                                reason="apt-get install -y dataset-fashion-mnist")


def tiny_config(**over):
  c = fashion_mnist.get_config("runlocal")
  c.unlock() if hasattr(c, "unlock") else None
  c.progress_bar = False
  c.checkpoint_every_steps = 2
  c.log_every_steps = 1
  c.max_train_steps = 4
  c.max_eval_steps = 1
  for k, v in over.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.mark.parametrize("over,match", [
    ({"model_name": "espikeformer_q"}, "unknown model"),
    ({"batch_size": 12}, "not divisible by the 8 devices"),
    ({"mesh.data": 3}, "does not match the 8 devices|does not divide"),
    ({"spike.spike_max": 0}, "spike_max"),
    ({"mode": "rate"}, "config.mode"),
    ({"optimizer.name": "sgd"}, "optimizer.name"),
])
def test_config_errors_before_compiling(over, match, tmp_path):
  assert jax.device_count() == 8
  with pytest.raises(trainer.ConfigError, match=match):
    trainer.validate(tiny_config(**over), jax.device_count())


def _params(workdir):
  ckpt = checkpoints.TrainCheckpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.manager.latest_step()
  import orbax.checkpoint as ocp
  state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, state["state"]["model"]


@needs_data
def test_smoke_run_and_exact_resume(tmp_path):
  full = str(tmp_path / "full")
  s = trainer.train_and_evaluate(tiny_config(), full)
  assert s["step"] == 4 and s["best_accuracy"] is not None
  for name in ("config.json", "metrics.jsonl", "summary.json"):
    assert os.path.exists(os.path.join(full, name))

  part = str(tmp_path / "part")
  trainer.train_and_evaluate(tiny_config(stop_after_steps=2), part)
  s2 = trainer.train_and_evaluate(tiny_config(), part)  # resumes at step 2
  assert s2["step"] == 4
  step_a, a = _params(full)
  step_b, b = _params(part)
  assert step_a == step_b == 4
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@needs_data
def test_corrupt_latest_checkpoint_falls_back(tmp_path, caplog):
  wd = str(tmp_path / "wd")
  trainer.train_and_evaluate(tiny_config(max_train_steps=4), wd)
  latest = os.path.join(wd, "checkpoints", "4", "state")
  for root, _, files in os.walk(latest):
    for f in files:
      if not f.startswith("_"):
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"garbage")
  caplog.set_level("WARNING")
  s = trainer.train_and_evaluate(tiny_config(max_train_steps=5), wd)
  assert "could not be restored" in caplog.text
  assert s["step"] == 5


@needs_data
def test_nan_loss_stops_naming_step_and_checkpoint(tmp_path):
  with pytest.raises(trainer.NaNLossError, match=r"at step \d+; the last good checkpoint is"):
    trainer.train_and_evaluate(tiny_config(**{"optimizer.lr": float("nan")}), str(tmp_path))
