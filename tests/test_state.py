"""spikejax.train.state.build_train_state and spikejax.models.from_config: one set-up for the
trainer, the AOT compile, the benchmark and the demo."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common
from spikejax.models import create_model, from_config
from spikejax.train import sharding, state


def _tiny(**over):
  c = common.trainer_defaults(dataset="fashion_mnist", channels=1,
                              model_name="espikeformer_t", ema_decay=0.9)
  c.model.strides = (2, 2, 2, 1, 1)
  c.model.embed_dims = (8, 16, 16, 16)
  c.model.block_depths = (1, 1)
  for k, v in over.items():
    c[k] = v
  return c


def _shapes(tree):
  return [(tuple(x.shape), x.dtype) for x in jax.tree.leaves(tree)]


def test_real_and_abstract_states_agree_and_shard_by_the_rules():
  c = _tiny()
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 4, "fsdp": 2}))
  kw = dict(num_classes=10, image_shape=(16, 16, 1), total_steps=10, steps_per_epoch=5)
  real = state.build_train_state(c, mesh, **kw)
  abstract = state.build_train_state(c, mesh, abstract=True, **kw)
  _, real_state = nnx.split((real.model, real.optimizer))
  assert _shapes(real_state) == _shapes(abstract.state)
  for r, a in zip(jax.tree.leaves(real_state), jax.tree.leaves(abstract.state)):
    assert r.sharding.spec == a.sharding.spec
  assert any("fsdp" in tuple(a.sharding.spec) for a in jax.tree.leaves(abstract.state))
  # the EMA copy: real arrays (optim.EMA), abstract shapes with the same shardings
  assert sorted(np.shape(v) for v in real.ema.params.values()) == sorted(
      tuple(x.shape) for x in jax.tree.leaves(abstract.ema))
  bns = [m for _, m in nnx.iter_modules(real.model) if hasattr(m, "use_running_average")]
  assert bns and not any(m.use_running_average for m in bns)   # train mode
  assert abstract.task.name == "classify"
  assert real.model_kwargs == {**from_config.model_kwargs(c)}
  assert float(real.schedule(0)) == 0.0 and float(real.schedule(10)) == pytest.approx(c.min_lr)


def test_init_values_are_loaded_before_the_optimizer():
  c = _tiny(ema_decay=0.0, seed=3)
  kw = dict(num_classes=10, image_shape=(16, 16, 1), total_steps=10, steps_per_epoch=5)
  src = state.build_train_state(_tiny(seed=7), None, **kw).model
  values = {"/".join(map(str, k)): v.get_value()
            for k, v in nnx.to_flat_state(nnx.state(src, nnx.Any(nnx.Param, nnx.BatchStat)))}
  ts = state.build_train_state(c, None, init_values=values, **kw)
  assert ts.ema is None and not ts.init_report["fresh"] and not ts.init_report["dropped"]
  np.testing.assert_array_equal(np.asarray(ts.model.head.kernel[...]),
                                np.asarray(src.head.kernel[...]))


def test_from_config_is_the_one_mapping():
  c = _tiny()
  kw = from_config.model_kwargs(c)
  assert kw["in_channels"] == 1 and kw["firing"] == "sfa" and kw["strides"] == (2, 2, 2, 1, 1)
  c.mode = "vanilla"
  assert {k: from_config.model_kwargs(c)[k] for k in from_config.MODES["vanilla"]} == \
      from_config.MODES["vanilla"]
  c.mode = "rate"
  with pytest.raises(from_config.ConfigError, match="config.mode"):
    from_config.model_kwargs(c)
  c.mode, c.dtype = "sfa", "float16"
  with pytest.raises(from_config.ConfigError, match="dtype"):
    from_config.check(c)
  c.dtype, c.model_name = "bfloat16", "espikeformer_q"
  with pytest.raises(from_config.ConfigError, match="unknown model"):
    from_config.check(c)
  c.model_name = "espikeformer_t"
  assert from_config.model_dtype(c) == jnp.bfloat16 and from_config.family(c) == "espikeformer"


def test_bench_builds_the_reference_model_and_optimizer():
  """bench's config gives the model it built by hand and optax.adamw(1e-3) (same update)."""
  from spikejax import bench
  # through bench's own parser, so a new flag cannot leave this test behind
  args = bench._parse(["--model", "espikeformer_t", "--mode", "vanilla", "--time-steps", "2",
                       "--strides", "2,2,2,1,1", "--in-channels", "1", "--model-options",
                       '{"embed_dims": [8, 16, 16, 16], "block_depths": [1, 1]}'])
  c = bench.bench_config(args)
  ts = state.build_train_state(c, None, num_classes=10, image_shape=(16, 16, 1),
                               total_steps=1, steps_per_epoch=1)
  ref = create_model("espikeformer_t", num_classes=10, in_channels=1, dtype=jnp.float32,
                     rngs=nnx.Rngs(0), strides=(2, 2, 2, 1, 1), embed_dims=(8, 16, 16, 16),
                     block_depths=(1, 1), firing="binary",
                     temporal="lif_hard", time_steps=2, tau=2.0, detach_reset=True)
  ref.train()
  ref_opt = nnx.Optimizer(ref, optax.adamw(1e-3), wrt=nnx.Param)
  assert float(ts.schedule(7)) == 1e-3
  # the same module tree (every static option: neurons, strides, dtypes) and the same values
  assert nnx.graphdef(ts.model) == nnx.graphdef(ref)
  # the same optimizer: one update with the same (made-up) gradients moves both alike
  outs = []
  for model, opt in ((ts.model, ts.optimizer), (ref, ref_opt)):
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) + 0.001 * p, params)
    opt.update(model, grads)
    outs.append(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert len(outs[0]) == len(outs[1]) > 100
  for (path, a), (_, b) in zip(*outs):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                  err_msg=str(path))
  inference = state.build_train_state(c, None, num_classes=10, image_shape=(16, 16, 1),
                                      total_steps=1, steps_per_epoch=1, with_optimizer=False)
  assert inference.optimizer is None


def test_demo_config_keeps_the_saved_model_options():
  from spikejax.analysis import demo
  c = demo.tiny_config("sfa", steps=100)
  assert from_config.model_kwargs(c) == dict(
      strides=(2, 2, 2, 1, 1), embed_dims=(16, 32, 32, 32), firing="sfa",
      temporal="independent", spike_max=4, time_steps=1, rounding="half_up", in_channels=1)
  assert int(round(c.warmup_epochs * 100)) == 10
  with pytest.raises(ValueError, match="mode must be one of"):
    demo.tiny_config("rate")


def test_demo_refuses_a_cached_tiny_model_of_other_settings(tmp_path):
  """A cached tiny model is reused only when trained with the same settings (never silently
  handed back for other ones); the check runs before anything is built."""
  import json
  from spikejax.analysis import demo
  d = tmp_path / "tiny_sfa"
  d.mkdir()
  (d / "train_info.json").write_text(json.dumps({"mode": "sfa", "steps": 600, "batch_size": 64,
                                                 "lr": 3e-3, "seed": 0}))
  with pytest.raises(ValueError, match=r"other settings \(\{'steps': 600\} there, "
                                       r"\{'steps': 8\} asked\)"):
    demo.train_tiny("sfa", str(d), steps=8)
  assert demo.train_tiny("sfa", str(d), steps=600) == str(d)   # same settings: reused
