"""Optimizers, learning-rate schedules, layer-wise lr decay and EMA for the training recipes.

* ``lamb_timm``: timm's ``Lamb`` exactly as the official recipes use it (spec §5 "timm LAMB",
  used by §4.3 and §5). ``optax.lamb`` is *not* a drop-in replacement (spec §8 item 27): it has no
  built-in global-norm clipping, it decouples nothing the same way and it applies an unclipped
  trust ratio to every tensor.
* ``adamw`` + ``weight_decay_mask``: the DVS recipe (spec §6.3), AdamW with weight decay on
  ndim > 1 tensors only and ``optax.clip_by_global_norm(1.0)`` chained in front
  (``max_grad_norm=1.0``; the engine's hard-coded max-norm 1.0 clipping).
* ``warmup_cosine_schedule``: the per-iteration linear warmup + half-cosine (spec §4.3, §5, §6.3).
* ``layer_decay_scales`` with ``espikeformer_layer_id`` / ``large_layer_id``: layer-wise lr decay
  (spec §4.3 layer decay), fed to the optimizers as a per-leaf ``lr_scale`` pytree.
* ``ema_update``: timm ``ModelEma``-style weight EMA (spec §4.3, §6.3).

Masks and scale pytrees may be built from ``nnx.state(model, nnx.Param)`` (``nnx.Variable``
leaves) or from plain arrays: they are used as tree *prefixes* of the updates, so they work both
in ``tx.init`` (which ``nnx.Optimizer`` calls with Variables) and in ``tx.update`` (pure arrays).
"""

from __future__ import annotations

import contextlib

from typing import Any, Callable, Hashable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

PyTree = Any
PathLike = Any  # tuple of str/int, a jax key path, or a "a.0.b" / "a/0/b" string
ScalarOrSchedule = float | jax.Array | optax.Schedule
MaskOrFn = PyTree | Callable[[PyTree], PyTree] | None

__all__ = [
    "LambTimmState", "lamb_timm", "adamw", "weight_decay_mask", "scale_by_lr_scale",
    "warmup_cosine_schedule", "layer_decay_scales", "espikeformer_layer_id",
    "espikeformer_num_layers", "large_layer_id", "ema_update", "normalize_path",
]


# --------------------------------------------------------------------------------------------
# pytree helpers


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _unwrap(x):
  if isinstance(x, nnx.Variable):
    return x.get_value()
  return x


def _unwrap_tree(tree: PyTree) -> PyTree:
  """Replaces every ``nnx.Variable`` by its raw value (so the tree is a prefix of pure arrays)."""
  return jax.tree.map(_unwrap, tree, is_leaf=_is_variable)


def _broadcast_leaves(prefix: PyTree, full: PyTree) -> list:
  """The leaves of ``prefix`` broadcast onto the leaves of ``full`` (in ``full``'s order)."""
  return jax.tree.leaves(jax.tree.broadcast(_unwrap_tree(prefix), full))


def _resolve_mask(mask: MaskOrFn, params: PyTree) -> PyTree:
  if mask is None:
    return True
  if callable(mask):
    return mask(params)
  return mask


def weight_decay_mask(params: PyTree) -> PyTree:
  """True for leaves with ndim > 1 (spec §4.3/§5/§6.3: "weight decay only on tensors with ndim > 1";
  biases, BN affine parameters and layer scales get none).

  ``nnx.Variable`` leaves become plain bools, so the result is a prefix of both the Variable tree
  and the pure-array tree that ``nnx.Optimizer`` passes to the transformation.
  """
  return jax.tree.map(lambda p: jnp.ndim(_unwrap(p)) > 1, params, is_leaf=_is_variable)


# --------------------------------------------------------------------------------------------
# timm LAMB (spec §5)


class LambTimmState(NamedTuple):
  count: jax.Array  # number of completed steps (timm's ``step`` - 1)
  mu: PyTree        # exp_avg
  nu: PyTree        # exp_avg_sq


