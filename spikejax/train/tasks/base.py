"""What a task is, and the table of tasks.

A task owns everything the training loop must not know about the objective: the jitted train
step and the extra arguments it takes, the eval step and how its per-batch sums become metrics,
the abstract train batch (for ahead-of-time compilation), which eval metric picks the best
checkpoint, which metrics are logged under which names, and which models it fits. The loop
(``spikejax.train.trainer``) asks the task and names none; a new task is one module that
subclasses ``Task`` and calls ``register``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from spikejax.models.from_config import ConfigError

DEFAULT_TASK = "classify"


class Task:
  """Base class of a task (one instance per task, registered by name).

  Attributes:
    name: the ``config.task`` value that selects it.
    train_step: the jitted ``step(graphdef, state, batch, *step_args) -> (state, metrics)``;
      ``state`` (argument 1) is donated; ``metrics`` must hold a scalar ``loss``. Set it as
      ``train_step = staticmethod(jax.jit(...))`` (a jitted function would bind as a method).
    best_metric, higher_is_better: the eval metric that picks the best evaluation.
    logged: eval metrics written as scalars ``<prefix>/<name>`` (``prefix`` is ``eval``).
    optional_logged: metrics logged like ``logged`` when an evaluation has them (an option
      of the eval step adds them, e.g. the single view beside test-time augmentation).
    row_names: the history-row (``summary.json``) key of each logged metric.
    families: model families this task trains; ``None``: any family no other task claims.
    multi_view_eval: whether ``eval_fn`` honours ``config.eval_flip`` / ``config.eval_shift``
      (test-time augmentation: the mean over mirrored and moved views of each image).
    collected: eval-step outputs that are per-example arrays (e.g. detections): the evaluation
      passes each batch's through ``collect`` and hands ``aggregate`` the list of the results
      under ``totals['collected']``, instead of summing them.
  """

  name: str = ""
  train_step: Callable[..., Any] | None = None
  best_metric: str = "loss"
  higher_is_better: bool = False
  logged: tuple[str, ...] = ("loss",)
  optional_logged: tuple[str, ...] = ()
  row_names: Mapping[str, str] = {}
  families: tuple[str, ...] | None = None
  multi_view_eval: bool = False
  collected: tuple[str, ...] = ()

  # ------------------------------------------------------------------ config
  def for_config(self, config) -> "Task":
    """The task that really runs ``config`` (a variant such as distillation); default self."""
    del config
    return self

  def validate(self, config, family: str) -> None:
    """Raises ``ConfigError`` for a config this task cannot run (after the family check)."""

  def model_overrides(self, config, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """Extra ``create_model`` arguments that depend on the data (e.g. a fixed image size)."""
    del config, image_shape
    return {}

  # ------------------------------------------------------------------ training
  def step_args(self, config, mesh) -> tuple:
    """Extra arguments of ``train_step`` after the batch (e.g. a teacher), built once."""
    del config, mesh
    return ()

  def abstract_step_args(self, config, mesh) -> tuple:
    """``step_args`` for an ahead-of-time compile (no data, no checkpoints read)."""
    return self.step_args(config, mesh)

  def batch_spec(self, global_batch: int, num_classes: int,
                 image_shape: tuple[int, ...]) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of the train batch ``train_step`` is given."""
    raise NotImplementedError(f"task {self.name!r} defines no batch_spec")

  # ------------------------------------------------------------------ evaluation
  def eval_fn(self, config) -> Callable[..., dict[str, jax.Array]]:
    """``fn(model, batch, index) -> {name: per-batch sum}`` (traced; not jitted here). The
    same function object must come back for the same config, so compilations are reused."""
    raise NotImplementedError(f"task {self.name!r} defines no eval_fn")

  def aggregate(self, totals: Mapping[str, float]) -> dict[str, Any]:
    """Metrics of one evaluation from the sums of ``eval_fn`` over every batch."""
    raise NotImplementedError(f"task {self.name!r} defines no aggregate")

  def collect(self, outputs: Mapping[str, Any]) -> Any:
    """One batch's ``collected`` outputs (numpy, whole batch) as the evaluation keeps them
    until ``aggregate`` (default: as they are)."""
    return dict(outputs)

  def result_files(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON files (``{name: content}``) of one evaluation beyond the logged scalars (e.g.
    per-class results); written into the workdir by the main loop. Default none."""
    del metrics
    return {}

  def describe(self, metrics: Mapping[str, Any]) -> str:
    """One line of an evaluation's results for the progress log."""
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in self.logged if metrics.get(k) is not None)

  def row_name(self, metric: str) -> str:
    return self.row_names.get(metric, metric)

  def is_better(self, metrics: Mapping[str, Any], best: Mapping[str, Any] | None) -> bool:
    """Whether ``metrics`` beat the ``best`` record so far (``None``: nothing yet)."""
    new = metrics.get(self.best_metric)
    old = None if best is None else best.get(self.best_metric)
    if old is None:
      return True
    if new is None:
      return False
    return new > old if self.higher_is_better else new < old


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  """Adds ``task`` to ``TASKS`` under ``task.name`` (an error if the name is taken)."""
  if not task.name:
    raise ValueError("a task needs a name")
  if task.name in TASKS and TASKS[task.name] is not task:
    raise ValueError(f"task {task.name!r} registered twice")
  TASKS[task.name] = task
  return task


