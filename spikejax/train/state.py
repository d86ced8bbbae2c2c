"""The one train-state builder: config -> model, optimizer (schedule), shardings, EMA.

``build_train_state(config, mesh, ...)`` builds them for real (the trainer, ``spikejax.bench``,
``spikejax.analysis.demo``) or abstractly (``abstract=True``: ``nnx.eval_shape``, no memory;
``launch/aot_compile.py``), in the same order and with the same rules, so a compiled step is
the one the trainer runs. ``validate(config, num_devices)`` checks a config before anything is
built; ``schedule_steps`` turns epochs into steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from spikejax.data.event_pipeline import model_input
from spikejax.models import from_config
from spikejax.models.from_config import ConfigError
from spikejax.train import budget as budget_lib
from spikejax.train import checkpoints as ckpt_lib
from spikejax.train import paths
from spikejax.train import evaluators as evaluators_lib
from spikejax.train import optim
from spikejax.train import sharding as sharding_lib
from spikejax.train import tasks as tasks_lib

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("warmup_cosine", "constant", "warmup_poly", "warmup_multistep")


# run settings that count something: at least 1 (None: unset, where the config allows it)
COUNTS = {"batch_size": "images per step", "eval_batch_size": "images per eval step",
          "log_every_steps": "steps between log rows",
          "checkpoint_every_steps": "steps between checkpoints",
          "keep_checkpoints": "checkpoints kept (0 would keep none: all state lost)",
          "eval_every_steps": "steps between extra evaluations",
          "max_train_steps": "training steps", "max_eval_steps": "eval steps"}
OPTIONAL_COUNTS = ("eval_every_steps", "max_train_steps", "max_eval_steps")


def _check_counts(config) -> None:
  for key, what in COUNTS.items():
    if key not in config:
      continue
    value = config[key]
    if value is None and key in OPTIONAL_COUNTS:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f"{key}={value!r}: must be a whole number >= 1 ({what}); set "
                        f"--config.{key}=N.")


def validate(config, num_devices: int) -> None:
  """Checks everything that can be checked before building data or compiling (model, neuron
  options, the counts of ``COUNTS``, batch and mesh against ``num_devices``, optimizer, the
  task and its model, the evaluators); raises ``ConfigError``."""
  from_config.check(config)
  task = tasks_lib.from_config(config)
  _check_counts(config)
  if config.batch_size % num_devices:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {num_devices} "
                      f"devices; use a multiple of {num_devices}.")
  if config.eval_batch_size % num_devices:
    raise ConfigError(f"eval_batch_size={config.eval_batch_size} is not divisible by the "
                      f"{num_devices} devices.")
  if config.batch_size % jax.process_count():
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the "
                      f"{jax.process_count()} processes.")
  try:
    sharding_lib.mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  oc = config.optimizer
  if oc.name not in OPTIMIZERS:
    raise ConfigError(f"optimizer.name must be 'adamw' or 'lamb', got {oc.name!r}.")
  if oc.get("schedule", SCHEDULES[0]) not in SCHEDULES:
    raise ConfigError(f"optimizer.schedule must be one of {SCHEDULES}, got "
                      f"{oc.get('schedule')!r}.")
  if not config.num_epochs > 0:
    raise ConfigError(f"num_epochs must be > 0, got {config.num_epochs}.")
  if config.get("time_budget_minutes") is not None:
    why = budget_lib.check(config.time_budget_minutes, None, oc.get("schedule", SCHEDULES[0]))
    if why:
      raise ConfigError(why)
  frames = config.get("frames")
  if frames is not None and frames.get("time_steps", 4) != config.spike.time_steps:
    raise ConfigError(f"frames.time_steps={frames.get('time_steps', 4)} (frames per example) "
                      f"differs from spike.time_steps={config.spike.time_steps} (the model's "
                      "real timesteps); set both to the same T.")
  init_from = config.get("init_from")
  if init_from and not paths.exists(init_from):
    raise ConfigError(f"init_from={init_from!r} does not exist: give the workdir of a "
                      f"pretraining run (or a model directory from spikejax.convert).")
  stride = from_config.total_stride(config)
  size = config.get("image_size")
  spec = _dataset_spec(config.get("dataset"))
  if (spec is not None and spec.kind == "image" and spec.fit == "pad" and size is not None
      and size < spec.input_shape[0]):
    raise ConfigError(f"image_size={size} is smaller than {spec.name}'s {spec.input_shape[0]} "
                      f"px images, which this data set zero-pads to image_size (fit='pad') "
                      f"and never shrinks; use image_size >= {spec.input_shape[0]}.")
  if stride and size is not None and size < stride:
    raise ConfigError(f"image_size={size} is smaller than {config.model_name}'s total stride "
                      f"{stride} (the product of its strides): its last stage would have no "
                      f"pixels; use image_size >= {stride} or smaller model.strides.")
  family = from_config.family(config)
  tasks_lib.check_model(task, config, family)
  tasks_lib.check_eval_views(task, config)
  task.validate(config, family)
  evaluators_lib.from_config(config, task, num_devices)


def _dataset_spec(name):
  """The registered ``DatasetSpec`` of ``name``, or None (unknown names are the data
  layer's error, raised with the list of registered sets when the data is built)."""
  from spikejax.data import registry
  try:
    return registry.get_spec(name) if name else None
  except (KeyError, ValueError):
    return None


def schedule_steps(config, steps_per_epoch: int) -> int:
  """Total train steps: ``ceil(num_epochs * steps_per_epoch)``, cut to ``max_train_steps``."""
  total = int(math.ceil(config.num_epochs * steps_per_epoch))
  if config.get("max_train_steps"):
    total = min(total, config.max_train_steps)
  return total


def make_schedule(config, total_steps: int, steps_per_epoch: int) -> Callable:
  """The learning rate per step: linear warmup over ``warmup_epochs`` then half-cosine to
  ``min_lr`` (spec §4.3, §5, §6.3); ``optimizer.schedule='constant'``: ``optimizer.lr``;
  ``'warmup_poly'`` (mmseg, B.3); ``'warmup_multistep'`` (mmdet, B.2: ``milestones`` as
  fractions of the run, ``gamma``, ``warmup_start_factor``)."""
  oc = config.optimizer
  if oc.get("schedule", SCHEDULES[0]) == "constant":
    lr = float(oc.lr)
    return lambda step: lr
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if oc.get("schedule") == "warmup_poly":   # mmseg LinearLR + PolyLR (addendum B.3)
    return optim.warmup_poly_schedule(oc.lr, total_steps=total_steps, warmup_steps=warmup,
                                      power=oc.get("poly_power", 1.0), min_lr=config.min_lr)
  if oc.get("schedule") == "warmup_multistep":   # mmdet LinearLR + MultiStepLR (addendum B.2)
    try:
      return optim.warmup_multistep_schedule(
          oc.lr, total_steps=total_steps, warmup_steps=warmup,
          milestones=tuple(oc.get("milestones", (8 / 12, 11 / 12))),
          gamma=oc.get("gamma", 0.1), warmup_start_factor=oc.get("warmup_start_factor", 1e-3))
    except ValueError as e:
      raise ConfigError(f"optimizer (warmup_multistep): {e}") from None
  return optim.warmup_cosine_schedule(oc.lr, total_steps=total_steps, warmup_steps=warmup,
                                      min_lr=config.min_lr)


def build_optimizer(config, model, total_steps: int, steps_per_epoch: int):
  """``(nnx.Optimizer over the model's Params, lr schedule)`` from ``config.optimizer``:
  AdamW (weight decay on ndim > 1 tensors, or every tensor with ``decay_all``) or timm LAMB,
  with optional layer-wise lr decay (spec §4.3) and global-norm clipping."""
  schedule = make_schedule(config, total_steps, steps_per_epoch)
  return nnx.Optimizer(model, make_tx(config, model, schedule), wrt=nnx.Param), schedule


def make_tx(config, model, schedule: Callable):
  """The optax transformation of ``config.optimizer`` over ``model``'s Params with the lr
  ``schedule`` (``build_optimizer``; a budgeted run swaps it for its planned schedule, which
  keeps the optimizer state's structure)."""
  oc = config.optimizer
  # a constant rate goes in as a number (optax's plain scaling, no step counter)
  lr = float(oc.lr) if oc.get("schedule", SCHEDULES[0]) == "constant" else schedule
  params = nnx.state(model, nnx.Param)
  lr_scale = None
  if oc.get("layer_decay", 1.0) != 1.0:
    if hasattr(model.config, "block_depths"):   # E-SpikeFormer
      depths = tuple(model.config.block_depths)
      layer_id = lambda p: optim.espikeformer_layer_id(p, block_depths=depths)
      num_layers = optim.espikeformer_num_layers(depths)
    else:  # LARGE (spec §4.3): conv stages 0, block3.i -> i + 1, heads depth + 1
      num_layers = model.config.depth + 1
      layer_id = lambda p: optim.large_layer_id(p, num_layers=num_layers)
    lr_scale = optim.layer_decay_scales(params, num_layers, oc.layer_decay, layer_id)
  if oc.get("lr_mult"):   # {"decode_head": 2.0}: mmseg custom_keys lr_mult (addendum B.3)
    mult = optim.lr_mult_scales(params, dict(oc.lr_mult))
    lr_scale = mult if lr_scale is None else jax.tree.map(lambda a, b: a * b, lr_scale, mult)
  if oc.name == "adamw":
    # ``decay_all``: weight decay on every tensor (the MIM recipe, spec §4.2 / §8 trap 7)
    mask = None if oc.get("decay_all", False) else optim.weight_decay_mask
    tx = optim.adamw(lr, b1=oc.b1, b2=oc.b2, eps=oc.eps, weight_decay=oc.weight_decay,
                     mask=mask, max_grad_norm=oc.grad_clip_norm or None, lr_scale=lr_scale)
  else:
    tx = optim.lamb_timm(lr, weight_decay=oc.weight_decay,
                         weight_decay_mask=optim.weight_decay_mask, lr_scale=lr_scale,
                         max_grad_norm=oc.grad_clip_norm or 1.0)
  return tx


@dataclasses.dataclass
class TrainState:
  """What ``build_train_state`` returns.

  Real: ``model``/``optimizer`` hold arrays placed on ``mesh`` by the sharding rules; ``ema``
  is an ``optim.EMA`` (or ``None``). Abstract: ``model``/``optimizer`` hold shapes only;
  ``graphdef``/``state`` are their split with ``jax.ShapeDtypeStruct`` leaves carrying the
  shardings (what ``jit(...).lower`` takes) and ``ema`` is the abstract tree of the EMA copy.
  """
  model: Any
  optimizer: Any
  schedule: Callable
  ema: Any
  task: tasks_lib.Task
  mesh: Any
  model_kwargs: dict[str, Any]
  abstract: bool = False
  graphdef: Any = None
  state: Any = None
  init_report: dict[str, list[str]] | None = None


def _abstract_with_shardings(tree, mesh):
  if mesh is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  shardings = sharding_lib.tree_shardings(tree, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def build_train_state(config, mesh, *, num_classes: int, image_shape: tuple[int, ...],
                      total_steps: int, steps_per_epoch: int, abstract: bool = False,
                      task: tasks_lib.Task | None = None,
                      init_values: dict[str, Any] | None = None,
                      with_optimizer: bool = True) -> TrainState:
  """Model (``config`` through ``spikejax.models.from_config`` plus the task's data-dependent
  options), optimizer and schedule, placed on ``mesh`` (``None``: left on the default device),
  in train mode, with an EMA copy when ``config.ema_decay`` is set.

  ``image_shape`` is one example's shape (``(H, W, C)``, or ``(T, H, W, C)`` event frames);
  ``init_values`` (``{"a/b/kernel": array}``, from ``checkpoints.read_model_values``) are
  loaded into the fresh model by name before the optimizer is built (the report is in
  ``init_report``). ``abstract=True`` builds shapes only (``nnx.eval_shape``).
  ``with_optimizer=False`` (real only; inference benchmarks) leaves ``optimizer`` ``None``.
  """
  task = task or tasks_lib.from_config(config)
  overrides = task.model_overrides(config, image_shape)
  kwargs = {**from_config.model_kwargs(config), **overrides}
  example = model_input(np.zeros((1,) + tuple(image_shape), np.float32))

  def create():
    return from_config.create_from_config(config, num_classes=num_classes,
                                          rngs=nnx.Rngs(config.seed), **overrides)

  def build():
    model = create()
    return model, build_optimizer(config, model, total_steps, steps_per_epoch)[0]

  mesh_ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  report = None
  if abstract:
    with mesh_ctx:
      model, optimizer = nnx.eval_shape(build)
    model.check_input(example)
    model.train()
    graphdef, state = nnx.split((model, optimizer))
    state = _abstract_with_shardings(state, mesh)
    ema = None
    if config.get("ema_decay"):
      ema = _abstract_with_shardings(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)), mesh)
    return TrainState(model, optimizer, make_schedule(config, total_steps, steps_per_epoch),
                      ema, task, mesh, kwargs, abstract=True, graphdef=graphdef, state=state)

  # Built on the default device, then placed on the mesh: under a mesh context every eager
  # initializer compiles anew for that mesh (252 compiles, 71 s, for two E-SpikeFormers on two
  # meshes in tests/test_sharding.py's memory test, measured with cProfile).
  model = create()
  model.check_input(example)
  if init_values is not None:
    report = ckpt_lib.transfer_weights(init_values, model)
  if with_optimizer:
    optimizer, schedule = build_optimizer(config, model, total_steps, steps_per_epoch)
  else:
    optimizer, schedule = None, make_schedule(config, total_steps, steps_per_epoch)
  with mesh_ctx:
    if mesh is not None:
      if optimizer is None:
        nnx.update(model, jax.device_put(nnx.state(model),
                                         sharding_lib.tree_shardings(nnx.state(model), mesh)))
      else:
        sharding_lib.shard_model_and_optimizer(model, optimizer, mesh)
  model.train()
  ema = optim.EMA(model, config.ema_decay) if config.get("ema_decay") else None
  return TrainState(model, optimizer, schedule, ema, task, mesh, kwargs, init_report=report)

