"""The two stages of the spiking Mask R-CNN at static shapes: training targets and losses, and
inference to a fixed number of detections (addendum B.2, mmdet 3.x's stock Mask R-CNN).

**Training** (``losses``), per image and then averaged as mmdet averages over the batch:

* RPN: every anchor of every level (declared strides, trap 1; anchors outside the image's
  32-padded extent are not used, mmdet's ``valid_flags``), ``MaxIoUAssigner(pos 0.7, neg 0.3,
  min_pos 0.3)``, 256 sampled (positive fraction 0.5); sigmoid cross-entropy on the sampled
  anchors and L1 on the positives' deltas (stds 1), both divided by the batch's sampled count.
* Proposals from the detached RPN outputs (``nms_pre`` 2000 per level, NMS 0.7, 1000 kept).
* RoI head: the ground-truth boxes join the proposals (``add_gt_as_proposals``),
  ``MaxIoUAssigner(0.5, 0.5, 0.5)``, 512 sampled (positive fraction 0.25); RoIAlign 7x7 at the
  declared strides; softmax cross-entropy over ``num_classes + 1`` (background last) divided
  by the sampled RoIs; class-specific L1 on the positives' deltas (stds 0.1, 0.1, 0.2, 0.2)
  divided by the sampled RoIs.
* Mask head on the positives (the sampler puts them first, in random order: the first
  ``512 * 0.25`` slots, or the first ``mask_rois`` of them): RoIAlign 14x14, 28x28 logits of
  the ground-truth class, binary cross-entropy against the ground-truth mask cropped and
  resized to 28x28 (mmdet ``crop_and_resize``: RoIAlign, aligned, then ``>= 0.5``), averaged
  over the positives' pixels.

**Inference** (``predict``): proposals (1000 per level, NMS 0.7, 1000 kept), box head,
softmax scores, class-specific decoding clipped to the image, candidates above ``score_thr``
(0.05), per-class NMS 0.5, the best ``max_per_img`` (100); the mask head on the kept boxes and
the sigmoid of each one's class channel. Static shapes: mmdet's ``multiclass_nms`` takes every
(box, class) pair above the threshold; here the ``max_candidates`` best (2000) enter NMS, which
is the same result whenever no more than that many pass the threshold.

Images are NHWC with the merged ``T * B`` axis inside the model; RoIs of image ``b`` pool
``T`` times, from rows ``t * B + b`` of the levels, and the heads average over ``T``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spikejax.models import boxes as B
from spikejax.spiking import record

Array = jax.Array

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


def _check_counts(settings, what: str, names) -> None:
  for name in names:
    v = getattr(settings, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"detection {what} setting {name} must be an integer >= 1, got {v!r}.")


@dataclasses.dataclass(frozen=True)
class MaskRCNNTrainConfig:
  """mmdet's Mask R-CNN ``train_cfg`` (and the RPN's train-time proposals)."""
  rpn_pos_iou: float = 0.7
  rpn_neg_iou: float = 0.3
  rpn_min_pos_iou: float = 0.3
  rpn_num: int = 256
  rpn_pos_fraction: float = 0.5
  rpn_nms_pre: int = 2000
  rpn_max_per_img: int = 1000
  rpn_nms_iou: float = 0.7
  rcnn_pos_iou: float = 0.5
  rcnn_neg_iou: float = 0.5
  rcnn_min_pos_iou: float = 0.5
  rcnn_num: int = 512
  rcnn_pos_fraction: float = 0.25
  mask_size: int = 28
  mask_max_grid: int = 8          # RoIAlign samples per bin and axis for the mask targets
  mask_rois: int | None = None    # positives per image the mask head trains on (None: all, mmdet)
  rpn_weight: float = 1.0
  rcnn_weight: float = 1.0
  mask_weight: float = 1.0

  def __post_init__(self):
    _check_counts(self, "train", ("rpn_num", "rpn_nms_pre", "rpn_max_per_img", "rcnn_num",
                                  "mask_size", "mask_max_grid"))
    if self.mask_rois is not None:
      _check_counts(self, "train", ("mask_rois",))
    for name in ("rpn_pos_fraction", "rcnn_pos_fraction"):
      if not 0 < getattr(self, name) <= 1:
        raise ValueError(f"detection train setting {name} must be in (0, 1], got "
                         f"{getattr(self, name)!r}.")


@dataclasses.dataclass(frozen=True)
class MaskRCNNTestConfig:
  """mmdet's Mask R-CNN ``test_cfg``; ``max_candidates`` bounds the boxes entering NMS."""
  rpn_nms_pre: int = 1000
  rpn_max_per_img: int = 1000
  rpn_nms_iou: float = 0.7
  score_thr: float = 0.05
  nms_iou: float = 0.5
  max_per_img: int = 100
  max_candidates: int = 2000
  mask_thr: float = 0.5

  def __post_init__(self):
    _check_counts(self, "test", ("rpn_nms_pre", "rpn_max_per_img", "max_per_img",
                                 "max_candidates"))


