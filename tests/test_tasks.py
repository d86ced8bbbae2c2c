"""Tasks (spikejax.train.tasks) and evaluators: the loop runs any registered task, names none."""

import inspect
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common
from spikejax.train import evaluators, state, steps, tasks, trainer
from spikejax.train.tasks import base
from spikejax.train.tasks import classify as classify_task

# ------------------------------------------------------------------ a task defined only here


def _regress_step(graphdef, state_, batch):
  model, optimizer = nnx.merge(graphdef, state_)

  def loss_fn(m):
    return jnp.mean(jnp.square(m(batch["image"])[:, 0] - batch["y"]))

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return nnx.state((model, optimizer)), {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def _regress_eval(model, batch, index):
  del index
  err = jnp.square(model(batch["image"])[:, 0] - batch["y"]) * batch["mask"]
  return {"se_sum": jnp.sum(err), "count": jnp.sum(batch["mask"])}


class Regress(base.Task):
  """Regress each image's mean pixel from the model's single output."""
  name = "regress_test"
  train_step = staticmethod(jax.jit(_regress_step, static_argnums=0, donate_argnums=1))
  best_metric = "mse"
  higher_is_better = False
  logged = ("mse",)
  row_names = {"mse": "test_mse"}

  def batch_spec(self, global_batch, num_classes, image_shape):
    return {"image": jax.ShapeDtypeStruct((global_batch,) + tuple(image_shape), jnp.float32),
            "y": jax.ShapeDtypeStruct((global_batch,), jnp.float32)}

  def eval_fn(self, config):
    return _regress_eval

  def aggregate(self, totals):
    return {"mse": totals["se_sum"] / max(totals["count"], 1.0),
            "examples": int(totals["count"])}


class RandomImages:
  """What the loop reads of a ``spikejax.data`` dataset, on random 16 px images."""
  num_classes = 1
  image_shape = (16, 16, 1)
  steps_per_epoch = 2

  def __init__(self, split, batch_size, train, **kw):
    self.batch_size, self.train = batch_size, train
    self.seed = sum(map(ord, split))

  def _batch(self, i):
    rng = np.random.default_rng((self.seed, i))
    x = rng.normal(size=(self.batch_size,) + self.image_shape).astype(np.float32)
    b = {"image": x, "y": x.mean(axis=(1, 2, 3))}
    if not self.train:
      b["mask"] = np.ones(self.batch_size, np.float32)
    return b

  def iterate(self, start_step=0):
    i = start_step
    while True:
      yield self._batch(i)
      i += 1

  def __iter__(self):
    return (self._batch(i) for i in range(2))


@pytest.fixture
def regress_task(monkeypatch):
  import spikejax.data
  task = tasks.register(Regress())
  monkeypatch.setattr(spikejax.data, "get_dataset",
                      lambda name, split, batch_size, train, **kw:
                      RandomImages(split, batch_size, train, **kw))
  yield task
  tasks.unregister(task.name)


def _regress_config(**over):
  c = common.trainer_defaults(task="regress_test", dataset="random_images", channels=1,
                              model_name="espikeformer_t", batch_size=8, eval_batch_size=8,
                              max_train_steps=2, warmup_epochs=0.0, log_every_steps=1,
                              checkpoint_every_steps=2, progress_bar=False, max_eval_steps=1)
  c.model.strides = (2, 2, 2, 1, 1)
  c.model.embed_dims = (8, 16, 16, 16)
  c.model.block_depths = (1, 1)
  for k, v in over.items():
    c[k] = v
  return c


def test_a_new_task_runs_in_the_loop_without_editing_it(regress_task, tmp_path):
  wd = str(tmp_path / "wd")
  c = _regress_config(ema_decay=0.5)
  with c.unlocked():
    c.evals = {"eval": {"type": "task"}, "firing": {"type": "firing"},
               "train_eval": {"type": "task", "split": "train", "prefix": "train_eval"}}
  s = trainer.train_and_evaluate(c, wd)
  assert s["step"] == 2 and s["task"] == "regress_test" and s["best_metric"] == "mse"
  row = s["history"][-1]
  assert np.isfinite(row["test_mse"]) and row["test_mse"] >= 0
  assert np.isfinite(row["train_eval_mse"]) and row["train_eval_mse"] != row["test_mse"]
  assert np.isfinite(row["test_mse_ema"]) and 0 <= row["firing_rate"]
  assert "test_accuracy" not in row and s["best_accuracy"] is None
  assert s["best"]["mse"] == row["test_mse"] and s["best_step"] == 2
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    logged = {k for line in f for k in json.loads(line)}
  assert {"eval/mse", "eval/mse_ema", "train_eval/mse", "eval/firing_rate",
          "train/loss", "train/grad_norm"} <= logged
  with open(os.path.join(wd, "firing.json")) as f:
    assert len(json.load(f)["layers"]) > 10

  # the abstract batch of the task is what its step is lowered with (as launch/aot_compile)
  ts = state.build_train_state(c, None, num_classes=1, image_shape=(16, 16, 1), total_steps=2,
                               steps_per_epoch=2, abstract=True)
  lowered = ts.task.train_step.lower(ts.graphdef, ts.state, ts.task.batch_spec(8, 1, (16, 16, 1)))
  assert lowered.compile() is not None


def _source(obj) -> str:
  return inspect.getsource(obj)


@pytest.mark.parametrize("obj", [trainer.train_and_evaluate, trainer.run_evaluations,
                                 trainer._dataset, evaluators, state, steps])
def test_the_loop_names_no_task(obj):
  src = _source(obj)
  for name in ("mim", "classify", "distill"):
    assert not re.search(rf"""["']{name}["']""", src), (name, getattr(obj, "__name__", obj))
  assert "task ==" not in src and "task !=" not in src


def test_registry_and_task_selection():
  assert {"classify", "distill", "mim"} <= set(tasks.TASKS)
  assert tasks.get_task(None) is tasks.get_task("classify")
  with pytest.raises(trainer.ConfigError, match="task must be one of .*'mim'"):
    tasks.get_task("segment_nope")
  with pytest.raises(ValueError, match="registered twice"):
    tasks.register(type(tasks.get_task("mim"))())
  import ml_collections
  cfg = ml_collections.ConfigDict({"task": "classify", "distill": {"teacher": "/x", "alpha": .5}})
  assert tasks.from_config(cfg).name == "distill"
  cfg.distill.teacher = None
  assert tasks.from_config(cfg).name == "classify"
  assert trainer.jitted_train_step("classify") is trainer._jitted_functional_step
  assert trainer.jitted_train_step("classify", distill=True) is tasks.get_task("distill").train_step
  assert trainer.jitted_train_step("mim") is tasks.get_task("mim").train_step


def test_model_fits_task_and_best_rules():
  import ml_collections
  c = ml_collections.ConfigDict({"model_name": "espikeformer_t"})
  with pytest.raises(trainer.ConfigError, match="needs a model of family spikmae"):
    tasks.check_model(tasks.get_task("mim"), c, "espikeformer")
  c.model_name = "spikmae_12_512"
  with pytest.raises(trainer.ConfigError, match="spikmae"):
    tasks.check_model(tasks.get_task("classify"), c, "spikmae")
  tasks.check_model(tasks.get_task("mim"), c, "spikmae")
  cls, mim = tasks.get_task("classify"), tasks.get_task("mim")
  assert cls.is_better({"accuracy": 0.6}, {"accuracy": 0.5, "step": 1})
  assert not cls.is_better({"accuracy": 0.4}, {"accuracy": 0.5})
  assert mim.is_better({"loss": 0.4}, {"loss": 0.5}) and not mim.is_better({"loss": .6},
                                                                           {"loss": .5})
  assert cls.is_better({"accuracy": 0.1}, None)
  assert cls.is_better({"accuracy": 0.1}, {"accuracy": None, "loss": 2.0})  # a MIM record


def test_batch_specs():
  cls = tasks.get_task("classify").batch_spec(16, 10, (32, 32, 3))
  assert {k: (v.shape, v.dtype) for k, v in cls.items()} == {
      "image": ((16, 32, 32, 3), jnp.float32), "label": ((16,), jnp.int32),
      "target": ((16, 10), jnp.float32)}
  mim = tasks.get_task("mim").batch_spec(16, 10, (32, 32, 1))
  assert list(mim) == ["image"] and mim["image"].shape == (16, 32, 32, 1)
  assert tasks.get_task("distill").batch_spec(4, 3, (8, 8, 1)).keys() == cls.keys()


def _classify_eval_case(seed: int, padding: int):
  """A tiny classifier with every weight perturbed (a fresh head gives zero logits), 16 images
  (not mirror-symmetric) in two batches whose last ``padding`` rows are padding, a mesh."""
  from spikejax.models import create_model
  from spikejax.train import sharding
  import ml_collections
  model = create_model("espikeformer_t", num_classes=4, in_channels=1, rngs=nnx.Rngs(seed),
                       strides=(2, 2, 2, 1, 1), embed_dims=(8, 16, 16, 16), block_depths=(1, 1))
  rng = np.random.default_rng(seed)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(
      lambda p: p + 0.3 * rng.normal(size=p.shape).astype(np.float32), params))
  x = rng.normal(size=(16, 16, 16, 1)).astype(np.float32)
  x[..., :8, :] += 2.0
  y = rng.integers(0, 4, 16).astype(np.int32)
  mask = np.ones(16, np.float32)
  mask[-padding:] = 0
  batches = [{"image": x[:8], "label": y[:8], "mask": mask[:8]},
             {"image": x[8:], "label": y[8:], "mask": mask[8:]}]
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  return model, x, y, mask, batches, mesh