def lamb_timm(learning_rate: ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-6, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
              trust_clip: bool = True, always_adapt: bool = False,
              weight_decay_mask: MaskOrFn = None,
              lr_scale: PyTree | None = None) -> optax.GradientTransformation:
  """timm ``Lamb`` (spec §5 timm LAMB; recipes §4.3 and §5), returned as an optax transformation.

  Per step, with t = 1, 2, ...:

  1. Global clipping over *all* gradients: g <- g / max(||g||_global / max_grad_norm, 1)
     (timm default ``max_grad_norm=1.0``, always on; ``None`` disables it).
  2. Adam with grad averaging (beta3 = 1 - b1) and bias correction:
     m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
     update = (m / (1-b1^t)) / (sqrt(v) / sqrt(1-b2^t) + eps).
  3. Leaves with weight decay (``weight_decay != 0`` and mask True): update += wd * w (L2 inside
     the update, not decoupled). Then the per-tensor trust ratio r = ||w|| / ||update|| (1 if
     either norm is 0), clipped to r <= 1 if ``trust_clip``, multiplies the update. Leaves
     without weight decay get no trust ratio (plain Adam step) unless ``always_adapt``.
  4. w <- w - lr * lr_scale * update.

  Args:
    learning_rate: a float or an optax schedule, evaluated at the number of completed steps
      (0 on the first update), like ``optax.scale_by_learning_rate``.
    weight_decay_mask: None (every leaf is decayed, i.e. timm's single parameter group), a pytree
      of bools (a prefix of params) or a callable params -> such a pytree, e.g.
      ``spikejax.train.optim.weight_decay_mask`` for the recipes' ndim > 1 rule.
    lr_scale: None or a pytree of per-leaf float multipliers (prefix of params), e.g. from
      ``layer_decay_scales`` (spec §4.3 layer decay).

  The update needs ``params``.
  """
  b1 = float(b1)
  b2 = float(b2)

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p)
    return LambTimmState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params),
                         nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("lamb_timm needs `params` in update (weight decay and trust ratio).")
    g_leaves, treedef = jax.tree.flatten(updates)
    p_leaves = treedef.flatten_up_to(params)
    m_leaves = treedef.flatten_up_to(state.mu)
    v_leaves = treedef.flatten_up_to(state.nu)
    mask_leaves = _broadcast_leaves(_resolve_mask(weight_decay_mask, params), updates)
    scale_leaves = (_broadcast_leaves(lr_scale, updates) if lr_scale is not None
                    else [None] * len(g_leaves))

    # 1. global grad-norm clipping (float32 accumulation, like timm's fp32 norm).
    if max_grad_norm is not None and g_leaves:
      gnorm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in g_leaves))
      clip = jnp.maximum(gnorm / max_grad_norm, 1.0)
    else:
      clip = None

    count = state.count + 1
    t = count.astype(jnp.float32)
    bc1 = 1.0 - b1 ** t
    bc2 = 1.0 - b2 ** t
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    out_u, out_m, out_v = [], [], []
    for g, p, m, v, dec, s in zip(g_leaves, p_leaves, m_leaves, v_leaves, mask_leaves,
                                  scale_leaves):
      dtype = g.dtype
      if clip is not None:
        g = (g / clip).astype(dtype)
      # 2. Adam moments, grad averaging, bias correction.
      m = b1 * m + (1.0 - b1) * g
      v = b2 * v + (1.0 - b2) * g * g
      u = (m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)
      # 3. L2 weight decay inside the update, then the (clipped) trust ratio.
      has_wd = jnp.logical_and(jnp.asarray(dec), weight_decay != 0)
      if weight_decay != 0:
        u = jnp.where(has_wd, u + weight_decay * p, u)
      w_norm = jnp.linalg.norm(p.astype(jnp.float32).ravel())
      u_norm = jnp.linalg.norm(u.astype(jnp.float32).ravel())
      ok = jnp.logical_and(w_norm > 0, u_norm > 0)
      ratio = jnp.where(ok, w_norm / jnp.where(ok, u_norm, 1.0), 1.0)
      if trust_clip:
        ratio = jnp.minimum(ratio, 1.0)
      adapt = jnp.logical_or(has_wd, always_adapt)
      u = jnp.where(adapt, u * ratio, u)
      # 4. w <- w - lr * lr_scale * update.
      step = -lr * u if s is None else -(lr * s) * u
      out_u.append(step.astype(dtype))
      out_m.append(m.astype(dtype))
      out_v.append(v.astype(dtype))

    unflat = lambda leaves: jax.tree.unflatten(treedef, leaves)
    return unflat(out_u), LambTimmState(count=count, mu=unflat(out_m), nu=unflat(out_v))

  return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# AdamW (spec §6.3)


