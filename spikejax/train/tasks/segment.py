"""Semantic segmentation (addendum B.3, C.3) of a ``semfpn_*`` model.

Train: pixel cross-entropy on the logits resized bilinearly to the label size (half-pixel
centres), pixels labelled ``IGNORE_INDEX`` (255) left out. mmseg's ``CrossEntropyLoss`` default
(``avg_non_ignore=False``) divides the sum by every pixel, ignored ones included;
``config.segmentation.avg_non_ignore=True`` divides by the labelled pixels only (PyTorch's own
``ignore_index`` mean). Eval: whole-image inference; the eval step accumulates a
``num_classes x num_classes`` confusion matrix (rows: label, columns: prediction) over the
labelled pixels of the real examples, and ``aggregate`` turns it into per-class IoU, mIoU (the
mean over classes present in the labels or the predictions, as mmseg's ``nanmean``), mean class
accuracy and pixel accuracy. The best evaluation is the highest mIoU.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spikejax.data.seg_augment import IGNORE_INDEX
from spikejax.models.segmentation import resize_bilinear
import spikejax.train.tasks.base as base


def logits_at(logits, size):
  """``logits`` ``(B, h, w, K)`` resized bilinearly to ``size`` ``(H, W)`` (as the loss and the
  evaluation see them)."""
  return resize_bilinear(logits, tuple(size))


def pixel_loss(logits, labels, *, avg_non_ignore: bool = False):
  """Mean pixel cross-entropy of ``logits`` ``(B, H, W, K)`` against ``labels`` ``(B, H, W)``
  (``IGNORE_INDEX`` left out; module docstring for the divisor). Returns ``(loss, valid)``."""
  valid = labels != IGNORE_INDEX
  safe = jnp.where(valid, labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  total = jnp.sum(jnp.where(valid, ce, 0.0))
  count = jnp.where(avg_non_ignore, jnp.sum(valid), valid.size)
  return total / jnp.maximum(count, 1), valid


def functional_train_step(graphdef, state, batch, avg_non_ignore=False):
  """One step: logits at the label size, pixel CE, gradients, update; pixel accuracy."""
  model, optimizer = nnx.merge(graphdef, state)
  labels = batch["label"]

  def loss_fn(m):
    logits = logits_at(m(batch["image"]), labels.shape[1:3])
    loss, valid = pixel_loss(logits, labels, avg_non_ignore=avg_non_ignore)
    return loss, (logits, valid)

  (loss, (logits, valid)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  hits = jnp.sum((jnp.argmax(logits, -1) == labels) & valid)
  acc = hits / jnp.maximum(jnp.sum(valid), 1)
  metrics = {"loss": loss, "pixel_accuracy": acc, "grad_norm": optax.tree.norm(grads)}
  return nnx.state((model, optimizer)), metrics


jitted_train_step = jax.jit(functional_train_step, static_argnums=0, donate_argnums=1)


def confusion_matrix(pred, labels, weights, num_classes: int):
  """``(K, K)`` counts of (label, prediction) pairs over pixels with a label in ``0..K-1``,
  each weighted by ``weights`` (broadcast to the pixels; 0 for padding examples)."""
  valid = (labels >= 0) & (labels < num_classes)
  w = jnp.where(valid, jnp.broadcast_to(weights, labels.shape), 0.0)
  index = jnp.where(valid, labels, 0) * num_classes + pred
  counts = jnp.zeros((num_classes * num_classes,), jnp.float32).at[index.reshape(-1)].add(
      w.reshape(-1).astype(jnp.float32))
  return counts.reshape(num_classes, num_classes)


def eval_step(model, batch, index):
  """Per-batch sums: the confusion matrix of the labelled pixels of the real examples (mask
  1), their cross-entropy (divided by the labelled pixels) and the examples."""
  del index
  labels = batch["label"]
  logits = logits_at(model(batch["image"]), labels.shape[1:3])
  mask = batch["mask"]
  loss, _ = pixel_loss(logits, jnp.where(mask[:, None, None] > 0, labels, IGNORE_INDEX),
                       avg_non_ignore=True)
  conf = confusion_matrix(jnp.argmax(logits, -1), labels, mask[:, None, None], logits.shape[-1])
  pixels = jnp.sum(conf)
  return {"confusion": conf, "loss_sum": loss * pixels, "pixels": pixels,
          "count": jnp.sum(mask)}


def segmentation_metrics(confusion) -> dict[str, Any]:
  """Per-class IoU (``nan`` where a class is in neither labels nor predictions), mIoU
  (``nanmean``), per-class and mean accuracy, pixel accuracy, from a confusion matrix."""
  conf = np.asarray(confusion, np.float64)
  tp = np.diag(conf)
  gt, pred = conf.sum(1), conf.sum(0)
  union = gt + pred - tp
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    acc = np.where(gt > 0, tp / gt, np.nan)
  total = conf.sum()

  def nanmean(v):
    return float(np.nanmean(v)) if np.any(~np.isnan(v)) else float("nan")

  return {"miou": nanmean(iou), "macc": nanmean(acc),
          "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
          "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
          "per_class_accuracy": [None if np.isnan(v) else float(v) for v in acc]}


def label_map_batch_spec(global_batch: int, image_shape):
  """``image`` float32 ``(B, H, W, C)`` and the int32 class map ``label`` ``(B, H, W)``."""
  h, w = tuple(image_shape)[-3:-1]
  return {"image": jax.ShapeDtypeStruct((global_batch,) + tuple(image_shape), jnp.float32),
          "label": jax.ShapeDtypeStruct((global_batch, h, w), jnp.int32)}


def _avg_non_ignore(config) -> bool:
  seg = config.get("segmentation") or {}
  return bool(seg.get("avg_non_ignore", False))


class Segment(base.Task):
  name = "segment"
  best_metric = "miou"
  higher_is_better = True
  logged = ("miou", "pixel_accuracy", "macc", "loss")
  row_names = {"miou": "test_miou", "pixel_accuracy": "test_pixel_accuracy",
               "macc": "test_macc", "loss": "test_loss"}
  families = ("semfpn",)
  train_step = staticmethod(jitted_train_step)

  def step_args(self, config, mesh):
    del mesh
    return (jnp.asarray(_avg_non_ignore(config)),)

  def batch_spec(self, global_batch, num_classes, image_shape):
    del num_classes
    return label_map_batch_spec(global_batch, image_shape)

  def eval_fn(self, config):
    del config   # the eval loss is the mean over labelled pixels whatever the train divisor
    return eval_step

  def aggregate(self, totals):
    conf = totals.get("confusion")
    if conf is None:
      return {"miou": float("nan"), "macc": float("nan"), "pixel_accuracy": float("nan"),
              "loss": float("nan"), "per_class_iou": [], "examples": 0}
    out = segmentation_metrics(conf)
    out["loss"] = float(totals.get("loss_sum", 0.0)) / max(float(totals.get("pixels", 0.0)), 1.0)
    out["examples"] = int(totals.get("count", 0))
    out["confusion"] = np.asarray(conf).astype(np.int64).tolist()
    return out

  def result_files(self, metrics) -> dict[str, Any]:
    return {"segmentation.json": {k: metrics.get(k) for k in (
        "miou", "macc", "pixel_accuracy", "loss", "per_class_iou", "per_class_accuracy",
        "examples", "confusion")}}

  def describe(self, metrics):
    return (f"test mIoU {metrics['miou']:.4f} pixel accuracy {metrics['pixel_accuracy']:.4f} "
            f"loss {metrics['loss']:.4f}")


TASK = base.register(Segment())
