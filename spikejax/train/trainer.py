"""The training loop: config -> data, model, optimizer, jitted steps, checkpoints, metrics.

A short, readable loop in the style of big_vision's ``train.py``: validate the config before
anything compiles, auto-resume from the workdir, evaluate each epoch, checkpoint every N steps
and on SIGTERM/SIGINT, stop on a NaN loss naming the last good checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spikejax.data.event_pipeline import model_input
from spikejax.train import checkpoints as ckpt_lib
from spikejax.train import metrics as metrics_lib
from spikejax.train import optim
from spikejax.train import sharding as sharding_lib

log = logging.getLogger("spikejax")

MODES = {
    # SFA: integer firing inside each real timestep (paper §4).
    "sfa": dict(firing="sfa", temporal="independent"),
    # Vanilla direct training: binary spikes, LIF (tau 2, hard reset), image repeated over T.
    "vanilla": dict(firing="binary", temporal="lif_hard", tau=2.0, detach_reset=True),
}


class ConfigError(ValueError):
  """A config that cannot run; raised before anything is compiled."""


def model_kwargs(config) -> dict[str, Any]:
  """``create_model`` keyword arguments from ``config.model``, ``config.mode`` and ``config.spike``."""
  kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.model.to_dict().items()}
  if config.mode not in MODES:
    raise ConfigError(f"config.mode must be one of {sorted(MODES)}, got {config.mode!r}.")
  kw.update(MODES[config.mode])
  kw.update(config.spike.to_dict())
  if config.channels is not None:
    kw["in_channels"] = config.channels
  return kw


def model_dtype_and_kwargs(config, image_shape) -> tuple[Any, dict[str, Any]]:
  """``(dtype, create_model kwargs)`` for ``config`` and the data's ``image_shape`` (a MIM
  model without ``img_size`` is built for the data's ``(H, W)``)."""
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  kw = model_kwargs(config)
  if (config.get("task") or "classify") == "mim" and "img_size" not in kw:
    kw["img_size"] = tuple(image_shape[-3:-1])
  return dtype, kw


def validate(config, num_devices: int) -> None:
  """Checks everything that can be checked before building data or compiling."""
  from spikejax.models import get_variant
  from spikejax.models.layers import SpikeConfig
  try:
    get_variant(config.model_name)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  kw = model_kwargs(config)
  spike_fields = {f for f in SpikeConfig.__dataclass_fields__}
  try:
    SpikeConfig(**{k: v for k, v in kw.items() if k in spike_fields})
  except (ValueError, TypeError) as e:
    raise ConfigError(f"bad neuron config: {e}") from None
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
  if config.optimizer.name not in ("adamw", "lamb"):
    raise ConfigError(f"optimizer.name must be 'adamw' or 'lamb', got {config.optimizer.name!r}.")
  if not config.num_epochs > 0:
    raise ConfigError(f"num_epochs must be > 0, got {config.num_epochs}.")
  frames = config.get("frames")
  if frames is not None and frames.get("time_steps", 4) != config.spike.time_steps:
    raise ConfigError(f"frames.time_steps={frames.get('time_steps', 4)} (frames per example) "
                      f"differs from spike.time_steps={config.spike.time_steps} (the model's "
                      "real timesteps); set both to the same T.")
  if config.dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}.")
  task = config.get("task") or "classify"
  family = get_variant(config.model_name).family
  if task not in ("classify", "mim"):
    raise ConfigError(f"task must be 'classify' or 'mim' (masked-image-modelling "
                      f"pretraining), got {task!r}.")
  if (task == "mim") != (family == "spikmae"):
    raise ConfigError(
        f"task={task!r} does not fit model {config.model_name!r} (family {family!r}): MIM "
        f"pretraining needs a spikmae_* model, classification any other model.")
  init_from = config.get("init_from")
  if init_from and not os.path.exists(init_from):
    raise ConfigError(f"init_from={init_from!r} does not exist: give the workdir of a "
                      f"pretraining run (or a model directory from spikejax.convert).")
  distill = config.get("distill")
  teacher = distill.get("teacher") if distill else None
  if teacher:
    if not os.path.exists(teacher):
      raise ConfigError(f"distill.teacher={teacher!r} does not exist: give a training workdir "
                        f"or a model directory.")
    if not config.model.get("kd", family == "spikformer") or family != "spikformer":
      raise ConfigError(f"distillation needs a model with a distillation head (a spikformer* "
                        f"model with model.kd=True); {config.model_name!r} has none.")
    if not 0.0 <= distill.get("alpha", 0.5) <= 1.0:
      raise ConfigError(f"distill.alpha must be in [0, 1], got {distill.get('alpha')}.")


