"""Object detection and instance segmentation (addendum B.2) with a ``maskrcnn_*`` model.

Train: the Mask R-CNN losses (``spikejax.models.maskrcnn.losses``: RPN sigmoid CE + L1, RoI
softmax CE + class-specific L1, mask BCE), with the samplers' randomness drawn from
``fold_in(key(config.detection.seed), optimizer step)`` -- a resumed run draws the same samples.
Eval: whole-image inference to fixed-size detections (``maskrcnn.predict``: score 0.05,
per-class NMS 0.5, 100 per image, mask threshold 0.5); the eval step returns them with the
batch's ground truth, the evaluation collects every batch (``collected``) and ``aggregate``
runs the COCO evaluation (``spikejax.train.coco_eval``: bbox and segm mAP@[.5:.95], mAP@0.5,
per class) on the host; each batch is kept as COCO records with RLE masks (``collect``). The ground truth is the batch's: boxes and masks in the network's input
frame, so areas (small / medium / large) are those of the resized images. The best evaluation
is the highest box mAP@0.5 (the paper's Table II metric).

``config.detection`` (all optional): ``train`` / ``test`` -- overrides of
``MaskRCNNTrainConfig`` / ``MaskRCNNTestConfig`` fields (unknown keys are errors); ``seed``.
The instances per image and the ground-truth masks' stride come from the data set's detection
pipeline (``spikejax.data.det_augment.DetPipelineConfig``, with ``config.augment``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from spikejax.models import maskrcnn as MR
from spikejax.models.from_config import ConfigError
import spikejax.train.tasks.base as base

COLLECTED = ("boxes", "scores", "classes", "valid", "mask_probs", "image_hw", "gt_boxes",
             "gt_classes", "gt_valid", "gt_masks", "gt_iscrowd", "mask", "image_id", "scale")


def _settings(config) -> dict[str, Any]:
  det = config.get("detection") or {}
  return det.to_dict() if hasattr(det, "to_dict") else dict(det)


def _dataclass_from(cls, values, what: str):
  values = dict(values or {})
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ConfigError(f"config.detection.{what}: unknown key(s) {unknown}; the keys are "
                      f"{sorted(fields)}.")
  try:
    return cls(**values)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.detection.{what}: {e}") from None


def settings(config) -> tuple[MR.MaskRCNNTrainConfig, MR.MaskRCNNTestConfig, int]:
  """``(train settings, test settings, seed)`` of ``config.detection``."""
  det = _settings(config)
  unknown = sorted(set(det) - {"train", "test", "seed"})
  if unknown:
    raise ConfigError(f"config.detection: unknown key(s) {unknown}; the keys are ['seed', "
                      f"'test', 'train'].")
  return (_dataclass_from(MR.MaskRCNNTrainConfig, det.get("train"), "train"),
          _dataclass_from(MR.MaskRCNNTestConfig, det.get("test"), "test"),
          int(det.get("seed", 0)))


def pipeline(config):
  """The detection pipeline ``config`` trains with (``None`` for an unknown data set or a data
  set of another kind: the data and family checks report those)."""
  from spikejax.data import registry   # pylint: disable=import-outside-toplevel
  from spikejax.data.det_augment import det_pipeline_config   # pylint: disable=import-outside-toplevel
  try:
    spec = registry.get_spec(config.get("dataset"))
  except (KeyError, ValueError, TypeError):
    return None, None
  if spec.kind != "detection":
    return spec, None
  augment = config.get("augment", "none")
  augment = augment.to_dict() if hasattr(augment, "to_dict") else augment
  try:
    return spec, det_pipeline_config(augment, spec.det)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.augment: {e}") from None


@functools.lru_cache(maxsize=None)
def make_train_step(cfg: MR.MaskRCNNTrainConfig, mask_stride: int):
  """The jitted Mask R-CNN train step for ``cfg`` (``step(graphdef, state, batch, seed)``)."""

  def step(graphdef, state, batch, seed):
    model, optimizer = nnx.merge(graphdef, state)
    key = jax.random.fold_in(jax.random.key(seed), optimizer.step[...])

    def loss_fn(m):
      return MR.losses(m, batch, key, cfg, mask_stride)

    (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {"loss": loss, **aux,
                                           "grad_norm": optax.tree.norm(grads)}

  return jax.jit(step, static_argnums=0, donate_argnums=1)


@functools.lru_cache(maxsize=None)
def make_eval_fn(cfg: MR.MaskRCNNTestConfig):
  """``fn(model, batch, index)``: the fixed-size detections and the batch's ground truth."""

  def eval_fn(model, batch, index):
    out = MR.predict(model, batch["image"], batch["image_hw"], cfg)
    n = batch["image"].shape[0]
    gt_valid = batch["gt_valid"]
    extra = {"gt_iscrowd": batch.get("gt_iscrowd", jnp.zeros_like(gt_valid)),
             "scale": batch.get("scale", jnp.ones((n, 2), jnp.float32)),
             "image_id": batch.get("image_id", index * n + jnp.arange(n, dtype=jnp.int32)),
             "mask": batch.get("mask", jnp.ones((n,), jnp.float32))}
    return {**out, **extra, "image_hw": batch["image_hw"], "gt_boxes": batch["gt_boxes"],
            "gt_classes": batch["gt_classes"], "gt_valid": gt_valid,
            "gt_masks": batch["gt_masks"]}

  return eval_fn


