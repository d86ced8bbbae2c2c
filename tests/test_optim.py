"""spikejax.train.optim: timm LAMB parity with an independent numpy reference, AdamW helper,
schedule, layer-wise lr decay ids/scales and EMA (spec §4.3, §5, §6.3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from spikejax.train import optim
from spikejax.train.optim import (adamw, ema_update, espikeformer_layer_id,
                                  espikeformer_num_layers, lamb_timm, large_layer_id,
                                  layer_decay_scales, warmup_cosine_schedule, weight_decay_mask)


# --------------------------------------------------------------------------------------------
# independent numpy reference of timm Lamb (spec §5, steps 1-4), float64


def np_lamb_reference(params, grads_seq, lrs, *, wd, decayed, lr_scale, b1=0.9, b2=0.999,
                      eps=1e-6, max_grad_norm=1.0, trust_clip=True, always_adapt=False):
  w = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v2 = {k: np.zeros_like(v) for k, v in w.items()}
  for step, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
    g = {k: np.array(x, np.float64) for k, x in grads.items()}
    # 1. global norm clip over all parameters
    total = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
    div = max(total / max_grad_norm, 1.0)
    for k in w:
      gk = g[k] / div
      # 2. Adam with grad averaging and bias correction
      m[k] = b1 * m[k] + (1 - b1) * gk
      v2[k] = b2 * v2[k] + (1 - b2) * gk * gk
      upd = (m[k] / (1 - b1 ** step)) / (np.sqrt(v2[k] / (1 - b2 ** step)) + eps)
      # 3. L2 decay inside the update, then the trust ratio for decayed tensors
      this_wd = wd if decayed[k] else 0.0
      if this_wd != 0:
        upd = upd + this_wd * w[k]
      if this_wd != 0 or always_adapt:
        wn = float(np.sqrt(np.sum(w[k] ** 2)))
        un = float(np.sqrt(np.sum(upd ** 2)))
        r = wn / un if (wn > 0 and un > 0) else 1.0
        if trust_clip:
          r = min(r, 1.0)
        upd = upd * r
      # 4. step
      w[k] = w[k] - lr * lr_scale[k] * upd
  return w


def make_problem(seed=0, steps=4):
  rng = np.random.default_rng(seed)
  params = {
      "bias": rng.normal(size=(5,)).astype(np.float32),
      "bn_scale": np.ones((6,), np.float32),
      "dense": (0.05 * rng.normal(size=(6, 5))).astype(np.float32),   # small w -> r < 1
      "big": (30.0 * rng.normal(size=(4, 3))).astype(np.float32),     # large w -> r > 1, clipped
      "conv": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
      "zeros": np.zeros((3, 4), np.float32),                          # ||w|| = 0 -> r = 1
      "dead": np.zeros((2, 2), np.float32),                           # ||w|| = ||u|| = 0
  }
  grads_seq = []
  for _ in range(steps):
    g = {k: (10.0 * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()}
    g["dead"] = np.zeros((2, 2), np.float32)
    grads_seq.append(g)
  return params, grads_seq


def run_jax(tx, params, grads_seq, jit=True):
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)

  def step(p, state, g):
    u, state = tx.update(g, state, p)
    return optax.apply_updates(p, u), state

  step = jax.jit(step) if jit else step
  for g in grads_seq:
    p, state = step(p, state, jax.tree.map(jnp.asarray, g))
  return jax.tree.map(np.asarray, p)


def test_global_norm_clip_engages():
  _, grads_seq = make_problem()
  for g in grads_seq:
    assert math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values())) > 10


@pytest.mark.parametrize("use_schedule,trust_clip,always_adapt,use_scale", [
    (False, True, False, False),   # the recipe (spec §5)
    (True, True, False, True),     # schedule + layer decay scales (spec §4.3)
    (False, False, False, False),  # trust_clip off
    (False, True, True, False),    # always_adapt on
])
def test_lamb_timm_matches_numpy_reference(use_schedule, trust_clip, always_adapt, use_scale):
  params, grads_seq = make_problem()
  wd, base_lr = 0.05, 0.01
  decayed = {k: v.ndim > 1 for k, v in params.items()}
  scale = ({k: 0.75 ** i for i, k in enumerate(sorted(params))} if use_scale
           else {k: 1.0 for k in params})
  if use_schedule:
    sched = warmup_cosine_schedule(base_lr, total_steps=6, warmup_steps=2, min_lr=1e-4)
    lrs = [float(sched(i)) for i in range(len(grads_seq))]
    lr_arg = sched
  else:
    lrs = [base_lr] * len(grads_seq)
    lr_arg = base_lr
  tx = lamb_timm(lr_arg, weight_decay=wd, weight_decay_mask=weight_decay_mask,
                 trust_clip=trust_clip, always_adapt=always_adapt,
                 lr_scale=scale if use_scale else None)
  got = run_jax(tx, params, grads_seq)
  ref = np_lamb_reference(params, grads_seq, lrs, wd=wd, decayed=decayed, lr_scale=scale,
                          trust_clip=trust_clip, always_adapt=always_adapt)
  for k in params:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6, err_msg=k)
  # sanity: the parameters actually moved (except the all-zero-gradient leaf without decay).
  assert not np.allclose(got["dense"], params["dense"])
  assert not np.allclose(got["zeros"], 0.0)
  np.testing.assert_array_equal(got["dead"], 0.0)


def test_lamb_timm_callable_and_pytree_mask_agree():
  params, grads_seq = make_problem(seed=1, steps=2)
  mask_tree = {k: v.ndim > 1 for k, v in params.items()}
  a = run_jax(lamb_timm(0.01, weight_decay=0.05, weight_decay_mask=mask_tree), params, grads_seq)
  b = run_jax(lamb_timm(0.01, weight_decay=0.05, weight_decay_mask=weight_decay_mask), params,
              grads_seq)
  for k in params:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_optax_lamb_differs():
  """Spec §8 item 27: optax.lamb is not timm Lamb (no global clipping, unclipped trust ratio on
  every tensor, decay added differently)."""
  params, grads_seq = make_problem()
  mask = {k: v.ndim > 1 for k, v in params.items()}
  ours = run_jax(lamb_timm(0.01, weight_decay=0.05, weight_decay_mask=mask), params, grads_seq)
  theirs = run_jax(optax.lamb(0.01, eps=1e-6, weight_decay=0.05, mask=mask), params, grads_seq)
  diffs = {k: float(np.max(np.abs(ours[k] - theirs[k]))) for k in params}
  assert max(diffs.values()) > 1e-3, diffs


def test_lamb_timm_with_nnx_optimizer():
  class Tiny(nnx.Module):
    def __init__(self, rngs):
      self.block3 = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
      self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
      for b in self.block3:
        x = jax.nn.relu(b(x))
      return self.head(x)

  model = Tiny(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  scales = layer_decay_scales(params, 3, 0.5, lambda p: p[1] + 1 if p[0] == "block3" else 3)
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  tx = lamb_timm(0.1, weight_decay=0.05, weight_decay_mask=weight_decay_mask(params),
                 lr_scale=scales)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x, y = jnp.ones((2, 4)), jnp.zeros((2, 3))

  @nnx.jit
  def train_step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    opt.update(model, grads)
    return loss

  l0 = train_step(model, opt)
  l1 = train_step(model, opt)
  assert float(l1) < float(l0)
  after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  assert not np.allclose(after["head"]["kernel"], before["head"]["kernel"])


# --------------------------------------------------------------------------------------------
# AdamW helper, weight-decay mask


def test_weight_decay_mask_ndim():
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,)), "k": jnp.ones((3, 3, 1, 2)),
            "s": jnp.ones(())}
  assert weight_decay_mask(params) == {"w": True, "b": False, "k": True, "s": False}


def test_weight_decay_mask_on_nnx_state_is_prefix():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  mask = weight_decay_mask(nnx.state(model, nnx.Param))
  pure = nnx.as_pure(nnx.state(model, nnx.Param))
  assert jax.tree.leaves(mask) == [False, True]  # bias, kernel
  assert jax.tree.structure(mask) == jax.tree.structure(pure)


def test_adamw_masks_decay_and_clips():
  params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = adamw(0.1, weight_decay=0.5)
  u, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(u["w"], -0.1 * 0.5 * 2.0, rtol=1e-6)   # decoupled decay
  np.testing.assert_allclose(u["b"], 0.0)                           # 1-D: no decay
  # chained clip_by_global_norm(1.0): equal to running plain adamw on pre-clipped grads
  grads = {"w": jnp.full((2, 2), 3.0), "b": jnp.full((2,), -4.0)}
  tx_c = adamw(0.1, weight_decay=0.5, max_grad_norm=1.0)
  u_c, _ = tx_c.update(grads, tx_c.init(params), params)
  n = float(optax.tree.norm(grads))
  u_ref, _ = tx.update(jax.tree.map(lambda g: g / n, grads), tx.init(params), params)
  for k in params:
    np.testing.assert_allclose(u_c[k], u_ref[k], rtol=1e-6)
  # lr_scale multiplies the whole AdamW step, decay included
  tx_s = adamw(0.1, weight_decay=0.5, lr_scale={"w": 0.25, "b": 1.0})
  u_s, _ = tx_s.update(zeros, tx_s.init(params), params)
  np.testing.assert_allclose(u_s["w"], 0.25 * u["w"], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# schedule


def test_warmup_cosine_schedule_values():
  lr, mn = 4.8e-3, 1e-6
  s = warmup_cosine_schedule(lr, total_steps=10, warmup_steps=4, min_lr=mn)
  expected = {
      0: 0.0,
      1: lr * 1 / 4,
      3: lr * 3 / 4,
      4: lr,                                                   # cos(0) = 1
      7: mn + (lr - mn) * 0.5 * (1 + math.cos(math.pi * 3 / 6)),  # midpoint
      8: mn + (lr - mn) * 0.5 * (1 + math.cos(math.pi * 4 / 6)),
      10: mn,
      12: mn,                                                  # held after the end
  }
  for t, want in expected.items():
    np.testing.assert_allclose(float(s(t)), want, rtol=1e-6, atol=1e-12, err_msg=str(t))
  np.testing.assert_allclose(float(s(7)), (lr + mn) / 2, rtol=1e-6)
  s0 = warmup_cosine_schedule(1.0, total_steps=4, warmup_steps=0)
  np.testing.assert_allclose([float(s0(t)) for t in range(5)],
                             [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                              0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0], atol=1e-7)
  # jit-able with a traced count
  np.testing.assert_allclose(float(jax.jit(s)(jnp.int32(2))), lr / 2, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# layer-wise lr decay


def test_espikeformer_layer_ids():
  lid = espikeformer_layer_id
  assert lid(("downsample1_1", "encode_conv", "kernel")) == 0
  assert lid(("conv_block1_1", 0, "sep_conv", "pwconv1", "conv", "kernel")) == 0
  assert lid(("downsample2", "encode_bn", "scale")) == 0
  assert lid(("downsample3", "encode_conv", "kernel")) == 0
  assert lid(("block3", 0, "attn", "q_conv", "conv", "kernel")) == 1
  assert lid(("block3", 5, "mlp", "fc1_conv", "bias")) == 6
  assert lid(("downsample4", "encode_conv", "kernel")) == 7
  assert lid(("block4", 0, "attn", "q_conv", "conv", "kernel")) == 8
  assert lid(("block4", 1, "sep_conv", "dwconv", "conv", "kernel")) == 9
  assert lid(("head", "kernel")) == 10 == espikeformer_num_layers((6, 2))
  assert lid("block3.2.attn.q_conv.conv.kernel") == 3
  assert lid(("block4", 0, "x"), block_depths=(4, 3)) == 6
  assert lid(("head", "bias"), block_depths=(4, 3)) == espikeformer_num_layers((4, 3)) == 9


def test_large_layer_ids_and_scales():
  assert large_layer_id(("downsample1_1", "encode_conv", "kernel")) == 0
  assert large_layer_id(("conv_block2_2", 0, "conv1", "kernel")) == 0
  assert large_layer_id(("block3", 0, "attn", "q_conv", "kernel")) == 1
  assert large_layer_id(("block3", 11, "layer_scale1")) == 12
  assert large_layer_id(("head", "kernel")) == 13
  assert large_layer_id(("head_kd", "bias")) == 13
  paths = [("downsample3", "encode_conv", "kernel"), ("block3", 4, "mlp", "fc1_conv", "kernel"),
           ("head_kd", "kernel")]
  scales = layer_decay_scales(paths, 13, 0.75, large_layer_id)
  assert scales[paths[0]] == pytest.approx(0.75 ** 13)
  assert scales[paths[1]] == pytest.approx(0.75 ** 8)
  assert scales[paths[2]] == 1.0


def test_layer_decay_scales_on_real_model():
  from spikejax.models import create_model
  model = nnx.eval_shape(lambda: create_model("espikeformer_t"))
  params = nnx.state(model, nnx.Param)
  n = espikeformer_num_layers((6, 2))
  scales = layer_decay_scales(params, n, 0.5, espikeformer_layer_id)
  pure = nnx.as_pure(params)
  assert jax.tree.structure(scales) == jax.tree.structure(pure)
  flat = {optim.normalize_path(kp): s
          for kp, s in jax.tree_util.tree_flatten_with_path(scales)[0]}
  assert set(flat.values()) == {0.5 ** (n - i) for i in range(n + 1)}  # every group populated
  assert flat[("head", "kernel")] == 1.0
  assert flat[("downsample1_1", "encode_conv", "kernel")] == 0.5 ** n
  # monotone along the network order
  order = ["downsample1_1", "conv_block1_1", "downsample1_2", "conv_block1_2", "downsample2",
           "conv_block2_1", "conv_block2_2", "downsample3", "block3", "downsample4", "block4",
           "head"]
  ids = [max(espikeformer_layer_id(p) for p in flat if p[0] == name) for name in order]
  assert ids == sorted(ids)
  # decay 1.0 (the BASE recipe, spec §5) gives all ones
  ones = layer_decay_scales(params, n, 1.0, espikeformer_layer_id)
  assert set(jax.tree.leaves(ones)) == {1.0}


# --------------------------------------------------------------------------------------------
# EMA


def test_ema_update():
  ema = {"w": jnp.array([1.0, 2.0]), "n": jnp.array(3, jnp.int32)}
  new = {"w": jnp.array([3.0, -2.0]), "n": jnp.array(7, jnp.int32)}
  out = ema_update(ema, new, 0.9)
  np.testing.assert_allclose(out["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2], rtol=1e-6)
  assert int(out["n"]) == 7
  # repeated updates toward a constant converge geometrically; decay 1 keeps, decay 0 copies
  e = ema
  for _ in range(5):
    e = ema_update(e, new, 0.5)
  np.testing.assert_allclose(e["w"], new["w"] + 0.5 ** 5 * (ema["w"] - new["w"]), rtol=1e-6)
  np.testing.assert_allclose(ema_update(ema, new, 1.0)["w"], ema["w"])
  np.testing.assert_allclose(ema_update(ema, new, 0.0)["w"], new["w"])
  # works under jit with a traced decay and on nnx state
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  st = nnx.as_pure(nnx.state(model, nnx.Param))
  out = jax.jit(ema_update)(st, jax.tree.map(jnp.zeros_like, st), jnp.float32(0.99996))
  np.testing.assert_allclose(out["kernel"], st["kernel"] * np.float32(0.99996), rtol=1e-6)


def test_warmup_multistep_schedule_is_mmdets():
  """LinearLR(start 0.001, 1000 iters) then MultiStepLR(x0.1 at epochs 8 and 11 of 12)."""
  from spikejax.train import optim as optim_lib
  total = 1200                          # 12 "epochs" of 100 steps
  s = optim_lib.warmup_multistep_schedule(2e-4, total_steps=total, warmup_steps=100)
  lr = lambda t: float(s(t))
  np.testing.assert_allclose(lr(0), 2e-7, rtol=1e-5)                 # 0.001 x base
  np.testing.assert_allclose(lr(50), 2e-4 * (0.001 + 0.999 * 0.5), rtol=1e-5)
  np.testing.assert_allclose([lr(100), lr(799)], [2e-4] * 2, rtol=1e-6)
  np.testing.assert_allclose([lr(800), lr(1099)], [2e-5] * 2, rtol=1e-5)   # epoch 9 on
  np.testing.assert_allclose([lr(1100), lr(1199)], [2e-6] * 2, rtol=1e-5)  # epoch 12
  with pytest.raises(ValueError, match="fractions of the run"):
    optim_lib.warmup_multistep_schedule(1.0, total_steps=10, warmup_steps=1, milestones=(8,))