def build_optimizer(config, model, total_steps: int, steps_per_epoch: int):
  oc = config.optimizer
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  schedule = optim.warmup_cosine_schedule(oc.lr, total_steps=total_steps, warmup_steps=warmup,
                                          min_lr=config.min_lr)
  params = nnx.state(model, nnx.Param)
  lr_scale = None
  if oc.layer_decay != 1.0:
    if hasattr(model.config, "block_depths"):   # E-SpikeFormer
      depths = tuple(model.config.block_depths)
      layer_id = lambda p: optim.espikeformer_layer_id(p, block_depths=depths)
      num_layers = optim.espikeformer_num_layers(depths)
    else:  # LARGE (spec §4.3): conv stages 0, block3.i -> i + 1, heads depth + 1
      num_layers = model.config.depth + 1
      layer_id = lambda p: optim.large_layer_id(p, num_layers=num_layers)
    lr_scale = optim.layer_decay_scales(params, num_layers, oc.layer_decay, layer_id)
  if oc.name == "adamw":
    # ``decay_all``: weight decay on every tensor (the MIM recipe, spec §4.2 / §8 trap 7)
    mask = None if oc.get("decay_all", False) else optim.weight_decay_mask
    tx = optim.adamw(schedule, b1=oc.b1, b2=oc.b2, eps=oc.eps, weight_decay=oc.weight_decay,
                     mask=mask, max_grad_norm=oc.grad_clip_norm or None, lr_scale=lr_scale)
  else:
    tx = optim.lamb_timm(schedule, weight_decay=oc.weight_decay,
                         weight_decay_mask=optim.weight_decay_mask, lr_scale=lr_scale,
                         max_grad_norm=oc.grad_clip_norm or 1.0)
  return nnx.Optimizer(model, tx, wrt=nnx.Param), schedule


def _soft_ce(logits, targets):
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


@functools.lru_cache(maxsize=None)
def make_eval_step():
  """The jitted eval step (built once per process, so compilations are reused)."""

  @nnx.jit
  def eval_step(model, batch, index):
    del index  # (the MIM eval step draws its masks from it)
    # spiking layers with ``record=True`` sow their count histograms (analysis.firing)
    x = model_input(batch["image"])  # event frames: (B, T, ...) -> time-major
    logits, inter = nnx.capture(model, nnx.Intermediate)(x)
    mask = batch["mask"]
    correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["label"]) * mask
    from spikejax.analysis.firing import sown_histograms
    return {"correct": jnp.sum(correct), "loss_sum": jnp.sum(loss), "count": jnp.sum(mask),
            "firing": sown_histograms(inter)}

  return eval_step


def _classify_loss(out, batch, teacher_logits=None, alpha: float = 0.5):
  """Soft-target CE; with a distillation head (``out = (logits, logits_kd)``, spec §4.1/§4.3)
  ``(1 - alpha) * CE(head) + alpha * CE(head_kd, hard target)``: the hard target is the
  teacher's argmax on the (mixed) input, or the label when no teacher is given."""
  if not isinstance(out, tuple):
    return jnp.mean(_soft_ce(out, batch["target"])), out
  logits, logits_kd = out
  if teacher_logits is None:
    kd_target = batch["target"]
  else:
    kd_target = jax.nn.one_hot(jnp.argmax(teacher_logits, -1), logits_kd.shape[-1])
  loss = (1 - alpha) * jnp.mean(_soft_ce(logits, batch["target"])) + \
      alpha * jnp.mean(_soft_ce(logits_kd, kd_target))
  return loss, (logits + logits_kd) / 2