def scale_by_lr_scale(lr_scale: PyTree) -> optax.GradientTransformation:
  """Multiplies each update leaf by its ``lr_scale`` (a float pytree, prefix of the updates)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    scales = jax.tree.broadcast(_unwrap_tree(lr_scale), updates)
    return jax.tree.map(lambda s, u: (s * u).astype(u.dtype), scales, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def adamw(learning_rate: ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 1e-2,
          mask: MaskOrFn = weight_decay_mask, max_grad_norm: float | None = None,
          lr_scale: PyTree | None = None) -> optax.GradientTransformation:
  """``optax.adamw`` with the ndim > 1 weight-decay mask (spec §6.3 DVS recipe: AdamW, torch
  default betas/eps, wd 1e-2 on ndim > 1 tensors only).

  ``max_grad_norm``: if set, ``optax.clip_by_global_norm(max_grad_norm)`` is chained in front;
  the DVS recipe uses 1.0 (its engine clips with max-norm 1.0). optax scales by
  max_norm / norm where torch's ``clip_grad_norm_`` uses max_norm / (norm + 1e-6), a negligible
  difference. ``lr_scale``: optional per-leaf multiplier (layer decay), applied after AdamW,
  which also scales the decoupled weight decay exactly as torch's per-group lr does.
  ``mask=None`` decays every leaf.
  """
  mask_arg = None if mask is None else (
      (lambda params: _unwrap_tree(mask(params))) if callable(mask) else _unwrap_tree(mask))
  parts = []
  if max_grad_norm is not None:
    parts.append(optax.clip_by_global_norm(max_grad_norm))
  parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=mask_arg))
  if lr_scale is not None:
    parts.append(scale_by_lr_scale(lr_scale))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)


# --------------------------------------------------------------------------------------------
# schedule (spec §4.3, §5, §6.3)


def warmup_cosine_schedule(base_lr: float, *, total_steps: int, warmup_steps: int,
                           min_lr: float = 0.0) -> optax.Schedule:
  """Per-iteration linear warmup then half-cosine (spec §5 Schedule; §4.3, §6.3 likewise).

  lr(t) = base_lr * t / w for t < w (so lr(0) = 0, like the official ``lr * it / warmup``), then
  min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * (t - w) / (T - w))), with w = warmup_steps,
  T = total_steps and t the step count starting at 0. For t >= T the value stays min_lr.
  """
  w = int(warmup_steps)
  total = int(total_steps)
  if w < 0 or total <= 0:
    raise ValueError(f"need warmup_steps >= 0 and total_steps > 0, got {w}, {total}")
  span = max(total - w, 1)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    warm = base_lr * t / max(w, 1)
    frac = jnp.clip((t - w) / span, 0.0, 1.0)
    cos = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(t < w, warm, cos)

  return schedule


def stretched(schedule: optax.Schedule, at: int, old_total: int,
              new_total: int) -> optax.Schedule:
  """``schedule`` unchanged before step ``at``; from there its remainder up to ``old_total`` is
  spread over the steps up to ``new_total`` (a budget's revised run length,
  ``spikejax.train.budget``), so the rate is continuous at ``at`` and ends as ``schedule`` does."""
  at, old_total, new_total = int(at), int(old_total), int(new_total)
  if not at < new_total or not at < old_total:
    raise ValueError(f"need at < old_total and at < new_total, got {at}, {old_total}, "
                     f"{new_total}")
  ratio = (old_total - at) / (new_total - at)

  def warped(count):
    t = jnp.asarray(count, jnp.float32)
    return schedule(jnp.where(t < at, t, at + (t - at) * ratio))

  return warped


def warmup_poly_schedule(base_lr: float, *, total_steps: int, warmup_steps: int,
                         power: float = 1.0, min_lr: float = 0.0,
                         warmup_start_factor: float = 1e-6) -> optax.Schedule:
  """mmseg's ``LinearLR`` warm-up then ``PolyLR`` (addendum B.3: factor 1e-6 -> 1 over 1500
  iterations, then power 1.0 to 0 at 160k), per iteration t from 0:

  lr(t) = base_lr * (f + (1 - f) * t / w) for t < w (f = warmup_start_factor), then
  min_lr + (base_lr - min_lr) * (1 - (t - w) / (T - w)) ** power, and min_lr from T on.
  """
  w, total = int(warmup_steps), int(total_steps)
  if w < 0 or total <= 0:
    raise ValueError(f"need warmup_steps >= 0 and total_steps > 0, got {w}, {total}")
  span = max(total - w, 1)
  f = float(warmup_start_factor)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    warm = base_lr * (f + (1.0 - f) * t / max(w, 1))
    frac = jnp.clip((t - w) / span, 0.0, 1.0)
    poly = min_lr + (base_lr - min_lr) * (1.0 - frac) ** power
    return jnp.where(t < w, warm, poly)

  return schedule


def warmup_multistep_schedule(base_lr: float, *, total_steps: int, warmup_steps: int,
                              milestones: tuple[float, ...] = (8 / 12, 11 / 12),
                              gamma: float = 0.1, warmup_start_factor: float = 1e-3
                              ) -> optax.Schedule:
  """mmdet's ``LinearLR`` warm-up then ``MultiStepLR`` (addendum B.2: factor 0.001 -> 1 over
  1000 iterations; x0.1 at epochs 8 and 11 of 12), per iteration t from 0:

  lr(t) = base_lr * (f + (1 - f) * t / w) for t < w, then base_lr * gamma ** (number of
  milestones m with t >= round(m * T)); ``milestones`` are fractions of the run (8 / 12 is the
  start of epoch 9 of a 12-epoch run), so a budgeted run keeps them in place.
  """
  w, total = int(warmup_steps), int(total_steps)
  if w < 0 or total <= 0:
    raise ValueError(f"need warmup_steps >= 0 and total_steps > 0, got {w}, {total}")
  marks = sorted(float(m) for m in milestones)
  if any(not 0 < m < 1 for m in marks):
    raise ValueError(f"milestones are fractions of the run in (0, 1), got {milestones}")
  at = jnp.asarray([round(m * total) for m in marks], jnp.float32)
  f = float(warmup_start_factor)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    warm = f + (1.0 - f) * t / max(w, 1)
    drops = jnp.sum(t >= at)
    return base_lr * jnp.where(t < w, warm, 1.0) * jnp.asarray(gamma, jnp.float32) ** drops

  return schedule


def lr_mult_scales(params: PyTree, mults) -> PyTree:
  """Per-leaf lr multipliers (mmseg's ``paramwise_cfg.custom_keys`` ``lr_mult``): a leaf whose
  ``/``-joined path contains a key of ``mults`` gets that key's multiplier (the longest
  matching key wins), others 1.0; a pytree of floats shaped like ``params`` (an ``lr_scale``)."""
  def scale(kp) -> float:
    name = "/".join(str(k) for k in normalize_path(kp))
    hits = [k for k in mults if k in name]
    return float(mults[max(hits, key=len)]) if hits else 1.0

  return jax.tree_util.tree_map_with_path(lambda kp, _: scale(kp), params,
                                          is_leaf=_is_variable)


# --------------------------------------------------------------------------------------------
# layer-wise lr decay (spec §4.3)


def normalize_path(path: PathLike) -> tuple:
  """A parameter path as a tuple of str/int.

  Accepts tuples of str/int, jax key paths (``DictKey``/``SequenceKey``/``GetAttrKey``; the
  trailing ``.value`` of an ``nnx.Variable`` is dropped) and "a.0.b" or "a/0/b" strings.
  """
  if isinstance(path, str):
    parts = path.replace("/", ".").split(".")
    return tuple(int(p) if p.isdigit() else p for p in parts if p)
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      k = k.key
    elif isinstance(k, jax.tree_util.SequenceKey):
      k = k.idx
    elif isinstance(k, jax.tree_util.GetAttrKey):
      k = k.name
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      k = k.key
    out.append(k)
  while out and out[-1] == "value" and len(out) > 1:
    out.pop()
  return tuple(out)


def _index(x) -> int:
  return int(x)


def espikeformer_num_layers(block_depths: Sequence[int] = (6, 2)) -> int:
  """``num_layers`` for ``espikeformer_layer_id``: len(block3) + 1 + len(block4) + 1."""
  return int(block_depths[0]) + 1 + int(block_depths[1]) + 1


def espikeformer_layer_id(path: PathLike, *, block_depths: Sequence[int] = (6, 2)) -> int:
  """Layer id of a BASE E-SpikeFormer parameter (spec §2.2 layout; spec §4.3 layer decay scheme
  extended to the 4-stage base model). The official BASE recipe uses decay 1.0 (spec §5), so
  this only matters for experiments. Monotone in depth, with n3, n4 = ``block_depths``:

  * ``downsample1_1``, ``downsample1_2``, ``conv_block*``, ``downsample2``, ``downsample3`` -> 0
    (the conv stages form one group, as ``downsample*``/``ConvBlock*`` do in spec §4.3);
  * ``block3/i/...`` -> i + 1                      (1 .. n3);
  * ``downsample4`` -> n3 + 1                      (its own group between the two stages);
  * ``block4/j/...`` -> n3 + 2 + j                 (n3 + 2 .. n3 + n4 + 1);
  * everything else (``head``) -> num_layers = n3 + n4 + 2 (``espikeformer_num_layers``).
  """
  p = normalize_path(path)
  n3, n4 = int(block_depths[0]), int(block_depths[1])
  num_layers = n3 + n4 + 2
  name = str(p[0]) if p else ""
  if name == "downsample4":
    return n3 + 1
  if name.startswith("downsample") or name.startswith("conv_block"):
    return 0
  if name == "block3":
    return _index(p[1]) + 1
  if name == "block4":
    return n3 + 2 + _index(p[1])
  return num_layers


def large_layer_id(path: PathLike, *, num_layers: int = 13) -> int:
  """Layer id of a LARGE model parameter (spec §4.3 layer decay): ``downsample*``/``conv_block*``
  (official ``ConvBlock*``) -> 0; ``block3/i/...`` -> i + 1; everything else (``head``,
  ``head_kd``) -> 13 (= 12 blocks + 1, spec §8 item 3). Use with ``num_layers=13``.
  """
  p = normalize_path(path)
  name = str(p[0]) if p else ""
  if name.startswith("downsample") or name.startswith("conv_block") or name.startswith(
      "ConvBlock"):
    return 0
  if name == "block3":
    return _index(p[1]) + 1
  return num_layers


def _is_path_list(x) -> bool:
  return isinstance(x, (list, tuple)) and len(x) > 0 and all(
      isinstance(p, (tuple, str)) for p in x)


def layer_decay_scales(param_paths: PyTree | Iterable[PathLike], num_layers: int, decay: float,
                       layer_id_fn: Callable[[tuple], int]) -> PyTree | dict[Hashable, float]:
  """Per-leaf lr scale decay ** (num_layers - layer_id(path)) (spec §4.3 layer decay).

  ``param_paths`` is either a params pytree (e.g. ``nnx.state(model, nnx.Param)``), giving a
  pytree of floats with the same structure (Variables replaced by floats; pass it as
  ``lr_scale``), or a list of paths, giving ``{normalized path: scale}``. ``layer_id_fn`` gets a
  normalized path tuple such as ``('block3', 2, 'attn', 'q_conv', 'conv', 'kernel')``.
  Example: ``layer_decay_scales(params, 13, 0.75, large_layer_id)``.
  """
  def scale(path) -> float:
    lid = layer_id_fn(normalize_path(path))
    if not 0 <= lid <= num_layers:
      raise ValueError(f"layer id {lid} of {normalize_path(path)} is outside [0, {num_layers}]")
    return float(decay) ** (num_layers - lid)

  if _is_path_list(param_paths):
    return {normalize_path(p): scale(p) for p in param_paths}
  return jax.tree_util.tree_map_with_path(lambda kp, _: scale(kp), param_paths,
                                          is_leaf=_is_variable)


# --------------------------------------------------------------------------------------------
# EMA (spec §4.3, §6.3)


def ema_update(ema_params: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
  """One EMA step, ema <- ema * decay + (1 - decay) * params (timm ``ModelEma``; spec §4.3 decay
  0.99996, spec §6.3 decay 0.999, every iteration). Pure; floating leaves are averaged in their
  own dtype, non-floating leaves (counters) are copied from ``params``.
  """
  def step(e, p):
    if not jnp.issubdtype(jnp.result_type(e), jnp.floating):
      return p
    d = jnp.asarray(decay, jnp.result_type(e))
    return (e * d + (1 - d) * p).astype(jnp.result_type(e))

  return jax.tree.map(step, ema_params, params)


class EMA:
  """Exponential moving average of a model's variables (timm ``ModelEma``), kept as arrays."""

  def __init__(self, model, decay: float):
    from flax import nnx
    self.decay = float(decay)
    # copies: the training step donates the model's buffers
    self.params = {"/".join(str(p) for p in path): jnp.array(var.get_value(), copy=True)
                   for path, var in nnx.to_flat_state(nnx.state(model,
                                                               nnx.Any(nnx.Param, nnx.BatchStat)))}
    self._update = jax.jit(ema_update)

  @contextlib.contextmanager
  def swapped_into(self, model):
    """Temporarily loads the EMA variables into ``model`` (e.g. to evaluate them)."""
    from flax import nnx
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    saved = {path: var.get_value() for path, var in nnx.to_flat_state(state)}
    flat = nnx.to_flat_state(state)
    for path, var in flat:
      var.set_value(self.params["/".join(str(p) for p in path)])
    nnx.update(model, nnx.from_flat_state(flat))
    try:
      yield model
    finally:
      flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
      for path, var in flat:
        var.set_value(saved[path])
      nnx.update(model, nnx.from_flat_state(flat))

  def update(self, model) -> None:
    from flax import nnx
    cur = {"/".join(str(p) for p in path): var.get_value()
           for path, var in nnx.to_flat_state(nnx.state(model,
                                                       nnx.Any(nnx.Param, nnx.BatchStat)))}
    self.params = self._update(self.params, cur, self.decay)
