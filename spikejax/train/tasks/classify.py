"""Image classification (spec §4.1, §4.3, §5, §6.3): soft-target cross-entropy, accuracy.

A model with a distillation head (``kd=True``, spec §4.1/§4.3) returns ``(logits,
logits_kd)``; without a teacher its second head learns the label (``classify_loss``). With
``config.distill.teacher`` the run is the ``distill`` task (``spikejax.train.tasks.distill``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from spikejax.data.event_pipeline import model_input
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


def eval_step(model, batch, index):
  """Per-batch sums: correct predictions, cross-entropy and examples (padding rows, mask 0,
  excluded)."""
  del index
  logits = model(model_input(batch["image"]))  # event frames: (B, T, ...) -> time-major
  mask = batch["mask"]
  correct = (jnp.argmax(logits, -1) == batch["label"]) * mask
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch["label"]) * mask
  return {"correct": jnp.sum(correct), "loss_sum": jnp.sum(loss), "count": jnp.sum(mask)}


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
  row_names = {"accuracy": "test_accuracy", "loss": "test_loss"}

  def for_config(self, config) -> base.Task:
    distill = config.get("distill")
    if distill and distill.get("teacher"):
      return base.get_task("distill")
    return self

  def batch_spec(self, global_batch, num_classes, image_shape):
    return label_batch_spec(global_batch, num_classes, image_shape)

  def eval_fn(self, config):
    del config
    return eval_step

  def aggregate(self, totals):
    n = max(totals.get("count", 0.0), 1.0)
    return {"accuracy": totals.get("correct", 0.0) / n, "loss": totals.get("loss_sum", 0.0) / n,
            "examples": int(totals.get("count", 0))}

  def describe(self, metrics):
    return f"test accuracy {metrics['accuracy']:.4f} loss {metrics['loss']:.4f}"


TASK = base.register(Classify())