@functools.lru_cache(maxsize=None)
def make_mim_eval_step(seed: int = 0):
  """The jitted MIM eval step: reconstruction loss on masked patches, with masks drawn from a
  fixed key per batch index (the same masks at every evaluation), and the effective rank
  (paper Eq. 29) of the encoder's output tokens for the unmasked images."""

  @nnx.jit
  def eval_step(model, batch, index):
    from spikejax.models.mim import mim_loss
    x = model_input(batch["image"])
    key = jax.random.fold_in(jax.random.key(seed), index)
    active, ids_restore = model.random_mask(x.shape[-4] if x.ndim == 4 else x.shape[1], key)
    pred = model.forward_decoder(model.forward_encoder(x, active), ids_restore)
    images = x if x.ndim == 4 else jnp.mean(x, axis=0)
    mask = batch["mask"]
    loss = mim_loss(pred, images, active, model.patch, weights=mask)
    # effective rank (paper Eq. 29, Fig. 10b) of the encoder's tokens for the whole images
    from spikejax.analysis.rank import effective_rank
    full = jnp.ones_like(active)
    tokens = model.forward_encoder(x, full)
    keep = mask > 0
    tokens = jnp.where(keep[:, None, None], tokens, 0.0)
    return {"loss_sum": loss * jnp.sum(mask), "count": jnp.sum(mask),
            "erank_sum": effective_rank(tokens), "rank_batches": jnp.float32(1.0)}

  return eval_step


def _functional_train_step(graphdef, state, batch, teacher_graphdef=None, teacher_state=None,
                           alpha=0.5):
  model, optimizer = nnx.merge(graphdef, state)
  x = model_input(batch["image"])
  teacher_logits = None
  if teacher_graphdef is not None:  # a model in eval mode; no gradient
    teacher_logits = jax.lax.stop_gradient(nnx.merge(teacher_graphdef, teacher_state)(x))

  def loss_fn(m):
    return _classify_loss(m(x), batch, teacher_logits, alpha)

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}
  return nnx.state((model, optimizer)), metrics


def _functional_mim_step(graphdef, state, batch):
  """One MIM pretraining step (spec §4.2): the mask comes from the model's own rng stream."""
  model, optimizer = nnx.merge(graphdef, state)

  def loss_fn(m):
    return m(model_input(batch["image"]))[0]

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return nnx.state((model, optimizer)), {"loss": loss, "grad_norm": optax.tree.norm(grads)}


_jitted_functional_step = jax.jit(_functional_train_step, static_argnums=0, donate_argnums=1)
_jitted_distill_step = jax.jit(_functional_train_step, static_argnums=(0, 3, 5),
                               donate_argnums=1)
_jitted_mim_step = jax.jit(_functional_mim_step, static_argnums=0, donate_argnums=1)


def jitted_train_step(task: str, distill: bool = False):
  """The jitted train step ``SplitTrainer`` runs for ``task`` (``launch/aot_compile.py``
  compiles the same one ahead of time): ``step(graphdef, state, batch, *extra)``."""
  if task == "mim":
    return _jitted_mim_step
  return _jitted_distill_step if distill else _jitted_functional_step


def unalias(tree):
  """``tree`` with a private copy of every array whose device buffer another array (or another
  shard of itself) also uses: donating such a buffer to the train step would free it while in
  use (one array shared by two parameters; orbax restores on CPU "devices")."""
  seen: set[int] = set()

  def own(x):
    if not isinstance(x, jax.Array):
      return x
    ptrs = [s.data.unsafe_buffer_pointer() for s in x.addressable_shards]
    if len(set(ptrs)) < len(ptrs) or seen.intersection(ptrs):
      x = ckpt_lib.copy_array(x)
      ptrs = [s.data.unsafe_buffer_pointer() for s in x.addressable_shards]
    seen.update(ptrs)
    return x

  return jax.tree.map(own, tree)