def unregister(name: str) -> None:
  TASKS.pop(name, None)


def get_task(name: str | None) -> Task:
  """The registered task ``name`` (``None``: the default, ``classify``)."""
  name = name or DEFAULT_TASK
  if name not in TASKS:
    raise ConfigError(f"task must be one of {sorted(TASKS)}, got {name!r}.")
  return TASKS[name]


def from_config(config) -> Task:
  """The task that runs ``config``: ``config.task`` (default classify), refined by the task."""
  return get_task(config.get("task")).for_config(config)


def check_model(task: Task, config, family: str) -> None:
  """Raises ``ConfigError`` if ``config.model_name`` (of ``family``) does not fit ``task``:
  a task with ``families`` takes only those; one without takes any family no task claims."""
  claimed = {f: t.name for t in TASKS.values() if t.families for f in t.families}
  if task.families is not None:
    ok = family in task.families
    need = f"task {task.name!r} needs a model of family {' or '.join(task.families)}"
  else:
    ok = family not in claimed
    need = (f"family {family!r} is trained by task {claimed.get(family)!r}; task "
            f"{task.name!r} takes any other family")
  if not ok:
    hint = "".join(f", {t.name!r} a {'/'.join(f + '_*' for f in t.families)} model"
                   for t in TASKS.values() if t.families)
    raise ConfigError(f"task={task.name!r} does not fit model {config.model_name!r} (family "
                      f"{family!r}): {need}{hint}.")


def check_eval_views(task: Task, config) -> None:
  """Raises ``ConfigError`` if ``config.eval_flip`` / ``config.eval_shift`` ask ``task`` for
  test-time views it has not (``Task.multi_view_eval``) or the shift is not a count >= 0."""
  flip, shift = config.get("eval_flip"), config.get("eval_shift")
  if (flip or shift) and not task.multi_view_eval:
    raise ConfigError(f"eval_flip={flip}, eval_shift={shift}: task {task.name!r} has no "
                      f"test-time views (only "
                      f"{', '.join(t.name for t in TASKS.values() if t.multi_view_eval)}); drop "
                      "--config.eval_flip / --config.eval_shift.")
  if shift is not None and (isinstance(shift, bool) or not isinstance(shift, int) or shift < 0):
    raise ConfigError(f"eval_shift={shift!r}: must be a whole number of pixels >= 0 (0: no "
                      "moved views).")