# ---------------------------------------------------------------------------------- anchors
def level_anchors(model, levels: Sequence[Array]) -> list[np.ndarray]:
  """Every level's anchors (``(h * w * A, 4)``, numpy) at the model's declared strides."""
  cfg = model.config
  return [B.anchors(lv.shape[1:3], s, cfg.anchor_ratios, (cfg.anchor_scale,))
          for lv, s in zip(levels, model.declared_strides, strict=True)]


def anchor_valid(level_shapes, strides, num_anchors: int, image_hw: Array) -> Array:
  """mmdet ``valid_flags`` for one image: a location counts while it lies inside the image's
  extent padded to a multiple of 32, ``ceil(pad / stride)`` cells per axis. ``(sum h w A,)``."""
  pad = jnp.ceil(image_hw.astype(jnp.float32) / 32.0) * 32.0
  out = []
  for (h, w), s in zip(level_shapes, strides, strict=True):
    vh = jnp.minimum(jnp.ceil(pad[0] / s), h)
    vw = jnp.minimum(jnp.ceil(pad[1] / s), w)
    ok = (jnp.arange(h)[:, None] < vh) & (jnp.arange(w)[None, :] < vw)
    out.append(jnp.repeat(ok.reshape(-1), num_anchors))
  return jnp.concatenate(out)


def _flat_rpn(rpn):
  """Per level ``(objectness (B, h, w, A), deltas (B, h, w, 4A))`` -> ``(B, N)``, ``(B, N, 4)``."""
  cls = jnp.concatenate([c.reshape(c.shape[0], -1) for c, _ in rpn], axis=1)
  reg = jnp.concatenate([d.reshape(d.shape[0], -1, 4) for _, d in rpn], axis=1)
  return cls, reg


def proposals(rpn, anchors_per_level, image_hw: Array, *, nms_pre: int, max_per_img: int,
              iou: float) -> tuple[Array, Array]:
  """``(boxes (B, P, 4), valid (B, P))``: each image's RPN proposals (``boxes.rpn_proposals``),
  clipped to its ``image_hw``."""
  anchors_j = [jnp.asarray(a) for a in anchors_per_level]

  def one(levels, hw):
    out_b, _, out_v = B.rpn_proposals(levels, anchors_j, (hw[0], hw[1]), nms_pre=nms_pre,
                                      max_per_img=max_per_img, iou_threshold=iou)
    return out_b, out_v

  return jax.vmap(one)(list(rpn), image_hw.astype(jnp.float32))


ROI_ALIGN_SAMPLES = 2   # bilinear samples per bin and axis that the energy count assumes


def roi_features(model, levels: Sequence[Array], rois: Array, size: int,
                 name: str = "roi_align") -> Array:
  """RoIAlign of ``rois (B, R, 4)`` from the first four levels at the declared strides (trap 1)
  for every timestep: ``(T * B * R, size, size, C)``, ``t`` major.

  Spike-driven runs record it as a real-valued op (B.5: MACs): per RoI ``size^2`` bins x ``C``
  channels x ``ROI_ALIGN_SAMPLES^2`` samples x 4 bilinear weights (mmcv's arithmetic; the
  adaptive sample count depends on each RoI's size, so a fixed 2 x 2 is assumed)."""
  n_img, r = rois.shape[:2]
  t = levels[0].shape[0] // n_img
  record.real_op(name, "roi_align", r * size * size * levels[0].shape[-1]
                 * ROI_ALIGN_SAMPLES ** 2 * 4, (r, size, size, levels[0].shape[-1]))
  grouped = jnp.tile(rois, (t, 1, 1))                      # (T * B, R, 4), t major
  out = B.multi_level_roi_align_grouped(levels[:4], grouped, model.declared_strides[:4], size)
  return out.reshape((-1,) + out.shape[2:])


# ---------------------------------------------------------------------------------- training
def _rpn_targets(anchors, valid, gt, gt_valid, key, cfg: MaskRCNNTrainConfig):
  assigned, _ = B.assign_max_iou(anchors, valid, gt, gt_valid, cfg.rpn_pos_iou, cfg.rpn_neg_iou,
                                 cfg.rpn_min_pos_iou)
  idx, is_pos, ok = B.sample_random(key, assigned, cfg.rpn_num, cfg.rpn_pos_fraction)
  target = B.encode(anchors[idx], gt[jnp.maximum(assigned[idx] - 1, 0)])
  return idx, is_pos, ok, jnp.where(is_pos[:, None], target, 0.0)


def _rcnn_targets(props, props_valid, gt, gt_classes, gt_valid, key, num_classes: int,
                  cfg: MaskRCNNTrainConfig):
  priors = jnp.concatenate([gt, props])
  prior_valid = jnp.concatenate([gt_valid, props_valid])
  assigned, _ = B.assign_max_iou(priors, prior_valid, gt, gt_valid, cfg.rcnn_pos_iou,
                                 cfg.rcnn_neg_iou, cfg.rcnn_min_pos_iou)
  idx, is_pos, ok = B.sample_random(key, assigned, cfg.rcnn_num, cfg.rcnn_pos_fraction)
  rois = priors[idx]
  g = jnp.maximum(assigned[idx] - 1, 0)
  labels = jnp.where(is_pos, gt_classes[g], num_classes)
  target = B.encode(rois, gt[g], stds=RCNN_STDS)
  return rois, labels, g, is_pos, ok, jnp.where(is_pos[:, None], target, 0.0)


def _mask_targets(gt_masks, rois, gt_index, size: int, mask_stride: int, max_grid: int):
  """mmdet ``BitmapMasks.crop_and_resize``: each RoI's ground-truth mask (``gt_masks (M, h, w)``
  at ``1 / mask_stride`` of the image) RoIAligned to ``size`` (aligned) and binarised."""
  feats = gt_masks.astype(jnp.float32)[..., None]
  out = B.roi_align(feats, rois, gt_index, size, 1.0 / mask_stride, 0, True, max_grid)
  return (out[..., 0] >= 0.5).astype(jnp.float32)


def losses(model, batch, key, cfg: MaskRCNNTrainConfig = MaskRCNNTrainConfig(),
           mask_stride: int = 1) -> tuple[Array, dict[str, Array]]:
  """The Mask R-CNN training loss of ``batch`` (the detection batch layout,
  ``spikejax.data.det_pipeline``): ``(total, {part: value})`` (module docstring)."""
  images, hw = batch["image"], batch["image_hw"]
  gt, gt_cls, gt_ok = batch["gt_boxes"], batch["gt_classes"], batch["gt_valid"]
  n_img = images.shape[0]
  num_classes = model.config.num_classes
  k_rpn, k_rcnn = jax.random.split(key)

  levels = model.pyramid(images)
  rpn = model.rpn(levels)
  anchors_np = level_anchors(model, levels)
  all_anchors = jnp.asarray(np.concatenate(anchors_np))
  n_anchors = len(model.config.anchor_ratios)
  shapes = [lv.shape[1:3] for lv in levels]
  valid = jax.vmap(lambda h: anchor_valid(shapes, model.declared_strides, n_anchors, h))(hw)

  # ---- RPN
  cls, reg = _flat_rpn(rpn)
  idx, is_pos, ok, target = jax.vmap(
      lambda v, g, gv, k: _rpn_targets(all_anchors, v, g, gv, k, cfg))(
          valid, gt, gt_ok, jax.random.split(k_rpn, n_img))
  take = jax.vmap(lambda a, i: a[i])
  logit = take(cls, idx)
  count = jnp.maximum(jnp.sum(ok), 1)
  bce = optax.sigmoid_binary_cross_entropy(logit, is_pos.astype(jnp.float32))
  rpn_cls = jnp.sum(jnp.where(ok, bce, 0.0)) / count
  rpn_box = jnp.sum(jnp.where(is_pos[..., None], jnp.abs(take(reg, idx) - target), 0.0)) / count

  # ---- proposals (no gradient) and RoI targets
  props, props_ok = proposals(jax.lax.stop_gradient(rpn), anchors_np, hw,
                              nms_pre=cfg.rpn_nms_pre, max_per_img=cfg.rpn_max_per_img,
                              iou=cfg.rpn_nms_iou)
  rois, labels, g_idx, pos, sampled, box_t = jax.vmap(
      lambda p, pv, g, c, gv, k: _rcnn_targets(p, pv, g, c, gv, k, num_classes, cfg))(
          props, props_ok, gt, gt_cls, gt_ok, jax.random.split(k_rcnn, n_img))
  rois = jax.lax.stop_gradient(rois)

  # ---- box head
  logits, deltas = model.bbox_head(roi_features(model, levels, rois, model.config.roi_size))
  logits = logits.reshape(n_img, -1, num_classes + 1)
  deltas = deltas.reshape(n_img, -1, num_classes, 4)
  n_rois = jnp.maximum(jnp.sum(sampled), 1)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  rcnn_cls = jnp.sum(jnp.where(sampled, ce, 0.0)) / n_rois
  own = jnp.take_along_axis(deltas, jnp.minimum(labels, num_classes - 1)[..., None, None],
                            axis=2)[:, :, 0]
  rcnn_box = jnp.sum(jnp.where(pos[..., None], jnp.abs(own - box_t), 0.0)) / n_rois
  correct = jnp.sum((jnp.argmax(logits, -1) == labels) & sampled) / n_rois

  # ---- mask head on the positives (the first slots of each image's sample)
  n_pos = int(cfg.rcnn_num * cfg.rcnn_pos_fraction)
  if cfg.mask_rois is not None:       # the positives are drawn in random order: a random subset
    n_pos = min(n_pos, cfg.mask_rois)
  p_rois, p_lab, p_g, p_ok = rois[:, :n_pos], labels[:, :n_pos], g_idx[:, :n_pos], pos[:, :n_pos]
  mask_logits = model.mask_head(roi_features(model, levels, p_rois, model.config.mask_roi_size))
  mask_logits = mask_logits.reshape((n_img, n_pos) + mask_logits.shape[1:])
  own_mask = jnp.take_along_axis(
      mask_logits, jnp.minimum(p_lab, num_classes - 1)[:, :, None, None, None], axis=-1)[..., 0]
  size = own_mask.shape[-1]
  mask_t = jax.vmap(lambda m, r, g: _mask_targets(m, r, g, size, mask_stride,
                                                  cfg.mask_max_grid))(
      batch["gt_masks"], p_rois, p_g)
  mbce = optax.sigmoid_binary_cross_entropy(own_mask, mask_t)
  mask_pixels = jnp.maximum(jnp.sum(p_ok) * size * size, 1)
  mask_loss = jnp.sum(jnp.where(p_ok[..., None, None], mbce, 0.0)) / mask_pixels

  parts = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box,
           "mask": mask_loss}
  total = (cfg.rpn_weight * (rpn_cls + rpn_box) + cfg.rcnn_weight * (rcnn_cls + rcnn_box)
           + cfg.mask_weight * mask_loss)
  aux = dict(parts, rcnn_accuracy=correct, positives=jnp.sum(pos) / n_img,
             rpn_positives=jnp.sum(is_pos) / n_img)
  return total, aux