class SplitTrainer:
  """Runs training steps on ``(graphdef, state)`` with one ``jax.jit`` call per step.

  ``nnx.jit`` walks the module graph on every call (tens of ms for E-SpikeFormer on a CPU);
  keeping the model and optimizer split avoids that. ``sync()`` writes the current state back
  into the live ``model``/``optimizer`` (for evaluation, EMA and checkpoints); the arrays the
  live objects hold are donated to the next step, so read them only right after a ``sync()``.
  """

  def __init__(self, model, optimizer, *, task: str = "classify", teacher=None,
               distill_alpha: float = 0.5):
    self.model, self.optimizer = model, optimizer
    self.graphdef, state = nnx.split((model, optimizer))
    self.state = unalias(state)
    self.task = task
    self.teacher = None
    self.distill_alpha = float(distill_alpha)
    if teacher is not None:
      teacher.eval()
      self.teacher = nnx.split(teacher)

  def step(self, batch):
    distill = self.task != "mim" and self.teacher is not None
    extra = (*self.teacher, self.distill_alpha) if distill else ()
    step = jitted_train_step(self.task, distill)
    self.state, metrics = step(self.graphdef, self.state, batch, *extra)
    return metrics

  def sync(self) -> None:
    nnx.update((self.model, self.optimizer), self.state)


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag checked at step boundaries (save, then exit cleanly)."""

  def __init__(self):
    self.received: int | None = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C aborts at once
    self.received = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class NaNLossError(RuntimeError):
  pass


def evaluate(model, eval_step, ds, mesh, max_steps=None, *, firing: bool = False
             ) -> dict[str, Any]:
  """Accuracy and loss over ``ds``; with ``firing``, also every spiking layer's histogram of
  counts per real timestep (sown inside the jitted step; one host transfer per batch).
  Padding rows of the last eval batch are excluded from accuracy and loss but not from the
  histograms."""
  from spikejax.models.layers import SpikeNeuron
  neurons = [m for _, m in nnx.iter_modules(model) if isinstance(m, SpikeNeuron)]
  model.eval()
  for sn in neurons:
    sn.record = firing
  totals: dict[str, float] = {}
  hists: dict[str, np.ndarray] = {}
  try:
    for i, batch in enumerate(ds):
      if max_steps is not None and i >= max_steps:
        break
      out = jax.device_get(eval_step(model, sharding_lib.shard_batch(batch, mesh),
                                     jnp.asarray(i, jnp.int32)))
      for k, v in out.items():
        if k != "firing":
          totals[k] = totals.get(k, 0.0) + float(v)
      for k, v in out.get("firing", {}).items():
        hists[k] = hists.get(k, 0) + np.asarray(v, np.float64)
  finally:
    for sn in neurons:
      sn.record = False
    model.train()
  n = max(totals.get("count", 0.0), 1.0)
  res = {"accuracy": totals["correct"] / n if "correct" in totals else None,
         "loss": totals.get("loss_sum", 0.0) / n, "examples": int(totals.get("count", 0))}
  if "erank_sum" in totals:  # MIM: mean effective rank of the encoder features per batch
    res["erank"] = totals["erank_sum"] / max(totals["rank_batches"], 1.0)
  if firing:
    res["firing"] = hists
  return res


def _firing_summary(hists: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
  """Scalars (mean rate, network NSFR per sub-step) and per-layer statistics from histograms."""
  from spikejax.analysis.firing import FiringStats, LayerFiring
  stats = FiringStats({k: LayerFiring(k, v, head=(k == "head_spike")) for k, v in hists.items()},
                      batches=0, images=0)
  scalars = {"eval/firing_rate": stats.mean_rate()}
  for i, v in enumerate(stats.nsfr_curve(), 1):
    scalars[f"eval/nsfr_{i}"] = float(v)
  return scalars, {k: v.as_dict() for k, v in stats.layers.items()}


def _brief(names, n: int = 4) -> str:
  names = sorted(names)
  return "none" if not names else ", ".join(names[:n]) + (f" (+{len(names) - n})"
                                                          if len(names) > n else "")


def _plain(value):
  return value.to_dict() if hasattr(value, "to_dict") else value


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the job described by ``config`` in ``workdir``; returns a summary."""
  from spikejax import data as data_lib
  from spikejax.models import count_params, create_model

  t_start = time.time()
  num_devices = jax.device_count()
  validate(config, num_devices)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  mesh = sharding_lib.make_mesh(config.mesh, num_devices)
  train_ds = data_lib.get_dataset(config.dataset, split=config.train_split,
                                  batch_size=config.batch_size, data_dir=config.data_dir,
                                  train=True, seed=config.seed, image_size=config.image_size,
                                  augment=_plain(config.augment), channels=config.channels,
                                  frames=_plain(config.get("frames")))
  eval_ds = data_lib.get_dataset(config.dataset, split=config.eval_split,
                                 batch_size=config.eval_batch_size, data_dir=config.data_dir,
                                 train=False, seed=config.seed, image_size=config.image_size,
                                 channels=config.channels, frames=_plain(config.get("frames")))
  steps_per_epoch = train_ds.steps_per_epoch
  total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))
  if config.get("max_train_steps"):
    total_steps = min(total_steps, config.max_train_steps)

  dtype, kw = model_dtype_and_kwargs(config, train_ds.image_shape)
  task = config.get("task") or "classify"
  manager = ckpt_lib.TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                       keep=config.keep_checkpoints)
  resuming = bool(manager.manager.all_steps())
  init_values = None
  if config.get("init_from") and not resuming:  # read (and check) before building anything big
    init_values = ckpt_lib.read_model_values(config.init_from)
  teacher = None
  if task == "classify" and config.get("distill") and config.distill.get("teacher"):
    teacher, _ = ckpt_lib.load_trained(config.distill.teacher)
  with jax.set_mesh(mesh):
    model = create_model(config.model_name, num_classes=train_ds.num_classes,
                         rngs=nnx.Rngs(config.seed), dtype=dtype, **kw)
    model.check_input(model_input(np.zeros((1,) + tuple(train_ds.image_shape), np.float32)))
    if init_values is not None:
      report = ckpt_lib.transfer_weights(init_values, model)
      if is_main:
        log.info("initialised from %s: %d arrays loaded; dropped %s; kept fresh %s",
                 config.init_from, len(report["loaded"]), _brief(report["dropped"]),
                 _brief(report["fresh"]))
    optimizer, schedule = build_optimizer(config, model, total_steps, steps_per_epoch)
    sharding_lib.shard_model_and_optimizer(model, optimizer, mesh)
    if teacher is not None:
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      nnx.update(teacher, jax.device_put(nnx.state(teacher), replicated))
  model.train()
  ema = optim.EMA(model, config.ema_decay) if config.ema_decay else None

  start_step = manager.restore_latest(model, optimizer, ema)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  if is_main:
    log.info("model %s: %d parameters; %d steps (%d per epoch); devices %d; resume at %d",
             config.model_name, count_params(model), total_steps, steps_per_epoch, num_devices,
             start_step)
  eval_step = make_mim_eval_step(config.seed) if task == "mim" else make_eval_step()
  distill = config.get("distill")
  runner = SplitTrainer(model, optimizer, task=task, teacher=teacher,
                        distill_alpha=distill.get("alpha", 0.5) if distill else 0.5)
  best = manager.read_best()
  summary: dict[str, Any] = {}
  step = start_step
  last_saved = start_step if start_step else None
  bar = metrics_lib.Progress(total_steps, initial=start_step,
                             enabled=is_main and config.progress_bar)
  history: list[dict[str, float]] = []
  stopped_by = None
  time_limit = config.get("time_limit_minutes")
  t_seen, imgs_seen, t_last = time.time(), 0, time.time()
  with _StopSignal() as stop:
    it = train_ds.iterate(start_step)
    while step < total_steps:
      batch = next(it)
      out = runner.step(sharding_lib.shard_batch(batch, mesh))
      step += 1
      imgs_seen += config.batch_size
      if ema is not None:
        runner.sync()
        ema.update(model)
      if step % config.log_every_steps == 0 or step == total_steps:
        vals = {k: float(v) for k, v in out.items()}
        if not math.isfinite(vals["loss"]):
          raise NaNLossError(
              f"loss is {vals['loss']} at step {step}; the last good checkpoint is "
              f"{manager.latest_path() or 'none (no checkpoint was written yet)'}. Lower the "
              f"learning rate or check the data, then rerun to resume from it.")
        now = time.time()
        vals["images_per_s"] = imgs_seen / max(now - t_seen, 1e-9)
        vals["lr"] = float(schedule(step))
        t_seen, imgs_seen = now, 0
        writer.write(step, {"train/" + k: v for k, v in vals.items()})
        bar.update(step, vals)
      end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
      over_time = time_limit and (time.time() - t_start) > 60 * time_limit
      if over_time:
        stopped_by = f"time limit {time_limit} min"
        end_of_epoch = True
      if config.get("stop_after_steps") and step >= config.stop_after_steps:
        stopped_by = f"stop_after_steps={config.stop_after_steps}"  # schedule unchanged
      every = config.get("eval_every_steps")
      if end_of_epoch and (step // steps_per_epoch) % config.eval_every_epochs == 0 \
          or end_of_epoch and (step == total_steps or stopped_by) \
          or every and step % every == 0:
        runner.sync()
        res = evaluate(model, eval_step, eval_ds, mesh, config.get("max_eval_steps"),
                       firing=bool(config.get("firing_stats")) and task == "classify")
        epoch = step / steps_per_epoch
        row = {"epoch": round(epoch, 3), "step": step,
               "time_min": round((time.time() - t_start) / 60, 2),
               "test_accuracy": res["accuracy"], "test_loss": res["loss"]}
        scalars = {"eval/accuracy": res["accuracy"], "eval/loss": res["loss"],
                   "eval/epoch": epoch, "eval/time_min": row["time_min"]}
        if task == "mim":  # reconstruction loss on masked patches and erank; no accuracy
          del row["test_accuracy"], scalars["eval/accuracy"]
          row["erank"] = scalars["eval/erank"] = res["erank"]
        if "firing" in res:   # per-layer firing of this evaluation -> firing.json
          fire_scalars, fire_layers = _firing_summary(res["firing"])
          scalars.update(fire_scalars)
          row["firing_rate"] = fire_scalars["eval/firing_rate"]
          if is_main:
            with open(os.path.join(workdir, "firing.json"), "w") as f:
              json.dump({"step": step, "epoch": epoch, "layers": fire_layers}, f)
        if ema is not None:  # the EMA weights are evaluated too (spec §6.3)
          with ema.swapped_into(model):
            res_ema = evaluate(model, eval_step, eval_ds, mesh, config.get("max_eval_steps"))
          if task == "mim":
            row["test_loss_ema"] = scalars["eval/loss_ema"] = res_ema["loss"]
          else:
            row["test_accuracy_ema"] = scalars["eval/accuracy_ema"] = res_ema["accuracy"]
        history.append(row)
        writer.write(step, scalars)
        if task == "mim":
          bar.write(f"epoch {epoch:.2f} step {step}: test reconstruction loss "
                    f"{res['loss']:.4f}, encoder effective rank {res['erank']:.2f} "
                    f"({row['time_min']:.1f} min)")
          if best is None or res["loss"] < best["loss"]:
            best = {"accuracy": None, "loss": res["loss"], "step": step, "epoch": epoch}
        else:
          bar.write(f"epoch {epoch:.2f} step {step}: test accuracy {res['accuracy']:.4f} "
                    f"loss {res['loss']:.4f} ({row['time_min']:.1f} min)")
          if best is None or res["accuracy"] > best["accuracy"]:
            best = {"accuracy": res["accuracy"], "step": step, "epoch": epoch}
      if step % config.checkpoint_every_steps == 0 or step == total_steps or stopped_by \
          or stop.received:
        runner.sync()
        manager.save(step, model, optimizer, ema, best=best)
        last_saved = step
      if stop.received:
        stopped_by = signal.Signals(stop.received).name
        break
      if stopped_by:
        break
    manager.wait()
  bar.close()
  writer.close()
  elapsed = time.time() - t_start
  summary = {"workdir": workdir, "step": step, "total_steps": total_steps,
             "best_accuracy": best["accuracy"] if best else None,
             "best_step": best["step"] if best else None,
             "best_loss": best.get("loss") if best else None,
             "checkpoint": manager.latest_path(), "minutes": round(elapsed / 60, 2),
             "stopped_by": stopped_by, "history": history}
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary
