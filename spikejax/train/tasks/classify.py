"""Image classification (spec §4.1, §4.3, §5, §6.3): soft-target cross-entropy, accuracy.

A model with a distillation head (``kd=True``, spec §4.1/§4.3) returns ``(logits,
logits_kd)``; without a teacher its second head learns the label (``classify_loss``). With
``config.distill.teacher`` the run is the ``distill`` task (``spikejax.train.tasks.distill``).
Evaluation can average the logits of test-time views of each image (``config.eval_flip``: its
mirror; ``config.eval_shift``: the image moved by 1..k pixels), reporting the image alone too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from spikejax.data.event_pipeline import model_input
from spikejax.spiking import record
import spikejax.train.tasks.base as base


def _soft_ce(logits, targets):
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def classify_loss(out, batch, teacher_logits=None, alpha: float = 0.5):
  """Soft-target CE; with a distillation head (``out = (logits, logits_kd)``, spec §4.1/§4.3)
  ``(1 - alpha) * CE(head) + alpha * CE(head_kd, hard target)``: the hard target is the
  teacher's argmax on the (mixed) input, or the label when no teacher is given. Returns
  ``(loss, logits)`` (with two heads, their mean)."""
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


def functional_train_step(graphdef, state, batch, teacher_graphdef=None, teacher_state=None,
                          alpha=0.5):
  """One step on ``(graphdef, state)`` of ``(model, optimizer)``: loss, gradients, update.
  With a teacher (``distill``) its logits on the same input give the distillation target."""
  model, optimizer = nnx.merge(graphdef, state)
  x = model_input(batch["image"])
  teacher_logits = None
  if teacher_graphdef is not None:  # a model in eval mode; no gradient
    teacher_logits = jax.lax.stop_gradient(nnx.merge(teacher_graphdef, teacher_state)(x))

  def loss_fn(m):
    return classify_loss(m(x), batch, teacher_logits, alpha)

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}
  return nnx.state((model, optimizer)), metrics


# The hot path: one jit of the functional step, state donated (``SplitTrainer`` runs it).
jitted_train_step = jax.jit(functional_train_step, static_argnums=0, donate_argnums=1)


def _sums(logits, batch, suffix=""):
  mask = batch["mask"]
  correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch["label"]) * mask
  return {f"correct{suffix}": jnp.sum(correct), f"loss_sum{suffix}": jnp.sum(loss)}


def eval_step(model, batch, index):
  """Per-batch sums: correct predictions, cross-entropy and examples (padding rows, mask 0,
  excluded)."""
  del index
  logits = model(model_input(batch["image"]))  # event frames: (B, T, ...) -> time-major
  return {**_sums(logits, batch), "count": jnp.sum(batch["mask"])}


def shifted(image, dy: int, dx: int):
  """``image`` moved ``dy`` pixels down and ``dx`` right, the border pixels repeated into the
  space it leaves (images ``(B, H, W, C)`` and event frames ``(B, T, H, W, C)``: height and
  width are the third and second to last axes)."""
  r = max(abs(dy), abs(dx))
  if r == 0:
    return image
  h, w = image.shape[-3], image.shape[-2]
  pad = [(0, 0)] * (image.ndim - 3) + [(r, r), (r, r), (0, 0)]
  padded = jnp.pad(image, pad, mode="edge")
  return padded[..., r - dy:r - dy + h, r - dx:r - dx + w, :]


def view_offsets(shift: int) -> tuple[tuple[int, int], ...]:
  """The centre and the four moves of 1..``shift`` pixels along each axis."""
  return ((0, 0),) + tuple(o for s in range(1, shift + 1)
                           for o in ((s, 0), (-s, 0), (0, s), (0, -s)))


@functools.lru_cache(maxsize=None)
def views_eval_step(flip: bool, shift: int):
  """``eval_step`` on the mean of the logits of several views of each image (test-time
  augmentation, ``config.eval_flip`` / ``config.eval_shift``): the image moved by each of
  ``view_offsets(shift)``, each also mirrored (the width axis reversed) with ``flip``. The
  sums of the plain image alone come back too (``*_single``); firing records and spike maps
  are of the plain image alone. One function per
  ``(flip, shift)``, so an evaluation compiles once."""
  offsets = view_offsets(shift)

  def step(model, batch, index):
    del index
    image = batch["image"]
    moved = [shifted(image, dy, dx) for dy, dx in offsets]      # moved[0] is the image
    views = moved + ([jnp.flip(v, axis=-2) for v in moved] if flip else [])
    single = model(model_input(image)).astype(jnp.float32)
    total = single
    with record.paused(model):        # firing records and spike maps: the image alone
      for v in views[1:]:
        total = total + model(model_input(v)).astype(jnp.float32)
    return {**_sums(total / len(views), batch), **_sums(single, batch, "_single"),
            "count": jnp.sum(batch["mask"])}

  return step


def eval_views(config) -> tuple[bool, int]:
  """``(config.eval_flip, config.eval_shift)`` (``(False, 0)`` without a config)."""
  if config is None:
    return False, 0
  return bool(config.get("eval_flip")), int(config.get("eval_shift") or 0)


def label_batch_spec(global_batch: int, num_classes: int, image_shape):
  """``image`` float32 (the pipeline's; the model casts to ``config.dtype``), int ``label``
  and soft ``target``."""
  return {"image": jax.ShapeDtypeStruct((global_batch,) + tuple(image_shape), jnp.float32),
          "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32),
          "target": jax.ShapeDtypeStruct((global_batch, num_classes), jnp.float32)}


class Classify(base.Task):
  name = "classify"
  train_step = staticmethod(jitted_train_step)
  best_metric = "accuracy"
  higher_is_better = True
  logged = ("accuracy", "loss")
  optional_logged = ("accuracy_single", "loss_single")
  multi_view_eval = True
  row_names = {"accuracy": "test_accuracy", "loss": "test_loss",
               "accuracy_single": "test_accuracy_single", "loss_single": "test_loss_single"}

  def for_config(self, config) -> base.Task:
    distill = config.get("distill")
    if distill and distill.get("teacher"):
      return base.get_task("distill")
    return self

  def batch_spec(self, global_batch, num_classes, image_shape):
    return label_batch_spec(global_batch, num_classes, image_shape)

  def eval_fn(self, config):
    flip, shift = eval_views(config)
    return views_eval_step(flip, shift) if flip or shift else eval_step

  def aggregate(self, totals):
    n = max(totals.get("count", 0.0), 1.0)
    out = {"accuracy": totals.get("correct", 0.0) / n, "loss": totals.get("loss_sum", 0.0) / n,
           "examples": int(totals.get("count", 0))}
    if "correct_single" in totals:    # test-time views: accuracy/loss are of their mean
      out["accuracy_single"] = totals["correct_single"] / n
      out["loss_single"] = totals["loss_sum_single"] / n
    return out

  def describe(self, metrics):
    line = f"test accuracy {metrics['accuracy']:.4f} loss {metrics['loss']:.4f}"
    if "accuracy_single" in metrics:
      line += f" (mean of the views; the image alone {metrics['accuracy_single']:.4f})"
    return line


TASK = base.register(Classify())
