"""The main job: config validation, end-to-end smoke run, exact resume, failures."""

import copy
import json
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
  c = fashion_mnist.get_config("base,runlocal")  # the base family; the default is run below
  c.unlock() if hasattr(c, "unlock") else None
  c.progress_bar = False
  c.checkpoint_every_steps = 2
  c.log_every_steps = 1
  c.max_train_steps = 4
  c.max_eval_steps = 1
  c.ema_decay = 0.9
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
    ({"batch_size": 0}, "batch_size=0: must be a whole number >= 1"),
    ({"log_every_steps": 0}, "log_every_steps=0"),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps=0"),
    ({"keep_checkpoints": 0}, "keep_checkpoints=0.*keep none"),
    ({"max_train_steps": -1}, "max_train_steps=-1"),
    ({"max_eval_steps": 0}, "max_eval_steps=0"),
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


@pytest.mark.parametrize("arg,name,params", [
    ("", "spikformer12_512", 2_251_066),        # the default recipe (README curve)
    ("base", "espikeformer_t", 1_372_522),
])
def test_fashion_mnist_recipes_build_the_measured_models(arg, name, params):
  from flax import nnx
  from spikejax.models import count_params, create_model
  c = fashion_mnist.get_config(arg)
  assert c.model_name == name and c.mode == "sfa"
  assert (c.spike.time_steps, c.spike.spike_max) == (1, 4)      # SFA T=1, D=4 (issue 3)
  assert c.num_epochs > 0 and c.time_budget_minutes < 30
  trainer.validate(c, 4)   # eval batch 500: 1, 2, 4 devices
  model = nnx.eval_shape(lambda: create_model(c.model_name, num_classes=10, rngs=nnx.Rngs(0),
                                              **trainer.model_kwargs(c)))
  assert count_params(model) == params
  v = fashion_mnist.get_config(",".join(filter(None, [arg, "vanilla"])))
  assert v.mode == "vanilla" and v.spike.time_steps == 4
  trainer.validate(v, 4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One finished 4-step run of ``tiny_config()`` (checkpoints at steps 2 and 4), shared by
  the tests below; a test that changes a workdir works on its own copy (``copy_of``)."""
  if not os.path.isdir(FMNIST):
    pytest.skip("apt-get install -y dataset-fashion-mnist")
  wd = str(tmp_path_factory.mktemp("trained") / "wd")
  return wd, trainer.train_and_evaluate(tiny_config(), wd)


def copy_of(workdir, tmp_path):
  import shutil
  return shutil.copytree(workdir, str(tmp_path / "wd"))


@needs_data
def test_smoke_run_and_exact_resume(trained, tmp_path):
  full = copy_of(trained[0], tmp_path)
  s = trained[1]
  assert s["step"] == 4 and s["best_accuracy"] is not None
  assert "test_accuracy_ema" in s["history"][-1]
  for name in ("config.json", "metrics.jsonl", "summary.json", "firing.json"):
    assert os.path.exists(os.path.join(full, name))
  with open(os.path.join(full, "firing.json")) as f:
    fire = json.load(f)
  # 4 conv blocks x 5 + (2 + 1) transformer blocks x 10 + 4 downsamplings + head = 55
  assert len(fire["layers"]) == 55 and "firing_rate" in s["history"][-1]
  nsfr = fire["layers"]["block4.0.mlp.fc1_spike"]["nsfr"][0]
  assert len(nsfr) == 4 and all(a >= b for a, b in zip(nsfr, nsfr[1:]))
  # TensorBoard: the train scalars of every log step, a firing histogram per layer (values
  # 0..D) at each evaluation
  tags = {}
  for ev in _events(os.path.join(full, "tensorboard")):
    for v in ev.summary.value:
      tags.setdefault(v.tag, []).append((ev.step, v))
  assert [st for st, _ in tags["train/loss"]] == [1, 2, 3, 4]
  (st, h), = tags["eval_firing/block4.0.mlp.fc1_spike"]
  assert st == 4 and len(h.histo.bucket) == 5 and h.histo.num > 0
  assert sum(t.startswith("eval_firing/") for t in tags) == 55
  # a spike-map picture per evaluation: input, then a map per resolution, 4 examples
  (st, pic), = tags["eval/spike_maps"]
  with open(os.path.join(full, "spike_maps.json")) as f:
    columns = json.load(f)["columns"]
  assert columns[0] == "input" and len(columns) >= 3
  assert st == 4 and pic.image.encoded_image_string[:4] == b"\x89PNG"
  assert (pic.image.width, pic.image.height) == (len(columns) * 34 - 2, 4 * 34 - 2)

  # rerunning the finished job changes nothing and keeps its history
  again = trainer.train_and_evaluate(tiny_config(), full)
  assert again["step"] == 4 and again["history"] == s["history"]

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
def test_corrupt_latest_checkpoint_falls_back(trained, tmp_path, caplog):
  wd = copy_of(trained[0], tmp_path)    # 4 steps of tiny_config()
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
  # the corrupt step 4 was moved aside (kept), retrained and saved again: every kept
  # checkpoint reads back, and summary.json names a good one
  assert [d.split("-")[0] for d in os.listdir(os.path.join(wd, "checkpoints_corrupt"))] == ["4"]
  ck = checkpoints.TrainCheckpointer(os.path.join(wd, "checkpoints"))
  assert sorted(ck.manager.all_steps())[-2:] == [4, 5]
  for step in ck.manager.all_steps():
    ck._restore_checked(step)
  assert s["checkpoint"] == os.path.join(wd, "checkpoints", "5")


@needs_data
def test_nan_loss_stops_naming_step_and_checkpoint(tmp_path):
  with pytest.raises(trainer.NaNLossError, match=r"at step \d+; the last good checkpoint is"):
    trainer.train_and_evaluate(tiny_config(**{"optimizer.lr": float("nan")}), str(tmp_path))


def test_sweep_lists_runs_and_applies_overrides():
  from launch import sweep
  mod, arg = sweep.load_config_module("configs/fashion_mnist.py:runlocal")
  runs = sweep.collect(mod)
  assert {"spike.spike_max": 8} in runs and any(r.get("mode") == "vanilla" for r in runs)
  config = mod.get_config(arg)
  sweep.apply_overrides(config, {"spike.spike_max": 8, "mode": "vanilla"})
  assert config.spike.spike_max == 8 and config.mode == "vanilla"
  with pytest.raises(SystemExit, match="not a field"):
    sweep.apply_overrides(config, {"spike.nope": 1})
  assert sweep.main(["--config=configs/fashion_mnist.py", "--workdir=/tmp/x", "--dry_run"]) == 0
  # --set values: JSON or Python literals (False, tuples), else strings
  assert [sweep._parse_value(v) for v in ("False", "false", "0.4", "(2, 1)", "adamw")] == \
      [False, False, 0.4, (2, 1), "adamw"]
  sweep.apply_overrides(config, {"progress_bar": sweep._parse_value("False")})
  assert config.progress_bar is False


@pytest.mark.parametrize("arg", ["s,runlocal", "l,d8,runlocal"])
def test_imagenet_recipe_runlocal_on_mock_data(arg, tmp_path):
  import tensorflow_datasets as tfds
  from configs import imagenet_espikeformer
  c = imagenet_espikeformer.get_config(arg)
  full = imagenet_espikeformer.get_config(arg.replace(",runlocal", ""))
  assert full.optimizer.name == "lamb" and full.batch_size == 2048
  assert abs(full.optimizer.lr - 4.8e-3) < 1e-12
  assert full.spike.spike_max == (8 if "d8" in arg else 4)
  with tfds.testing.mock_data(num_examples=48):
    s = trainer.train_and_evaluate(c, str(tmp_path))
  assert s["step"] == 2 and s["checkpoint"].endswith("/2")


def _buffer_pointers(tree):
  return [s.data.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)
          if isinstance(x, jax.Array) for s in x.addressable_shards]


def test_unalias_gives_every_donated_array_its_own_buffer():
  import jax.numpy as jnp
  x = jnp.arange(4.0)
  tree = {"a": x, "b": x, "c": jnp.zeros(3)}   # one array held twice (e.g. shared init)
  assert len(set(_buffer_pointers(tree))) == 2
  out = trainer.unalias(tree)
  assert len(set(_buffer_pointers(out))) == 3
  np.testing.assert_array_equal(out["b"], x)
  assert out["a"] is x and out["c"] is tree["c"]  # arrays with their own buffers are kept


@needs_data
def test_checkpoint_restores_onto_a_different_mesh(trained, tmp_path, monkeypatch):
  wd = copy_of(trained[0], tmp_path)    # 4 steps on the 8 x 1 (data x fsdp) mesh
  assert json.load(open(os.path.join(wd, "config.json")))["mesh"] == {"data": -1, "fsdp": 1}
  # The restored state must not share device buffers (on CPU devices orbax can restore a
  # replicated array with shards sharing one buffer; donating it crashed the next step).
  pointers = []
  init = trainer.SplitTrainer.__init__

  def checked_init(self, model, optimizer, **kw):
    init(self, model, optimizer, **kw)
    pointers.append(_buffer_pointers(self.state))

  monkeypatch.setattr(trainer.SplitTrainer, "__init__", checked_init)
  # same workdir, a 2 x 4 (data x fsdp) mesh: resumes at step 4 and continues
  s = trainer.train_and_evaluate(tiny_config(max_train_steps=5,
                                             **{"mesh.data": 2, "mesh.fsdp": 4}), wd)
  assert s["step"] == 5
  assert pointers and len(set(pointers[0])) == len(pointers[0])


@needs_data
def test_sigterm_saves_and_exits_cleanly(tmp_path):
  import signal
  import subprocess
  import sys
  import time
  wd = tmp_path / "wd"
  cmd = [sys.executable, "-m", "spikejax.main", "--config=configs/fashion_mnist.py:runlocal",
         f"--workdir={wd}", "--config.max_train_steps=100000", "--config.progress_bar=False",
         "--config.checkpoint_every_steps=100000", "--config.num_epochs=100.0"]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["XLA_FLAGS"] = os.environ.get("SPIKEJAX_TEST_COMPILE_FLAGS", "")   # one device
  proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = wd / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  assert '"stopped_by": "SIGTERM"' in out
  steps = [int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit()]
  assert steps and max(steps) >= 3


def _fake_checkpointed_workdir(tmp_path, config):
  wd = tmp_path / "wd"
  (wd / "checkpoints" / "2").mkdir(parents=True)
  (wd / "config.json").write_text(config.to_json_best_effort(indent=2))
  return wd


@pytest.mark.parametrize("over,shown", [
    ({"image_size": 28}, "image_size: 32 -> 28"),
    ({"model.embed_dims": (8, 16, 32, 32)}, "model.embed_dims: [8, 16, 16, 16] -> [8, 16, 32, 32]"),
    ({"spike.spike_max": 8}, "spike.spike_max: 4 -> 8"),
])
def test_resume_with_another_config_is_refused_before_writing(tmp_path, over, shown):
  """Nothing is written (config.json kept byte for byte) and the differing keys are named."""
  wd = _fake_checkpointed_workdir(tmp_path, tiny_config())
  before = (wd / "config.json").read_bytes()
  with pytest.raises(trainer.ConfigError, match="holds checkpoints of another config") as e:
    trainer.train_and_evaluate(tiny_config(**over), str(wd))
  assert shown in str(e.value) and "new --workdir" in str(e.value)
  assert (wd / "config.json").read_bytes() == before
  assert sorted(os.listdir(wd)) == ["checkpoints", "config.json"]


def test_resume_may_change_run_length_and_logging(tmp_path):
  wd = _fake_checkpointed_workdir(tmp_path, tiny_config())
  trainer.check_resume_config(tiny_config(num_epochs=3.0, max_train_steps=9, log_every_steps=5,
                                          **{"mesh.data": 2, "mesh.fsdp": 4}), str(wd))


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "wd"
  f.write_text("x")
  with pytest.raises(trainer.ConfigError, match="is a file, not a directory"):
    trainer.train_and_evaluate(tiny_config(), str(f))


def test_metrics_rows_past_the_restored_step_are_set_aside_once(tmp_path):
  from spikejax.train import metrics
  rows = [{"step": s, "loss": float(s)} for s in (1, 2, 3, 4)]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')  # cut
  assert metrics.supersede_rows(str(tmp_path), 2) == 3
  assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
  aside = (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
  assert len(aside) == 3 and json.loads(aside[0])["step"] == 3
  assert metrics.supersede_rows(str(tmp_path), 2) == 0       # once


@needs_data
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  """Issue: SIGTERM to one process of a two-process run hung both. The stop is agreed across
  the processes (``trainer.STOP_SYNC_STEPS``): both save the same step and exit 0."""
  import signal
  import socket
  import subprocess
  import sys
  import time
  wd = tmp_path / "wd"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("SPIKEJAX_TEST_COMPILE_FLAGS", "") +
             " --xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "spikejax.main", "--config=configs/fashion_mnist.py:base,runlocal",
         f"--workdir={wd}", "--config.max_train_steps=100000", "--config.progress_bar=False",
         "--config.checkpoint_every_steps=100000", "--config.num_epochs=100.0",
         "--config.batch_size=8", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [subprocess.Popen(cmd + [f"--process_id={i}"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  metrics = wd / "metrics.jsonl"
  deadline = time.time() + 300
  try:
    while time.time() < deadline and all(p.poll() is None for p in procs):
      if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
        break
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)        # only the second process is told
    logs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill() if p.poll() is None else None
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert '"stopped_by": "SIGTERM"' in logs[0]
  steps = [int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit()]
  assert len(steps) == 1 and steps[0] % trainer.STOP_SYNC_STEPS == 0, steps


def test_an_allowed_config_change_keeps_the_earlier_config(tmp_path):
  first, second = tiny_config(), tiny_config(num_epochs=3.0)
  trainer._write_config(first, str(tmp_path))
  trainer._write_config(first, str(tmp_path))          # unchanged: nothing new
  trainer._write_config(second, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["config.1.json", "config.json"]
  assert json.loads((tmp_path / "config.1.json").read_text())["num_epochs"] == 1.0
  assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 3.0


def test_a_second_signal_aborts_at_once():
  import signal
  with trainer._StopSignal() as stop:
    stop._handle(signal.SIGTERM, None)
    assert stop.agreed() == signal.SIGTERM      # one process: its own decision
    with pytest.raises(KeyboardInterrupt, match="second SIGTERM"):
      stop._handle(signal.SIGTERM, None)


def _events(logdir):
  """Every event of the TensorBoard files under ``logdir`` (TFRecord framing, read by hand)."""
  import struct
  from tensorboard.compat.proto import event_pb2
  out = []
  for name in sorted(os.listdir(logdir)):
    data = open(os.path.join(logdir, name), "rb").read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
      i += 12 + n + 4
  return out


def test_tensorboard_scalars_histograms_and_images_read_back(tmp_path):
  from spikejax.train import metrics
  w = metrics.MetricWriter(str(tmp_path))
  assert w._tb is not None, "the tensorboard package is a dependency"
  w.write(3, {"train/loss": 1.25})
  w.write_histograms(4, {"eval_firing/block4.0.mlp.fc1_spike": np.array([5, 3, 2, 0, 1])})
  w._tb.image(4, "spike_map", np.arange(12, dtype=np.uint8).reshape(3, 4))
  w.close()
  got = {}
  for ev in _events(tmp_path / "tensorboard"):
    for v in ev.summary.value:
      got[v.tag] = (ev.step, v)
  step, v = got["train/loss"]
  assert step == 3 and v.simple_value == 1.25
  step, v = got["eval_firing/block4.0.mlp.fc1_spike"]
  assert step == 4 and list(v.histo.bucket) == [5, 3, 2, 0, 1] and v.histo.num == 11
  assert v.histo.sum == 3 + 4 + 4 and v.histo.max == 4 and v.histo.min == 0
  step, v = got["spike_map"]
  assert (v.image.height, v.image.width) == (3, 4) and v.image.encoded_image_string[:4] == \
      b"\x89PNG"
  assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] \
      == [3]