def test_classify_evaluation_excludes_padding():
  model, x, y, mask, batches, mesh = _classify_eval_case(seed=0, padding=5)
  task = tasks.get_task("classify")
  res = trainer.evaluate(model, evaluators.eval_step_for(task, None), batches, mesh, task=task)
  model.eval()
  logits = np.asarray(model(jnp.asarray(x)))
  keep = mask > 0
  assert res["examples"] == 11
  np.testing.assert_allclose(res["accuracy"], np.mean(logits.argmax(-1)[keep] == y[keep]))
  ce = -jax.nn.log_softmax(logits)[np.arange(16), y]
  np.testing.assert_allclose(res["loss"], ce[keep].mean(), rtol=1e-5)


def test_classify_flip_evaluation_averages_the_mirror_and_keeps_the_single_view():
  import ml_collections
  model, x, y, mask, batches, mesh = _classify_eval_case(seed=1, padding=3)
  rng = np.random.default_rng(2)
  task = tasks.get_task("classify")
  cfg = ml_collections.ConfigDict({"eval_flip": True})
  fn = evaluators.eval_step_for(task, cfg)
  assert fn is evaluators.eval_step_for(task, cfg)      # one compilation per config
  res = trainer.evaluate(model, fn, batches, mesh, task=task)
  model.eval()
  plain = np.asarray(model(jnp.asarray(x)))
  mirror = np.asarray(model(jnp.asarray(x[:, :, ::-1])))
  assert np.abs(plain - mirror).max() > 1e-3          # the mirror is a different view
  both = (plain + mirror) / 2
  keep = mask > 0
  assert res["examples"] == 13
  np.testing.assert_allclose(res["accuracy"], np.mean(both.argmax(-1)[keep] == y[keep]))
  np.testing.assert_allclose(res["accuracy_single"], np.mean(plain.argmax(-1)[keep] == y[keep]))
  ce = lambda z: -jax.nn.log_softmax(z)[np.arange(16), y][keep].mean()  # noqa: E731
  np.testing.assert_allclose(res["loss"], ce(both), rtol=1e-5)
  np.testing.assert_allclose(res["loss_single"], ce(plain), rtol=1e-5)
  # both views are logged (scalars and history row); a plain evaluation has no single view
  out = evaluators.TaskEvaluator("eval", "eval", task).result(res, None, step=1, epoch=0.1)
  assert {"test_accuracy", "test_accuracy_single", "test_loss_single"} <= set(out.row)
  assert "eval/accuracy_single" in out.scalars
  plain_res = trainer.evaluate(model, evaluators.eval_step_for(task, None), batches, mesh,
                               task=task)
  assert "accuracy_single" not in plain_res
  np.testing.assert_allclose(plain_res["accuracy"], res["accuracy_single"])
  assert "test_accuracy_single" not in evaluators.TaskEvaluator("eval", "eval", task).result(
      plain_res, None, step=1, epoch=0.1).row
  # a task without a test-time flip refuses the option before anything compiles
  c = ml_collections.ConfigDict({"model_name": "spikmae_12_512", "eval_flip": True})
  with pytest.raises(trainer.ConfigError, match="eval_flip=True, eval_shift=None: task 'mim' "
                     "has no test-time views"):
    tasks.check_eval_views(tasks.get_task("mim"), c)
  c = ml_collections.ConfigDict({"model_name": "espikeformer_t", "eval_shift": -1})
  with pytest.raises(trainer.ConfigError, match="eval_shift=-1: must be a whole number"):
    tasks.check_eval_views(task, c)
  # flip x the centre and four 1-pixel moves (border pixels repeated): 10 views
  cfg = ml_collections.ConfigDict({"eval_flip": True, "eval_shift": 1})
  res10 = trainer.evaluate(model, evaluators.eval_step_for(task, cfg), batches, mesh, task=task)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  views = [padded[:, 1 - dy:17 - dy, 1 - dx:17 - dx]
           for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
  np.testing.assert_array_equal(views[1][:, 1:], x[:, :-1])      # moved down one row
  np.testing.assert_array_equal(views[1][:, 0], x[:, 0])         # the top row repeated
  model.eval()                                  # evaluate() leaves the model in train mode
  mean10 = sum(np.asarray(model(jnp.asarray(v))) + np.asarray(model(jnp.asarray(v[:, :, ::-1])))
               for v in views) / 10
  np.testing.assert_allclose(res10["accuracy"], np.mean(mean10.argmax(-1)[keep] == y[keep]))
  np.testing.assert_allclose(res10["loss"], ce(mean10), rtol=1e-5)
  np.testing.assert_allclose(res10["accuracy_single"], res["accuracy_single"])
  # firing records and spike maps are of the image alone, as in a plain evaluation
  rec10 = trainer.evaluate(model, evaluators.eval_step_for(task, cfg), batches, mesh, task=task,
                           firing=True, maps=2)
  rec1 = trainer.evaluate(model, evaluators.eval_step_for(task, None), batches, mesh, task=task,
                          firing=True, maps=2)
  assert rec1["firing"] and rec10["firing"].keys() == rec1["firing"].keys()
  for name in rec1["firing"]:
    np.testing.assert_array_equal(rec10["firing"][name], rec1["firing"][name])
  assert rec1["maps"] and rec10["maps"].keys() == rec1["maps"].keys()
  for name in rec1["maps"]:
    np.testing.assert_allclose(rec10["maps"][name], rec1["maps"][name])
  # event frames (B, T, H, W, C): the same moves on the last two spatial axes
  ev = rng.normal(size=(2, 3, 5, 6, 2)).astype(np.float32)
  got = np.asarray(classify_task.shifted(jnp.asarray(ev), -2, 1))
  want = np.pad(ev, ((0, 0), (0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")[:, :, 4:9, 1:7]
  np.testing.assert_array_equal(got, want)


def test_evals_config_errors():
  c = _regress_config()
  c.task = "classify"
  with c.unlocked():
    c.evals = {"eval": {"type": "nope"}}
  with pytest.raises(trainer.ConfigError, match="type must be one of"):
    evaluators.from_config(c, tasks.get_task("classify"))
  c.evals = {"a": {"type": "task"}, "b": {"type": "task"}}
  with pytest.raises(trainer.ConfigError, match="give one a different prefix"):
    evaluators.from_config(c, tasks.get_task("classify"))
  c.evals = {"a": {"type": "task", "batch_size": 12}}
  with pytest.raises(trainer.ConfigError, match="not divisible by the 8 devices"):
    evaluators.from_config(c, tasks.get_task("classify"), 8)
  c.evals = {"a": {"type": "task", "every": 3}}
  with pytest.raises(trainer.ConfigError, match="unknown option"):
    evaluators.from_config(c, tasks.get_task("classify"))
  # default: the task's evaluator, plus firing and spike maps with firing_stats, in one pass
  c = _regress_config(firing_stats=True)
  (p,) = evaluators.from_config(c, tasks.get_task("classify"))
  assert [type(e).__name__ for e in p.evaluators] == ["TaskEvaluator", "FiringEvaluator",
                                                       "SpikeMapEvaluator"]
  assert p.firing and p.maps == 4
  assert p.firing and p.split == c.eval_split and p.batch_size == c.eval_batch_size
