"""The training loop: config -> data, train state, the task's jitted steps, checkpoints, metrics.

A short, readable loop in the style of big_vision's ``train.py``: validate the config before
anything compiles, auto-resume from the workdir, evaluate each epoch, checkpoint every N steps
and on SIGTERM/SIGINT, stop on a NaN loss naming the last good checkpoint. What is trained and
measured belongs to the task (``spikejax.train.tasks``: train step, eval step, metrics, best
rule) and the evaluators (``spikejax.train.evaluators``, ``config.evals``); the model,
optimizer, shardings and EMA come from ``spikejax.train.state.build_train_state``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from spikejax.models.from_config import ConfigError, model_kwargs  # noqa: F401  (public here)
from spikejax.train import budget as budget_lib
from spikejax.train import checkpoints as ckpt_lib
from spikejax.train import evaluators as evaluators_lib
from spikejax.train import metrics as metrics_lib
from spikejax.train import paths
from spikejax.train import sharding as sharding_lib
from spikejax.train import state as state_lib
from spikejax.train import tasks as tasks_lib
from spikejax.train.evaluators import evaluate  # noqa: F401  (public here)
from spikejax.train.state import build_optimizer, validate  # noqa: F401  (public here)
from spikejax.train.steps import SplitTrainer, unalias  # noqa: F401  (public here)
from spikejax.train.tasks.classify import classify_loss as _classify_loss  # noqa: F401
from spikejax.train.tasks.classify import jitted_train_step as _jitted_functional_step  # noqa

log = logging.getLogger("spikejax")

# summary.json always carries these ``best_<metric>`` keys (None where the task has none)
SUMMARY_METRICS = ("accuracy", "loss")


def jitted_train_step(task: str | None = None, distill: bool = False):
  """The jitted train step ``SplitTrainer`` runs for the registered task named ``task``
  (default: classify); ``distill``: the variant a ``distill.teacher`` selects.
  ``step(graphdef, state, batch, *task.step_args(...))``."""
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(task=task, distill=dict(teacher="?" if distill else "")))
  return tasks_lib.from_config(cfg).train_step


# config keys a resumed run may change: they do not change what was trained so far
# (run length, limits, logging, evaluation, checkpointing, the mesh it restores onto)
RESUME_SAFE = ("num_epochs", "max_train_steps", "stop_after_steps", "time_limit_minutes",
               "log_every_steps", "progress_bar", "eval_every_epochs", "eval_every_steps",
               "max_eval_steps", "eval_batch_size", "eval_flip",
               "eval_shift", "firing_stats", "evals",
               "checkpoint_every_steps", "keep_checkpoints", "data_dir", "mesh")


def _flat_json(node, prefix=""):
  if isinstance(node, dict):
    out = {}
    for k, v in node.items():
      out.update(_flat_json(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: node}


def _has_checkpoints(workdir: str) -> bool:
  return any(d.isdigit() for d in paths.listdir(paths.join(workdir, "checkpoints")))


def _previous_history(workdir: str, start_step: int) -> list[dict[str, Any]]:
  """The history rows of an earlier ``summary.json`` up to ``start_step`` (none at step 0)."""
  path = paths.join(workdir, "summary.json")
  if not start_step or not paths.exists(path):
    return []
  try:
    rows = json.loads(paths.read_text(path)).get("history") or []
  except (OSError, ValueError):
    log.warning("%s is unreadable; its history is not carried over", path)
    return []
  return [r for r in rows if r.get("step", 0) <= start_step]


def check_resume_config(config, workdir: str) -> None:
  """Refuses (``ConfigError``, before anything is written) to resume the checkpoints of
  ``workdir`` with a config that differs from its ``config.json`` in a key outside
  ``RESUME_SAFE``, naming each differing key with both values."""
  saved_file = paths.join(workdir, "config.json")
  if not (paths.exists(saved_file) and _has_checkpoints(workdir)):
    return
  try:
    saved = _flat_json(json.loads(paths.read_text(saved_file)))
  except (OSError, ValueError) as e:
    raise ConfigError(f"{saved_file} cannot be read ({type(e).__name__}); the checkpoints "
                      f"there cannot be checked against this config: use a new --workdir.")
  new = _flat_json(json.loads(config.to_json_best_effort()))
  differ = sorted(k for k in set(saved) | set(new) if saved.get(k, "<absent>") !=
                  new.get(k, "<absent>") and k.split(".")[0] not in RESUME_SAFE)
  if differ:
    shown = ", ".join(f"{k}: {saved.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
                      for k in differ[:6])
    more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
    raise ConfigError(
        f"{workdir} holds checkpoints of another config ({shown}{more}); resuming them with "
        f"this one would be wrong. Use a new --workdir to start afresh, or rerun with the "
        f"saved config (only {', '.join(RESUME_SAFE)} may change on resume).")


def _write_config(config, workdir: str) -> None:
  """Writes ``config.json``; a different earlier one is kept as ``config.<n>.json``."""
  paths.write_keeping_old(paths.join(workdir, "config.json"),
                          config.to_json_best_effort(indent=2))


# steps between the processes' agreements on stopping (a signal, a time limit): each is one
# host all-gather that waits for the step in flight, so not every step on a pod
STOP_SYNC_STEPS = 10


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
    if self.received is not None:   # a second SIGTERM or Ctrl-C aborts at once
      raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborted without saving")
    self.received = signum

  def agreed(self, local_stop: bool = False) -> int | None:
    """The stop decision of all processes (preemption-time agreement, as in large trainers):
    a signal (or ``local_stop``, e.g. this host's time limit) on any process stops every one
    at the same step; one small all-gather over the hosts, skipped in a single process."""
    mine = int(self.received or (-1 if local_stop else 0))
    if jax.process_count() == 1:
      return mine or None
    from jax.experimental import multihost_utils
    votes = np.asarray(multihost_utils.process_allgather(np.int32(mine)))
    signals = [int(v) for v in votes.ravel() if v > 0]
    if signals:
      self.received = self.received or signals[0]
      return self.received
    return -1 if (votes < 0).any() else None

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class NaNLossError(RuntimeError):
  pass


def _brief(names, n: int = 4) -> str:
  names = sorted(names)
  return "none" if not names else ", ".join(names[:n]) + (f" (+{len(names) - n})"
                                                          if len(names) > n else "")


def _plain(value):
  return value.to_dict() if hasattr(value, "to_dict") else value


def _dataset(data_lib, config, split: str, batch_size: int, train: bool):
  # eval sets read only a segmentation pipeline's eval options (label mapping, resize, canvas)
  kw = dict(augment=_plain(config.augment))
  if config.get("crop_pct") is not None:    # eval resize S / crop_pct -> center crop S
    kw["crop_pct"] = config.crop_pct
  return data_lib.get_dataset(config.dataset, split=split, batch_size=batch_size,
                              data_dir=config.data_dir, train=train, seed=config.seed,
                              image_size=config.image_size, channels=config.channels,
                              frames=_plain(config.get("frames")), **kw)


def run_evaluations(model, task, passes, eval_sets, eval_step, mesh, ema, *, step: int,
                    epoch: float) -> tuple[dict[str, Any], evaluators_lib.Result,
                                           dict[str, Any] | None]:
  """Every evaluator's pass over its data, then the main one on the EMA weights. Returns
  ``(history row entries, the evaluators' merged Result (scalars, histograms, images, JSON
  files), the main evaluator's metrics)``."""
  row: dict[str, Any] = {}
  merged = evaluators_lib.Result()
  scalars = merged.scalars
  main_pass, main = evaluators_lib.main_evaluator(passes)
  main_metrics = None
  for p, ds in zip(passes, eval_sets):
    res = evaluate(model, eval_step, ds, mesh, p.max_steps, task=task, firing=p.firing,
                   maps=p.maps)
    for e in p.evaluators:
      r = e.result(res, res.get("firing"), step=step, epoch=epoch)
      row.update(r.row)
      for field in ("scalars", "histograms", "images", "files"):
        getattr(merged, field).update(getattr(r, field))
      if e is main:
        main_metrics = res
  if ema is not None and main is not None:  # the EMA weights are evaluated too (spec §6.3)
    with ema.swapped_into(model):
      res_ema = evaluate(model, eval_step, eval_sets[passes.index(main_pass)], mesh,
                         main_pass.max_steps, task=task)
    m = task.best_metric
    row[main.key(m + "_ema", task.row_name(m) + "_ema")] = res_ema[m]
    scalars[f"{main.prefix}/{m}_ema"] = res_ema[m]
  return row, merged, main_metrics


def _check_writable(workdir: str) -> None:
  """Creates ``workdir`` and proves it writable (a probe file, removed), else ``ConfigError``:
  a read-only workdir fails here, not at the first checkpoint after compiling."""
  probe = paths.join(workdir, f".spikejax-write-test-{os.getpid()}-{jax.process_index()}")
  try:
    paths.makedirs(workdir)
    paths.write_text(probe, "")
    paths.remove(probe)
  except Exception as e:   # OSError locally; a bucket's client raises its own errors
    why = getattr(e, "strerror", None) or f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    raise ConfigError(f"--workdir={workdir} is not writable ({why}); pass a directory you "
                      f"can write to (a local path or a bucket path such as gs://...).") from None


def _time_evaluations(model, task, passes, eval_sets, eval_step, mesh, ema) -> float:
  """Seconds one evaluation (``run_evaluations``) takes, estimated for a budget: per pass, a
  compiling call on up to 2 batches, then 2 timed batches scaled to the pass's length."""
  def one(ds, max_steps, firing, maps):
    n = len(ds) if max_steps is None else min(len(ds), max_steps)
    k = min(2, n)
    evaluate(model, eval_step, ds, mesh, k, task=task, firing=firing, maps=maps)
    t = time.time()
    evaluate(model, eval_step, ds, mesh, k, task=task, firing=firing, maps=maps)
    return (time.time() - t) / max(k, 1) * n

  total = sum(one(ds, p.max_steps, p.firing, p.maps) for p, ds in zip(passes, eval_sets))
  main_pass, main = evaluators_lib.main_evaluator(passes)
  if ema is not None and main is not None:
    total += one(eval_sets[passes.index(main_pass)], main_pass.max_steps, False, 0)
  return total


class _RateMeter:
  """The budget's measurements in the training loop (``spikejax.train.budget``): the first
  step's time (compilation included) and the steady seconds per step over the second half of
  the steps before ``decide_at``, each end waited for."""

  def __init__(self, start_step: int, decide_at: int):
    self.decide_at = decide_at
    self.first = start_step + 1
    self.window_start = max(self.first, decide_at // 2)
    self.t0 = time.time()
    self.t_first = self.t_window = None

  def after(self, step: int, out) -> None:
    if step == self.first or step == self.window_start or step == self.decide_at:
      jax.block_until_ready(out)
      now = time.time()
      if step == self.first:
        self.t_first = now
      if step == self.window_start:
        self.t_window = now

  def result(self) -> tuple[float, float, int]:
    """``(seconds per step, compile seconds, timed steps)`` at ``decide_at``."""
    now = time.time()
    n = self.decide_at - self.window_start
    if n <= 0:    # resumed right before the decision: the first step's time is all there is
      return now - self.t0, 0.0, 1
    step_s = (now - self.t_window) / n
    return step_s, max(self.t_first - self.t0 - step_s, 0.0), n


class _RevisionMeter:
  """The budget revision's measurements (``budget.revise``): seconds per train step over the
  second half of the steps from the decision to ``Plan.revise_at_step``, less the evaluations
  made there, and the mean of the evaluations since the decision."""

  def __init__(self, plan):
    self.at = int(plan.revise_at_step)
    self.window_start = self.at - (self.at - plan.decided_at_step) // 2
    self.t_window = self.eval_at_window = None
    self.eval_times: list[float] = []
    self.default_eval_s = plan.eval_seconds

  def after(self, step: int, out, eval_s: float) -> None:
    if step == self.window_start:
      jax.block_until_ready(out)
      self.t_window, self.eval_at_window = time.time(), eval_s

  def result(self, eval_s: float) -> tuple[float, float, int]:
    """``(seconds per step, seconds per evaluation, timed steps)`` at ``revise_at_step``."""
    n = self.at - self.window_start
    step_s = (time.time() - self.t_window - (eval_s - self.eval_at_window)) / n
    evals = self.eval_times
    return step_s, (sum(evals) / len(evals) if evals else self.default_eval_s), n


def train_and_evaluate(config, workdir: str, *, launched_at: float | None = None
                       ) -> dict[str, Any]:
  """Runs (or resumes) the job described by ``config`` in ``workdir``; returns a summary.
  ``launched_at``: the unix time a ``time_budget_minutes`` counts from (``spikejax.main``
  passes the process's start; default: now)."""
  from spikejax import data as data_lib
  from spikejax.models import count_params

  t_start = time.time()
  launched_at = t_start if launched_at is None else float(launched_at)
  num_devices = jax.device_count()
  validate(config, num_devices)
  task = tasks_lib.from_config(config)
  passes = evaluators_lib.from_config(config, task, num_devices)
  workdir = paths.resolve(workdir)
  if paths.isfile(workdir):
    raise ConfigError(f"--workdir={workdir} is a file, not a directory; pass a directory.")
  check_resume_config(config, workdir)
  _check_writable(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    _write_config(config, workdir)

  mesh = sharding_lib.make_mesh(config.mesh, num_devices)
  train_ds = _dataset(data_lib, config, config.train_split, config.batch_size, train=True)
  eval_sets = [_dataset(data_lib, config, p.split, p.batch_size, train=False) for p in passes]
  steps_per_epoch = train_ds.steps_per_epoch
  total_steps = state_lib.schedule_steps(config, steps_per_epoch)

  manager = ckpt_lib.TrainCheckpointer(paths.join(workdir, "checkpoints"),
                                       keep=config.keep_checkpoints)
  resuming = bool(manager.manager.all_steps())
  plan = decide_at = None      # a time budget: the plan, or the step it will be made at
  if config.get("time_budget_minutes"):     # 0 or None: num_epochs sets the run length
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    why = budget_lib.check(config.time_budget_minutes, warmup,
                           config.optimizer.get("schedule", "cosine"))
    if why:
      raise ConfigError(why)
    try:
      plan = budget_lib.read(workdir) if resuming else None
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if plan is not None:     # a resume keeps the plan it was trained to (exact)
      total_steps = budget_lib.broadcast_total(plan.total_steps)
    else:                    # until the decision the warm-up does not depend on the length
      decide_at = budget_lib.measure_steps(warmup, config.get("max_train_steps"))
      total_steps = max(total_steps, decide_at)
  init_values = None
  if config.get("init_from") and not resuming:  # read (and check) before building anything big
    init_values = ckpt_lib.read_model_values(config.init_from)
  ts = state_lib.build_train_state(config, mesh, num_classes=train_ds.num_classes,
                                   image_shape=tuple(train_ds.image_shape),
                                   total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                   task=task, init_values=init_values)
  model, optimizer, ema, schedule = ts.model, ts.optimizer, ts.ema, ts.schedule
  make_schedule = lambda total: state_lib.make_schedule(config, total, steps_per_epoch)
  if plan is not None and plan.revision:    # a resume after the revision: its schedule
    schedule = plan.schedule(make_schedule)
    optimizer.tx = state_lib.make_tx(config, model, schedule)  # same state structure
  if ts.init_report is not None and is_main:
    log.info("initialised from %s: %d arrays loaded; dropped %s; kept fresh %s",
             config.init_from, len(ts.init_report["loaded"]), _brief(ts.init_report["dropped"]),
             _brief(ts.init_report["fresh"]))
  with jax.set_mesh(mesh):
    step_args = task.step_args(config, mesh)

  start_step = manager.restore_latest(model, optimizer, ema)
  if decide_at is not None and start_step >= decide_at:
    raise ConfigError(f"{workdir} has checkpoints from step {start_step} but no "
                      f"{budget_lib.PLAN_FILE}, the time budget's plan they were trained to "
                      f"(decided at step {decide_at}): restore the file or use a new --workdir.")
  if is_main:   # rows logged past the restored step belong to lost work: set them aside once
    metrics_lib.supersede_rows(workdir, start_step)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  if is_main:
    log.info("model %s (task %s): %d parameters; %d steps (%d per epoch); devices %d; resume "
             "at %d", config.model_name, task.name, count_params(model), total_steps,
             steps_per_epoch, num_devices, start_step)
  eval_step = evaluators_lib.eval_step_for(task, config)
  runner = SplitTrainer(model, optimizer, step=task.train_step, step_args=step_args)
  best = manager.read_best()
  step = start_step
  bar = metrics_lib.Progress(total_steps, initial=start_step,
                             enabled=is_main and config.progress_bar)
  history = _previous_history(workdir, start_step)   # a rerun keeps the evaluations so far
  stopped_by = None
  time_limit = config.get("time_limit_minutes")
  deadline = None     # the budget's: set by the run that makes the plan
  meter = _RateMeter(start_step, decide_at) if decide_at is not None else None
  reviser = None      # set by the run that makes the plan, when the plan is to be revised
  t_seen, imgs_seen = time.time(), 0
  eval_s = 0.0        # wall time spent evaluating: ``train_min`` of a history row excludes it
  with _StopSignal() as stop:
    it = train_ds.iterate(start_step)
    while step < total_steps:
      batch = next(it)
      out = runner.step(sharding_lib.shard_batch(batch, mesh))
      step += 1
      imgs_seen += config.batch_size
      if meter is not None:
        meter.after(step, out)
        if step == decide_at:
          runner.sync()
          step_s, compile_s, timed = meter.result()
          eval_s = _time_evaluations(model, task, passes, eval_sets, eval_step, mesh, ema)
          step_s, eval_s, compile_s, elapsed = budget_lib.agree(
              [step_s, eval_s, compile_s, time.time() - launched_at])
          plan = budget_lib.make_plan(
              config, launched_at=launched_at, elapsed_s=elapsed, decided_at=decide_at,
              measured_steps=timed, step_s=step_s, eval_s=eval_s, compile_s=compile_s,
              steps_per_epoch=steps_per_epoch)
          total_steps, deadline, meter = plan.total_steps, plan.deadline, None
          schedule = plan.schedule(make_schedule)
          optimizer.tx = state_lib.make_tx(config, model, schedule)  # same state structure
          runner = SplitTrainer(model, optimizer, step=task.train_step, step_args=step_args)
          bar.set_total(total_steps)
          if is_main:
            budget_lib.write(plan, workdir)
            log.info("%s", plan.describe())
          if plan.revise_at_step is not None:
            reviser = _RevisionMeter(plan)
          t_seen, imgs_seen = time.time(), 0
      if reviser is not None:
        reviser.after(step, out, eval_s)
        if step == reviser.at:
          runner.sync()
          step_s, eval_each, timed = reviser.result(eval_s)
          step_s, eval_each, elapsed = budget_lib.agree(
              [step_s, eval_each, time.time() - launched_at])
          plan = budget_lib.revise(plan, config, elapsed_s=elapsed, measured_steps=timed,
                                   step_s=step_s, eval_s=eval_each)
          total_steps, deadline, reviser = plan.total_steps, plan.deadline, None
          schedule = plan.schedule(make_schedule)
          optimizer.tx = state_lib.make_tx(config, model, schedule)
          runner = SplitTrainer(model, optimizer, step=task.train_step, step_args=step_args)
          bar.set_total(total_steps)
          if is_main:      # written before the next step: a resume trains this schedule
            budget_lib.write(plan, workdir)
            log.info("%s", plan.describe_revision())
          t_seen, imgs_seen = time.time(), 0
      if ema is not None:
        runner.sync()
        ema.update(model)
      if step % config.log_every_steps == 0 or step == total_steps:
        vals = {k: float(v) for k, v in out.items()}
        if not math.isfinite(vals["loss"]):
          manager.wait()   # "the last good checkpoint" is a finished one, never a -tmp dir
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
      over_time = bool(time_limit and (time.time() - t_start) > 60 * time_limit
                       or deadline and time.time() > deadline)
      if jax.process_count() == 1 or step % STOP_SYNC_STEPS == 0 or step == total_steps:
        decision = stop.agreed(local_stop=over_time)   # the same on every process
        over_time = decision == -1
        signalled = decision is not None and decision > 0
      else:   # between agreement points a signal or time limit waits (at most 9 steps)
        over_time = signalled = False
      if over_time:
        stopped_by = (f"time limit {time_limit} min" if time_limit and
                      (time.time() - t_start) > 60 * time_limit else
                      f"the time budget's deadline ({config.get('time_budget_minutes')} min)")
        end_of_epoch = True
      if config.get("stop_after_steps") and step >= config.stop_after_steps:
        stopped_by = f"stop_after_steps={config.stop_after_steps}"  # schedule unchanged
      every = config.get("eval_every_steps")
      if end_of_epoch and (step // steps_per_epoch) % config.eval_every_epochs == 0 \
          or end_of_epoch and (step == total_steps or stopped_by) \
          or every and step % every == 0:
        runner.sync()
        epoch = step / steps_per_epoch
        t_eval = time.time()
        row = {"epoch": round(epoch, 3), "step": step,
               "time_min": round((t_eval - t_start) / 60, 2),
               "train_min": round((t_eval - t_start - eval_s) / 60, 3)}
        entries, res, metrics = run_evaluations(
            model, task, passes, eval_sets, eval_step, mesh, ema, step=step, epoch=epoch)
        row.update(entries)
        res.scalars.update({"eval/epoch": epoch, "eval/time_min": row["time_min"]})
        if is_main:
          for name, content in res.files.items():
            paths.write_text(paths.join(workdir, name), json.dumps(content))
        history.append(row)
        writer.write(step, res.scalars)
        writer.write_histograms(step, res.histograms)
        writer.write_images(step, res.images)
        eval_s += time.time() - t_eval
        if reviser is not None:
          reviser.eval_times.append(time.time() - t_eval)
        if metrics is not None:
          bar.write(f"epoch {epoch:.2f} step {step}: {task.describe(metrics)} "
                    f"({row['time_min']:.1f} min)")
          if task.is_better(metrics, best):
            best = {**{k: metrics.get(k) for k in task.logged}, "step": step, "epoch": epoch}
      if step % config.checkpoint_every_steps == 0 or step == total_steps or stopped_by \
          or signalled:
        runner.sync()
        writer.flush()    # the rows up to a checkpoint are in the workdir before it is
        try:
          manager.save(step, model, optimizer, ema, best=best)
        except ckpt_lib.NonFiniteStateError as e:   # never saved: resuming it would be NaN
          raise NaNLossError(
              f"the training state is not finite at step {step} ({len(e.arrays)} arrays, e.g. "
              f"{e.arrays[0]}); it was not saved; the last good checkpoint is "
              f"{e.last_good or 'none (no checkpoint was written yet)'}. Lower the learning "
              f"rate or check the data, then rerun to resume from it.") from None
      if signalled:
        stopped_by = signal.Signals(stop.received).name
        break
      if stopped_by:
        break
    manager.wait()
  bar.close()
  writer.close()
  elapsed = time.time() - t_start
  summary = {"workdir": workdir, "task": task.name, "step": step, "total_steps": total_steps,
             "best_metric": task.best_metric, "best": best,
             **{f"best_{k}": best.get(k) if best else None for k in SUMMARY_METRICS},
             "best_step": best["step"] if best else None,
             "checkpoint": manager.latest_path(), "minutes": round(elapsed / 60, 2),
             "stopped_by": stopped_by, "history": history,
             "plan": budget_lib.as_dict(plan) if plan is not None else None}
  if is_main:
    paths.write_text(paths.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary
