"""COCO detection evaluation (``bbox`` and ``segm``) of the Mask R-CNN detector, on the host.

* ``paste_masks``: mmdet 3.x ``_do_paste_mask`` (``fcn_mask_head.py``): the ``M x M`` mask
  probabilities of each detection bilinearly sampled into its box (``grid_sample``,
  ``align_corners=False``, zero padding), then ``>= mask_thr_binary``.
* ``coco_metrics``: pycocotools' ``COCOeval`` on a ground truth built in memory, as mmdet's
  ``CocoMetric``: AP@[.5:.95], AP50, AP75, AP small/medium/large, AR@100 and per-class AP.
* ``detections_from_arrays`` / ``ground_truth_from_arrays``: the padded, fixed-size arrays of a
  jitted eval step and of a batch turned into the per-image lists ``coco_metrics`` takes;
  ``arrays_to_coco`` does both from one dict of collected arrays.

Semantics chosen here:

* The area of a ground-truth instance (COCO's ``area``, which picks the small / medium / large
  range for both iou types) is its mask area when a mask is given, else its box area ``w * h``.
  Detections get pycocotools' areas: box area for ``bbox`` results, mask area for ``segm``
  results (``segm`` results are passed as COCO's results format has them, without a box).
* COCOeval's ``-1`` (no ground truth in a category / area range) becomes ``None``, in the
  summary numbers and in the per-class APs alike.
* Ground-truth masks given at a stride ``s`` of the canvas are upsampled nearest (canvas pixel
  ``(y, x)`` reads mask pixel ``(y // s, x // s)``, the inverse of the pipeline's sampling at
  ``(i * s, j * s)``).

Boxes are ``(x1, y1, x2, y2)`` in pixels; class indices are ``0..K-1`` (COCO category ids
``1..K``).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_TYPES = ("bbox", "segm")
# COCOeval.summarize()'s stats, by index.
_STATS = {"map": 0, "map_50": 1, "map_75": 2, "map_small": 3, "map_medium": 4, "map_large": 5,
          "mar_100": 8}
# Elements of one float32 pasting chunk (detections x rows x columns): 64 MiB.
_CHUNK_ELEMENTS = 1 << 24


# ------------------------------------------------------------------------------------------------
# Mask pasting.


def _interpolation(lo: np.ndarray, hi: np.ndarray, pixels: int, size: int) -> np.ndarray:
  """``(N, pixels, size)`` bilinear weights of the mask cells for the pixels of one axis.

  Pixel centre ``p + 0.5`` sits at mask coordinate ``u = (p + 0.5 - lo) / (hi - lo) * size - 0.5``
  (``grid_sample``, ``align_corners=False``); cell ``k`` weighs ``max(0, 1 - |u - k|)``, which is
  ``grid_sample``'s bilinear weights with the cells outside the mask reading 0. Boxes of no
  extent along the axis get no weights (an empty mask).
  """
  extent = hi - lo
  ok = extent > 0
  extent = np.where(ok, extent, 1.0)
  centres = np.arange(pixels, dtype=np.float64) + 0.5
  u = (centres[None, :] - lo[:, None]) / extent[:, None] * size - 0.5
  w = np.maximum(0.0, 1.0 - np.abs(u[..., None] - np.arange(size, dtype=np.float64)))
  w[~ok] = 0.0
  return w.astype(np.float32)


def paste_masks(mask_probs: np.ndarray, boxes: np.ndarray, image_hw: Sequence[int],
                canvas_hw: Sequence[int] | None = None,
                threshold: float | None = 0.5) -> np.ndarray:
  """The ``(N, M, M)`` mask probabilities of ``N`` detections pasted into their ``boxes``.

  mmdet 3.x ``FCNMaskHead._predict_by_feat_single`` / ``_do_paste_mask``: image pixel ``(y, x)``
  takes the mask's bilinear sample at ``((x + 0.5 - x1) / (x2 - x1)) * M - 0.5`` (likewise
  ``y``), zero outside the mask, then ``>= threshold`` (``mask_thr_binary``). A pixel just
  outside a box edge therefore gets up to half of the edge cell (a box edge on a pixel centre
  puts exactly half of the border cell there). Computed separably, ``A_y @ mask @ A_x^T``.

  Args:
    mask_probs: ``(N, Mh, Mw)`` probabilities (the class-specific mask of each detection).
    boxes: ``(N, 4)`` ``x1, y1, x2, y2`` in image pixels.
    image_hw: the image's real ``(height, width)``: only these pixels are pasted.
    canvas_hw: the output's ``(H, W)`` (default ``image_hw``); pixels outside the image False.
    threshold: binarisation threshold; ``None`` returns the float32 probabilities instead.

  Returns:
    ``(N, H, W)`` bool (float32 when ``threshold`` is None).
  """
  mask_probs = np.asarray(mask_probs, np.float32)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if mask_probs.ndim != 3 or mask_probs.shape[0] != boxes.shape[0]:
    raise ValueError(f"mask_probs {mask_probs.shape} must be (N, M, M) for boxes {boxes.shape}")
  h, w = int(image_hw[0]), int(image_hw[1])
  canvas_h, canvas_w = (h, w) if canvas_hw is None else (int(canvas_hw[0]), int(canvas_hw[1]))
  if h > canvas_h or w > canvas_w:
    raise ValueError(f"image {(h, w)} does not fit the canvas {(canvas_h, canvas_w)}")
  n, mh, mw = mask_probs.shape
  out = np.zeros((n, canvas_h, canvas_w), np.float32 if threshold is None else bool)
  if n == 0 or h == 0 or w == 0:
    return out
  ay = _interpolation(boxes[:, 1], boxes[:, 3], h, mh)   # (N, h, Mh)
  ax = _interpolation(boxes[:, 0], boxes[:, 2], w, mw)   # (N, w, Mw)
  chunk = max(1, _CHUNK_ELEMENTS // (h * w))
  for start in range(0, n, chunk):
    sl = slice(start, start + chunk)
    values = ay[sl] @ mask_probs[sl] @ ax[sl].transpose(0, 2, 1)   # (n, h, w)
    out[sl, :h, :w] = values if threshold is None else values >= threshold
  return out


# ------------------------------------------------------------------------------------------------
# COCO evaluation.


def _xywh(boxes: np.ndarray) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def encode_masks(masks: np.ndarray) -> list[dict]:
  """COCO compressed RLEs (pycocotools ``mask.encode``) of ``(N, H, W)`` bool masks."""
  masks = np.asarray(masks)
  if masks.shape[0] == 0:
    return []
  return mask_util.encode(np.asfortranarray(masks.astype(bool).astype(np.uint8)
                                            .transpose(1, 2, 0)))


def _rles(masks, hw: tuple[int, int]) -> list[dict]:
  """COCO RLEs of ``(N, >=H, >=W)`` bool masks (cropped to the image ``hw``) or of a list of
  RLEs (checked to be of size ``hw``)."""
  if isinstance(masks, (list, tuple)):
    for rle in masks:
      if tuple(rle["size"]) != tuple(hw):
        raise ValueError(f"an RLE of size {rle['size']} in an image of {hw}")
    return list(masks)
  masks = np.asarray(masks)
  if masks.ndim != 3 or masks.shape[1] < hw[0] or masks.shape[2] < hw[1]:
    raise ValueError(f"masks {masks.shape} do not cover the image {hw}")
  return encode_masks(masks[:, :hw[0], :hw[1]])


def _summary(value: float) -> float | None:
  return None if value <= -1 else float(value)


def _mean_valid(precision: np.ndarray) -> float | None:
  valid = precision[precision > -1]
  return float(valid.mean()) if valid.size else None


def _ground_truth(images: Sequence[Mapping[str, Any]], num_classes: int, names: list,
                  with_masks: bool) -> COCO:
  coco_images, annotations = [], []
  for img in images:
    image_id, hw = int(img["image_id"]), (int(img["height"]), int(img["width"]))
    coco_images.append({"id": image_id, "height": hw[0], "width": hw[1]})
    boxes = np.asarray(img["gt_boxes"], np.float64).reshape(-1, 4)
    classes = np.asarray(img["gt_classes"], np.int64).reshape(-1)
    g = boxes.shape[0]
    if classes.shape[0] != g:
      raise ValueError(f"image {image_id}: {g} gt boxes but {classes.shape[0]} classes")
    if g and (classes.min() < 0 or classes.max() >= num_classes):
      raise ValueError(f"image {image_id}: gt classes {classes} outside 0..{num_classes - 1}")
    crowd = img.get("gt_iscrowd")
    crowd = np.zeros(g, bool) if crowd is None else np.asarray(crowd, bool).reshape(-1)
    xywh = _xywh(boxes)
    areas = xywh[:, 2] * xywh[:, 3]
    rles = None
    if img.get("gt_masks") is not None:
      rles = _rles(img["gt_masks"], hw)
      if len(rles) != g:
        raise ValueError(f"image {image_id}: {g} gt boxes but {len(rles)} gt masks")
      areas = mask_util.area(rles) if g else areas
    elif with_masks and g:
      raise ValueError(f"image {image_id}: segm evaluation needs gt_masks")
    for i in range(g):
      ann = {"id": len(annotations) + 1,   # COCOeval takes id 0 for "unmatched"
             "image_id": image_id, "category_id": int(classes[i]) + 1,
             "bbox": [float(v) for v in xywh[i]], "area": float(areas[i]),
             "iscrowd": int(crowd[i])}
      if rles is not None:
        ann["segmentation"] = rles[i]
      annotations.append(ann)
  gt = COCO()
  gt.dataset = {"images": coco_images, "annotations": annotations,
                "categories": [{"id": k + 1, "name": str(names[k])} for k in range(num_classes)]}
  gt.createIndex()
  return gt


def _results(images, detections, num_classes: int, iou_type: str) -> list[dict]:
  results = []
  for img, det in zip(images, detections):
    image_id, hw = int(img["image_id"]), (int(img["height"]), int(img["width"]))
    boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(det["scores"], np.float64).reshape(-1)
    classes = np.asarray(det["classes"], np.int64).reshape(-1)
    d = boxes.shape[0]
    if scores.shape[0] != d or classes.shape[0] != d:
      raise ValueError(f"image {image_id}: {d} boxes, {scores.shape[0]} scores, "
                       f"{classes.shape[0]} classes")
    if d and (classes.min() < 0 or classes.max() >= num_classes):
      raise ValueError(f"image {image_id}: classes {classes} outside 0..{num_classes - 1}")
    if iou_type == "bbox":
      for box, score, cls in zip(_xywh(boxes), scores, classes):
        results.append({"image_id": image_id, "category_id": int(cls) + 1,
                        "bbox": [float(v) for v in box], "score": float(score)})
    else:
      if det.get("masks") is None:
        if d:
          raise ValueError(f"image {image_id}: segm evaluation needs detection masks")
        continue
      rles = _rles(det["masks"], hw)
      if len(rles) != d:
        raise ValueError(f"image {image_id}: {d} boxes but {len(rles)} masks")
      for rle, score, cls in zip(rles, scores, classes):
        results.append({"image_id": image_id, "category_id": int(cls) + 1,
                        "segmentation": rle, "score": float(score)})
  return results


def coco_metrics(images: Sequence[Mapping[str, Any]], detections: Sequence[Mapping[str, Any]], *,
                 num_classes: int, class_names: Sequence[str] | None = None,
                 iou_types: Sequence[str] = IOU_TYPES) -> dict[str, dict[str, Any]]:
  """COCO ``bbox`` / ``segm`` metrics of ``detections`` against the ground truth of ``images``.

  Args:
    images: per image ``image_id`` (int, unique), ``height``, ``width`` (the frame of its boxes
      and masks), ``gt_boxes`` ``(G, 4)``, ``gt_classes`` ``(G,)`` in ``0..K-1``, ``gt_masks``
      ``(G, >=height, >=width)`` bool, a list of G COCO RLEs (``encode_masks``) or None
      (needed for ``segm``), optional ``gt_iscrowd``
      ``(G,)`` (COCO ``iscrowd=1``: detections matched to them are ignored, unmatched they are
      no miss).
    detections: per image, in the order of ``images``: ``boxes`` ``(D, 4)``, ``scores``,
      ``classes`` ``(D,)``, ``masks`` ``(D, >=height, >=width)`` bool, a list of D RLEs or
      None. ``D`` may be 0.
      COCOeval keeps the 100 best per image.
    num_classes: ``K``; categories are ids ``1..K``.
    class_names: keys of the per-class APs (default: the class indices ``0..K-1``).
    iou_types: a subset of ``("bbox", "segm")``.

  Returns:
    Per iou type: ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``map_small``,
    ``map_medium``, ``map_large``, ``mar_100`` (COCOeval ``stats``, area "all", 100 detections)
    and ``per_class_ap`` / ``per_class_ap_50`` (``{name: AP}`` from ``eval['precision']``).
    Numbers without ground truth (COCOeval's ``-1``) are None. With no detections at all the
    APs of the classes that have ground truth are 0.
  """
  if len(images) != len(detections):
    raise ValueError(f"{len(images)} images but {len(detections)} detection lists")
  ids = [int(img["image_id"]) for img in images]
  if len(set(ids)) != len(ids):
    raise ValueError("image_id values must be unique")
  bad = [t for t in iou_types if t not in IOU_TYPES]
  if bad:
    raise ValueError(f"unknown iou types {bad}; expected a subset of {IOU_TYPES}")
  names = list(range(num_classes)) if class_names is None else list(class_names)
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes")

  out = {}
  with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress and tables
    gt = _ground_truth(images, num_classes, names, with_masks="segm" in iou_types)
    for iou_type in iou_types:
      results = _results(images, detections, num_classes, iou_type)
      if results:
        dt = gt.loadRes(results)
      else:   # loadRes reads results[0]: an empty result set by hand
        dt = COCO()
        dt.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                      "categories": list(gt.dataset["categories"])}
        dt.createIndex()
      ev = COCOeval(gt, dt, iou_type)
      ev.evaluate()
      ev.accumulate()
      ev.summarize()
      metrics: dict[str, Any] = {k: _summary(ev.stats[i]) for k, i in _STATS.items()}
      # precision: [T iou thresholds, R recall thresholds, K, A areas, M max dets].
      precision = ev.eval["precision"]
      t50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
      area_all, dets_100 = ev.params.areaRngLbl.index("all"), ev.params.maxDets.index(100)
      metrics["per_class_ap"] = {names[k]: _mean_valid(precision[:, :, k, area_all, dets_100])
                                 for k in range(num_classes)}
      metrics["per_class_ap_50"] = {names[k]: _mean_valid(precision[t50, :, k, area_all,
                                                                    dets_100])
                                    for k in range(num_classes)}
      out[iou_type] = metrics
  return out


# ------------------------------------------------------------------------------------------------
# From the padded arrays of an eval step.


def _frames(image_hw, scale, orig_hw, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per example the image size on the canvas, the output frame ``(h, w)`` and the canvas
  pixels per frame pixel ``(sy, sx)``, each ``(B, 2)``."""
  image_hw = np.broadcast_to(np.asarray(image_hw, np.float64), (batch, 2))
  if scale is None:
    scale = np.ones((batch, 2))
    frame = image_hw if orig_hw is None else orig_hw
  else:
    scale = np.broadcast_to(np.asarray(scale, np.float64), (batch, 2))
    frame = np.round(image_hw / scale) if orig_hw is None else orig_hw
  frame = np.broadcast_to(np.asarray(frame), (batch, 2)).astype(np.int64)
  return image_hw, frame, scale


def _keep(mask, batch: int) -> np.ndarray:
  return np.ones(batch, bool) if mask is None else np.asarray(mask).reshape(batch) > 0


def detections_from_arrays(boxes, scores, classes, valid, *, image_id, image_hw, mask=None,
                           mask_probs=None, scale=None, orig_hw=None,
                           mask_threshold: float = 0.5,
                           rle: bool = False) -> list[dict[str, Any]]:
  """The per-image detection lists of ``coco_metrics`` from an eval step's padded outputs.

  Args:
    boxes: ``(B, D, 4)`` canvas pixels; ``scores`` ``(B, D)``; ``classes`` ``(B, D)`` int;
      ``valid`` ``(B, D)`` bool (invalid slots are dropped).
    image_id: ``(B,)`` int. ``image_hw``: ``(B, 2)`` the real image size in canvas pixels.
    mask: ``(B,)`` the example mask, 0 for padding examples (dropped). Default: all real.
    mask_probs: ``(B, D, M, M)`` mask probabilities, pasted with ``paste_masks`` at
      ``mask_threshold``; None: no masks.
    scale: ``(B, 2)`` (or broadcastable) canvas pixels per original pixel, ``(sy, sx)``: boxes
      are divided by it and masks are pasted at the original size (mmdet: boxes rescaled by the
      scale factor, masks pasted into ``ori_shape``).
    orig_hw: ``(B, 2)`` that original size; default ``round(image_hw / scale)``.
    rle: masks as COCO RLEs (``encode_masks``) instead of dense arrays: a whole evaluation's
      dense masks (100 full-image masks per image) do not fit in memory.

  Returns:
    Per kept example ``image_id``, ``boxes`` ``(D', 4)``, ``scores``, ``classes``, ``masks``
    ``(D', h, w)`` bool (a list of RLEs with ``rle``) or None, in the frame of
    ``ground_truth_from_arrays`` with the same ``image_hw`` / ``scale`` / ``orig_hw``.
  """
  boxes = np.asarray(boxes, np.float64)
  batch = boxes.shape[0]
  scores, classes = np.asarray(scores), np.asarray(classes)
  valid = np.asarray(valid, bool)
  image_id = np.asarray(image_id).reshape(batch)
  _, frame, scale = _frames(image_hw, scale, orig_hw, batch)
  keep = _keep(mask, batch)
  out = []
  for b in np.flatnonzero(keep):
    sel = np.flatnonzero(valid[b])
    sy, sx = scale[b]
    det_boxes = boxes[b, sel] / np.array([sx, sy, sx, sy])
    masks = None
    if mask_probs is not None:
      masks = paste_masks(np.asarray(mask_probs[b])[sel], det_boxes, frame[b],
                          threshold=mask_threshold)
      masks = encode_masks(masks) if rle else masks
    out.append({"image_id": int(image_id[b]), "boxes": det_boxes,
                "scores": scores[b, sel].astype(np.float64),
                "classes": classes[b, sel].astype(np.int64), "masks": masks})
  return out


def _nearest_rows(pixels: int, scale: float, stride: int, size: int) -> np.ndarray:
  """Mask rows (or columns) read by the frame's pixels, nearest as OpenCV's ``INTER_NEAREST``
  (mmcv's mask resize): frame pixel ``p`` reads canvas pixel ``floor(p * scale)``, which lies
  in mask cell ``floor(p * scale / s)``."""
  rows = np.floor(np.arange(pixels, dtype=np.float64) * scale / stride).astype(np.int64)
  return np.clip(rows, 0, size - 1)


def ground_truth_from_arrays(gt_boxes, gt_classes, gt_valid, *, image_id, image_hw, mask=None,
                             gt_masks=None, gt_iscrowd=None, mask_stride: int = 1, scale=None,
                             orig_hw=None, rle: bool = False) -> list[dict[str, Any]]:
  """The per-image ground truth of ``coco_metrics`` from a batch's padded arrays.

  Args:
    gt_boxes: ``(B, M, 4)`` canvas pixels; ``gt_classes`` ``(B, M)`` (-1 pad); ``gt_valid``
      ``(B, M)`` bool.
    image_id, image_hw, mask, scale, orig_hw, rle: as ``detections_from_arrays``.
    gt_masks: ``(B, M, h, w)`` uint8/bool instance masks covering the canvas at stride
      ``mask_stride`` (``s = H // h`` for a canvas of height ``H``): upsampled nearest, canvas
      pixel ``(y, x)`` reads ``(y // s, x // s)``; with ``scale``, frame pixel ``(y, x)`` reads
      ``(floor(y * sy / s), floor(x * sx / s))`` (OpenCV ``INTER_NEAREST``, as mmcv resizes
      masks). None: no masks (bbox only).
    gt_iscrowd: ``(B, M)`` bool. Crowd regions (``gt_valid`` False, ``gt_iscrowd`` True, a
      class >= 0) go to COCO as ``iscrowd=1`` annotations.

  Returns:
    Per kept example ``image_id``, ``height``, ``width`` (the frame), ``gt_boxes``,
    ``gt_classes``, ``gt_masks`` ``(G, height, width)`` bool (RLEs with ``rle``) or None,
    ``gt_iscrowd``.
  """
  gt_boxes = np.asarray(gt_boxes, np.float64)
  batch = gt_boxes.shape[0]
  gt_classes = np.asarray(gt_classes, np.int64)
  gt_valid = np.asarray(gt_valid, bool)
  crowd = np.zeros_like(gt_valid) if gt_iscrowd is None else np.asarray(gt_iscrowd, bool)
  image_id = np.asarray(image_id).reshape(batch)
  canvas_hw, frame, scale = _frames(image_hw, scale, orig_hw, batch)
  if gt_masks is not None:
    gt_masks = np.asarray(gt_masks)
    need = np.ceil(canvas_hw[_keep(mask, batch)].max(axis=0, initial=0))
    if gt_masks.shape[2] * mask_stride < need[0] or gt_masks.shape[3] * mask_stride < need[1]:
      raise ValueError(f"gt_masks {gt_masks.shape} at stride {mask_stride} do not cover images "
                       f"of {tuple(int(v) for v in need)} pixels")
  out = []
  for b in np.flatnonzero(_keep(mask, batch)):
    sel = np.flatnonzero((gt_valid[b] | crowd[b]) & (gt_classes[b] >= 0))
    sy, sx = scale[b]
    h, w = int(frame[b, 0]), int(frame[b, 1])
    masks = None
    if gt_masks is not None:
      rows = _nearest_rows(h, sy, mask_stride, gt_masks.shape[2])
      cols = _nearest_rows(w, sx, mask_stride, gt_masks.shape[3])
      masks = gt_masks[b, sel][:, rows][:, :, cols].astype(bool)
      masks = encode_masks(masks) if rle else masks
    out.append({"image_id": int(image_id[b]), "height": h, "width": w,
                "gt_boxes": gt_boxes[b, sel] / np.array([sx, sy, sx, sy]),
                "gt_classes": gt_classes[b, sel], "gt_masks": masks,
                "gt_iscrowd": crowd[b, sel]})
  return out


def arrays_to_coco(arrays: Mapping[str, Any], *, mask_stride: int = 1, mask_thr: float = 0.5,
                   rescale: bool = False, rle: bool = True) -> tuple[list[dict], list[dict]]:
  """``(images, detections)`` for ``coco_metrics`` from an evaluation's collected arrays.

  ``arrays`` holds the eval step's outputs concatenated over batches: ``boxes``, ``scores``,
  ``classes``, ``valid``, ``mask_probs`` (optional), ``image_hw``, ``gt_boxes``,
  ``gt_classes``, ``gt_valid``, ``gt_masks`` / ``gt_iscrowd`` / ``mask`` / ``image_id`` /
  ``scale`` (optional). Without ``rescale`` both are evaluated in the network's input frame
  (the real image region of the canvas; areas are those of the resized images); with it, in
  the original frame (boxes divided by ``scale``, masks pasted / resized to the original size).
  Masks are kept as COCO RLEs unless ``rle`` is False.
  """
  n = np.asarray(arrays["boxes"]).shape[0]
  image_id = arrays.get("image_id")
  common = {"image_id": np.arange(n) if image_id is None else image_id,
            "image_hw": arrays["image_hw"], "mask": arrays.get("mask"),
            "scale": arrays.get("scale") if rescale else None, "rle": rle}
  images = ground_truth_from_arrays(arrays["gt_boxes"], arrays["gt_classes"], arrays["gt_valid"],
                                    gt_masks=arrays.get("gt_masks"),
                                    gt_iscrowd=arrays.get("gt_iscrowd"), mask_stride=mask_stride,
                                    **common)
  detections = detections_from_arrays(arrays["boxes"], arrays["scores"], arrays["classes"],
                                      arrays["valid"], mask_probs=arrays.get("mask_probs"),
                                      mask_threshold=mask_thr, **common)
  return images, detections