def detection_batch_spec(global_batch: int, image_shape, max_instances: int, mask_stride: int):
  """The train batch (``spikejax.data.det_pipeline``) as shapes, for ahead-of-time compiles."""
  h, w = tuple(image_shape)[-3:-1]
  b, m = global_batch, max_instances
  s = jax.ShapeDtypeStruct
  return {"image": s((b,) + tuple(image_shape), jnp.float32), "image_hw": s((b, 2), jnp.int32),
          "gt_boxes": s((b, m, 4), jnp.float32), "gt_classes": s((b, m), jnp.int32),
          "gt_valid": s((b, m), jnp.bool_),
          "gt_masks": s((b, m, h // mask_stride, w // mask_stride), jnp.uint8)}


def _plain(v):
  """``v`` with numpy arrays and scalars as JSON values (lists, floats, ints)."""
  if isinstance(v, dict):
    return {str(k): _plain(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_plain(x) for x in v]
  if isinstance(v, np.ndarray):
    return _plain(v.tolist())
  if isinstance(v, np.generic):
    return v.item()
  return v


METRICS = ("bbox_map_50", "bbox_map", "segm_map_50", "segm_map")


class Detect(base.Task):
  name = "detect"
  best_metric = "bbox_map_50"
  higher_is_better = True
  logged = METRICS + ("bbox_map_75", "segm_map_75")
  row_names = {k: f"test_{k}" for k in METRICS + ("bbox_map_75", "segm_map_75")}
  families = ("maskrcnn",)
  collected = COLLECTED

  def __init__(self, train_cfg=MR.MaskRCNNTrainConfig(), test_cfg=MR.MaskRCNNTestConfig(),
               seed: int = 0, mask_stride: int = 1, max_instances: int | None = None,
               num_classes: int | None = None, class_names=None):
    self.train_cfg, self.test_cfg = train_cfg, test_cfg
    self.seed, self.mask_stride, self.max_instances = seed, mask_stride, max_instances
    self.num_classes = num_classes
    self.class_names = tuple(class_names) if class_names else None
    self.train_step = make_train_step(train_cfg, mask_stride)

  def for_config(self, config):
    train_cfg, test_cfg, seed = settings(config)
    spec, pipe = pipeline(config)
    if pipe is None:
      return Detect(train_cfg, test_cfg, seed)
    names = spec.class_names if len(spec.class_names or ()) == spec.num_classes else None
    return Detect(train_cfg, test_cfg, seed, pipe.mask_stride, pipe.max_instances,
                  spec.num_classes, names)

  def validate(self, config, family):
    del family
    settings(config)
    spec, pipe = pipeline(config)
    if spec is not None and pipe is None:
      raise ConfigError(f"task='detect' needs a detection data set (boxes and instance "
                        f"masks); {spec.name!r} is a {spec.kind} one. Detection sets: e.g. "
                        f"fashion_mnist_scenes_det, coco.")
    if pipe is not None and not pipe.masks:
      raise ConfigError("task='detect' trains Mask R-CNN's mask head: the pipeline needs "
                        "masks (augment.masks=True).")

  def step_args(self, config, mesh):
    del config, mesh
    return (jnp.asarray(self.seed, jnp.uint32),)

  def batch_spec(self, global_batch, num_classes, image_shape):
    del num_classes
    if self.max_instances is None:
      raise ConfigError("the detection batch spec needs the data set's detection pipeline "
                        "(instances per image, mask stride): set config.dataset to one.")
    return detection_batch_spec(global_batch, image_shape, self.max_instances, self.mask_stride)

  def eval_fn(self, config):
    return make_eval_fn(settings(config)[1])

  def collect(self, outputs):
    """One batch's detections and ground truth as COCO images and results, masks pasted and
    RLE-encoded (a COCO evaluation never holds every image's dense masks)."""
    from spikejax.train import coco_eval   # pylint: disable=import-outside-toplevel
    return coco_eval.arrays_to_coco(outputs, mask_stride=self.mask_stride,
                                    mask_thr=self.test_cfg.mask_thr)

  def aggregate(self, totals):
    from spikejax.train import coco_eval   # pylint: disable=import-outside-toplevel
    batches = totals.get("collected") or []
    images = [im for ims, _ in batches for im in ims]
    dets = [d for _, ds in batches for d in ds]
    if not images:
      return {**{k: float("nan") for k in self.logged}, "examples": 0}
    num_classes = self.num_classes or 1 + max(
        [int(np.max(im["gt_classes"], initial=-1)) for im in images]
        + [int(np.max(d["classes"], initial=-1)) for d in dets])
    names = list(self.class_names) if self.class_names else None
    res = coco_eval.coco_metrics(images, dets, num_classes=num_classes, class_names=names)
    out: dict[str, Any] = {"examples": len(images)}
    for kind in ("bbox", "segm"):
      for k, v in res[kind].items():
        out[f"{kind}_{k}"] = v
    for k in self.logged:      # scalars for the logs: COCO's "no ground truth" (None) is nan
      out[k] = float("nan") if out.get(k) is None else float(out[k])
    return out

  def result_files(self, metrics):
    return {"detection.json": _plain(dict(metrics))}

  def describe(self, metrics):
    return (f"box mAP@0.5 {metrics['bbox_map_50']:.4f} mAP {metrics['bbox_map']:.4f}, mask "
            f"mAP@0.5 {metrics['segm_map_50']:.4f} mAP {metrics['segm_map']:.4f}")


TASK = base.register(Detect())