# ---------------------------------------------------------------------------------- inference
def _detect_one(props, props_ok, logits, deltas, hw, cfg: MaskRCNNTestConfig):
  """Per-image box post-processing: ``(boxes (D, 4), scores (D,), classes (D,), valid (D,))``."""
  num_classes = deltas.shape[-2]
  scores = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[:, :num_classes]
  boxes = B.decode(props[:, None, :], deltas.astype(jnp.float32), stds=RCNN_STDS,
                   max_shape=(hw[0], hw[1]))                         # (P, K, 4)
  flat_s = jnp.where(props_ok[:, None] & (scores > cfg.score_thr), scores, -1.0).reshape(-1)
  flat_b = boxes.reshape(-1, 4)
  cls = jnp.tile(jnp.arange(num_classes), props.shape[0])
  k = min(cfg.max_candidates, flat_s.shape[0])
  top, order = jax.lax.top_k(flat_s, k)
  keep, kept = B.nms(flat_b[order], top, cfg.nms_iou, cfg.max_per_img, ids=cls[order],
                     valid=top > 0)
  pick = order[keep]
  return (jnp.where(kept[:, None], flat_b[pick], 0.0), jnp.where(kept, flat_s[pick], 0.0),
          jnp.where(kept, cls[pick], -1), kept)


def predict(model, images: Array, image_hw: Array | None = None,
            cfg: MaskRCNNTestConfig = MaskRCNNTestConfig()) -> dict[str, Array]:
  """Fixed-size detections of NHWC ``images``: ``boxes (B, D, 4)`` (input pixels), ``scores``,
  ``classes`` (``-1`` for empty slots), ``valid``, ``mask_probs (B, D, 28, 28)`` (the sigmoid of
  each detection's class channel; paste with ``spikejax.train.coco_eval.paste_masks``)."""
  n_img = images.shape[0]
  if image_hw is None:
    image_hw = jnp.tile(jnp.asarray(images.shape[1:3], jnp.int32), (n_img, 1))
  levels = model.pyramid(images)
  rpn = model.rpn(levels)
  props, props_ok = proposals(rpn, level_anchors(model, levels), image_hw,
                              nms_pre=cfg.rpn_nms_pre, max_per_img=cfg.rpn_max_per_img,
                              iou=cfg.rpn_nms_iou)
  num_classes = model.config.num_classes
  logits, deltas = model.bbox_head(roi_features(model, levels, props, model.config.roi_size,
                                                "bbox_roi_align"))
  logits = logits.reshape(n_img, -1, num_classes + 1)
  deltas = deltas.reshape(n_img, -1, num_classes, 4)
  hw = image_hw.astype(jnp.float32)
  boxes, scores, classes, valid = jax.vmap(
      lambda p, pv, lg, d, h: _detect_one(p, pv, lg, d, h, cfg))(props, props_ok, logits,
                                                                 deltas, hw)
  mask_logits = model.mask_head(roi_features(model, levels, boxes, model.config.mask_roi_size,
                                             "mask_roi_align"))
  mask_logits = mask_logits.reshape((n_img, boxes.shape[1]) + mask_logits.shape[1:])
  own = jnp.take_along_axis(mask_logits, jnp.maximum(classes, 0)[:, :, None, None, None],
                            axis=-1)[..., 0]
  return {"boxes": boxes, "scores": scores, "classes": classes, "valid": valid,
          "mask_probs": jnp.where(valid[..., None, None], jax.nn.sigmoid(own), 0.0)}
