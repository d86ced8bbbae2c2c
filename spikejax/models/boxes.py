"""Box operations of the Mask R-CNN detector (addendum B.2), with mmdet 3.x semantics and static
shapes under ``jax.jit``.

* ``anchors``: mmdet's ``AnchorGenerator`` (centre offset 0, ``w = stride * scale / sqrt(r)``,
  ``h = stride * scale * sqrt(r)``), ordered ``(y, x, anchor)`` as the heads' NHWC outputs
  flatten.
* ``encode`` / ``decode``: ``DeltaXYWHBBoxCoder`` (``(dx, dy, dw, dh)`` normalised by means and
  stds; widths without the old +1; ``dw``/``dh`` clamped to ``|log(16 / 1000)|``; optional clip
  to the image).
* ``box_iou``: pairwise IoU without the +1 (mmcv 2.x).
* ``nms``: greedy NMS over a fixed number of candidates; boxes of different ``ids`` never
  suppress each other (mmcv ``batched_nms``, used per FPN level by the RPN and per class by
  the box head). Returns indices padded to a fixed length and their validity.
* ``roi_align`` / ``map_roi_levels`` / ``multi_level_roi_align``: mmcv ``RoIAlign`` (aligned,
  adaptive sampling up to a static grid) and mmdet's ``SingleRoIExtractor`` level mapping.
* ``rpn_proposals``: the RPN's post-processing to a fixed number of proposals.
* ``assign_max_iou`` / ``sample_random``: mmdet's ``MaxIoUAssigner`` and ``RandomSampler``.

Boxes are ``(x1, y1, x2, y2)`` in input pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

WH_RATIO_CLIP = 16 / 1000


def base_anchors(stride: float, ratios: Sequence[float], scales: Sequence[float]) -> np.ndarray:
  """The ``(len(ratios) * len(scales), 4)`` anchors of one location at the origin, ratio-major."""
  r = np.asarray(ratios, np.float64)
  h_ratios = np.sqrt(r)
  w_ratios = 1.0 / h_ratios
  s = np.asarray(scales, np.float64)
  ws = (stride * w_ratios[:, None] * s[None, :]).reshape(-1)
  hs = (stride * h_ratios[:, None] * s[None, :]).reshape(-1)
  return np.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], axis=-1)


def anchors(feature_size: tuple[int, int], stride: float, ratios: Sequence[float] = (0.5, 1, 2),
            scales: Sequence[float] = (8,)) -> np.ndarray:
  """All anchors of one level, ``(h * w * A, 4)`` float32, ordered ``(y, x, anchor)``."""
  h, w = feature_size
  base = base_anchors(stride, ratios, scales)
  xs, ys = np.meshgrid(np.arange(w) * stride, np.arange(h) * stride)
  shifts = np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4).astype(np.float32)


def encode(proposals: Array, gt: Array, means=(0.0, 0.0, 0.0, 0.0),
           stds=(1.0, 1.0, 1.0, 1.0)) -> Array:
  """The deltas that turn ``proposals`` into ``gt`` (both ``(..., 4)``)."""
  pw, ph = proposals[..., 2] - proposals[..., 0], proposals[..., 3] - proposals[..., 1]
  px, py = proposals[..., 0] + 0.5 * pw, proposals[..., 1] + 0.5 * ph
  gw, gh = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1]
  gx, gy = gt[..., 0] + 0.5 * gw, gt[..., 1] + 0.5 * gh
  d = jnp.stack([(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], axis=-1)
  return (d - jnp.asarray(means, d.dtype)) / jnp.asarray(stds, d.dtype)


def decode(boxes: Array, deltas: Array, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0),
           max_shape: tuple[int, int] | None = None) -> Array:
  """``boxes`` moved by ``deltas`` (both ``(..., 4)``); clipped to ``max_shape = (H, W)``."""
  d = deltas * jnp.asarray(stds, deltas.dtype) + jnp.asarray(means, deltas.dtype)
  limit = abs(math.log(WH_RATIO_CLIP))
  dw = jnp.clip(d[..., 2], -limit, limit)
  dh = jnp.clip(d[..., 3], -limit, limit)
  pw, ph = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
  px, py = boxes[..., 0] + 0.5 * pw, boxes[..., 1] + 0.5 * ph
  gx, gy = px + pw * d[..., 0], py + ph * d[..., 1]
  gw, gh = pw * jnp.exp(dw), ph * jnp.exp(dh)
  out = jnp.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], axis=-1)
  if max_shape is not None:
    h, w = max_shape
    out = jnp.clip(out, 0.0, jnp.asarray([w, h, w, h], out.dtype))
  return out


def box_iou(a: Array, b: Array) -> Array:
  """Pairwise IoU ``(N, M)`` of ``a (N, 4)`` and ``b (M, 4)``; 0 where a union is empty."""
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.clip(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area_a[:, None] + area_b[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def nms(boxes: Array, scores: Array, iou_threshold: float, max_out: int,
        ids: Array | None = None, valid: Array | None = None) -> tuple[Array, Array]:
  """Greedy NMS: ``(indices (max_out,), kept (max_out,) bool)``, best score first.

  A box is dropped when its IoU with a kept, higher-scoring box of the same ``ids`` exceeds
  ``iou_threshold`` (mmcv: ``> thr``). ``valid`` masks candidates out (padding). Slots past
  the number kept point at index 0 with ``kept`` False.
  """
  n = boxes.shape[0]
  valid = jnp.ones((n,), bool) if valid is None else valid
  order = jnp.argsort(-jnp.where(valid, scores, -jnp.inf), stable=True)
  b = boxes[order]
  alive = valid[order]
  over = box_iou(b, b) > iou_threshold
  if ids is not None:
    same = ids[order][:, None] == ids[order][None, :]
    over = over & same

  def body(i, alive):
    # box i suppresses the later boxes it overlaps, if it is still alive itself
    later = jnp.arange(n) > i
    return alive & ~(over[i] & later & alive[i])

  alive = jax.lax.fori_loop(0, n, body, alive)
  rank = jnp.cumsum(alive) - 1
  slots = jnp.where(alive & (rank < max_out), rank, max_out)
  picked = jnp.zeros((max_out + 1,), jnp.int32).at[slots].set(order.astype(jnp.int32))
  kept = jnp.zeros((max_out + 1,), bool).at[slots].set(alive)
  return picked[:max_out], kept[:max_out]


def _axis_weights(start: Array, extent: Array, grid: Array, out: int, size: int,
                  max_grid: int) -> Array:
  """RoIAlign's sampling along one axis as a matrix ``(R, out, size)``: bin ``p`` averages
  ``grid`` bilinear samples at ``start + (p + (i + 0.5) / grid) * extent / out`` (mmcv:
  a sample beyond ``[-1, size]`` is 0, one below 0 reads 0, one at or past ``size - 1`` reads
  the last row)."""
  bin_size = extent / out
  p = jnp.arange(out, dtype=start.dtype)[None, :, None]
  i = jnp.arange(max_grid, dtype=start.dtype)[None, None, :]
  g = jnp.maximum(grid, 1).astype(start.dtype)[:, None, None]
  y = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g
  use = (i < grid[:, None, None]) & (y >= -1.0) & (y <= size)
  y = jnp.maximum(y, 0.0)
  low = jnp.floor(y).astype(jnp.int32)
  last = low >= size - 1
  low = jnp.where(last, size - 1, low)
  high = jnp.where(last, size - 1, low + 1)
  y = jnp.where(last, low.astype(y.dtype), y)
  frac = y - low
  rows = jnp.arange(size)
  w = ((1 - frac)[..., None] * (rows == low[..., None]) + frac[..., None] * (rows == high[..., None]))
  w = w * use[..., None]
  return jnp.sum(w, axis=2) / g


def roi_align(features: Array, rois: Array, batch_index: Array, output_size: int,
              spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True,
              max_grid: int = 8) -> Array:
  """mmcv ``RoIAlign`` on NHWC ``features (N, H, W, C)``: ``(R, out, out, C)``.

  ``rois (R, 4)`` are input-pixel boxes of images ``batch_index (R,)``, mapped by
  ``spatial_scale`` (1 / the level's stride); ``aligned`` shifts by half a pixel (mmcv's
  default, the Mask R-CNN configs'). ``sampling_ratio = 0`` samples ``ceil(roi / out)`` points
  per bin and axis, as mmcv, up to ``max_grid`` (static; exact while no RoI needs more).
  Separable: two interpolation matrices per RoI contract the image's rows and columns.
  """
  n, h, w, _ = features.shape
  wy, wx = _roi_weights(rois, output_size, spatial_scale, sampling_ratio, aligned, max_grid,
                        h, w)
  f = features[jnp.clip(batch_index, 0, n - 1)].astype(jnp.float32)
  out = jnp.einsum("rpy,ryxc->rpxc", wy, f)
  return jnp.einsum("rqx,rpxc->rpqc", wx, out).astype(features.dtype)


def roi_align_grouped(features: Array, rois: Array, output_size: int, spatial_scale: float,
                      sampling_ratio: int = 0, aligned: bool = True, max_grid: int = 8) -> Array:
  """``roi_align`` for RoIs grouped by image: ``features (G, H, W, C)``, ``rois (G, R, 4)`` (RoI
  ``r`` of image ``g``) -> ``(G, R, out, out, C)``. The same arithmetic, without copying an
  image's features per RoI: the interpolation matrices contract the image directly."""
  g_, r_ = rois.shape[:2]
  _, h, w, _ = features.shape
  wy, wx = _roi_weights(rois.reshape(-1, 4), output_size, spatial_scale, sampling_ratio,
                        aligned, max_grid, h, w)
  wy = wy.reshape(g_, r_, output_size, h)
  wx = wx.reshape(g_, r_, output_size, w)
  f = features.astype(jnp.float32)
  out = jnp.einsum("grpy,gyxc->grpxc", wy, f)
  return jnp.einsum("grqx,grpxc->grpqc", wx, out).astype(features.dtype)


def _roi_weights(rois, output_size, spatial_scale, sampling_ratio, aligned, max_grid, h, w):
  offset = 0.5 if aligned else 0.0
  boxes_f = rois.astype(jnp.float32) * spatial_scale - offset
  x1, y1, x2, y2 = (boxes_f[:, k] for k in range(4))
  rw, rh = x2 - x1, y2 - y1
  if not aligned:
    rw, rh = jnp.maximum(rw, 1.0), jnp.maximum(rh, 1.0)
  if sampling_ratio > 0:
    gw = gh = jnp.full(rois.shape[:1], sampling_ratio, jnp.int32)
    max_grid = sampling_ratio
  else:
    gh = jnp.minimum(jnp.ceil(rh / output_size), max_grid).astype(jnp.int32)
    gw = jnp.minimum(jnp.ceil(rw / output_size), max_grid).astype(jnp.int32)
  return (_axis_weights(y1, rh, gh, output_size, h, max_grid),
          _axis_weights(x1, rw, gw, output_size, w, max_grid))


def multi_level_roi_align_grouped(levels: Sequence[Array], rois: Array, strides: Sequence[float],
                                  output_size: int, sampling_ratio: int = 0,
                                  max_grid: int = 8) -> Array:
  """``multi_level_roi_align`` for RoIs grouped by image (``rois (G, R, 4)`` on levels of
  ``G`` images): ``(G, R, out, out, C)``. A level no RoI maps to is skipped (``lax.cond``; the
  small objects of a scene never reach the coarse levels)."""
  which = map_roi_levels(rois.reshape(-1, 4), len(strides)).reshape(rois.shape[:2])
  shape = rois.shape[:2] + (output_size, output_size, levels[0].shape[-1])
  out = jnp.zeros(shape, levels[0].dtype)
  for k, (feat, stride) in enumerate(zip(levels, strides, strict=False)):
    pick = which == k

    def pool(feat, rois, pick=pick, stride=stride):
      pooled = roi_align_grouped(feat, rois, output_size, 1.0 / stride, sampling_ratio, True,
                                 max_grid)
      return jnp.where(pick[..., None, None, None], pooled, 0).astype(feat.dtype)

    out = out + jax.lax.cond(jnp.any(pick), pool,
                             lambda feat, rois: jnp.zeros(shape, feat.dtype), feat, rois)
  return out


def map_roi_levels(rois: Array, num_levels: int, finest_scale: float = 56.0) -> Array:
  """mmdet ``SingleRoIExtractor.map_roi_levels``: level ``floor(log2(sqrt(area) / 56 + 1e-6))``
  clamped to ``[0, num_levels - 1]``."""
  scale = jnp.sqrt(jnp.maximum((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]), 0.0))
  level = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
  return jnp.clip(level, 0, num_levels - 1).astype(jnp.int32)


def multi_level_roi_align(levels: Sequence[Array], rois: Array, batch_index: Array,
                          strides: Sequence[float], output_size: int, sampling_ratio: int = 0,
                          max_grid: int = 8) -> Array:
  """mmdet's ``SingleRoIExtractor``: each RoI pooled from the level ``map_roi_levels`` gives it,
  at ``1 / strides[level]`` (the declared strides: trap 1). Static shapes: every level pools
  every RoI and the mapped one is kept."""
  which = map_roi_levels(rois, len(strides))
  out = None
  for k, (feat, stride) in enumerate(zip(levels, strides, strict=False)):
    pooled = roi_align(feat, rois, batch_index, output_size, 1.0 / stride, sampling_ratio,
                       True, max_grid)
    pick = (which == k)[:, None, None, None]
    out = jnp.where(pick, pooled, 0 if out is None else out)
  return out


def rpn_proposals(rpn: Sequence[tuple[Array, Array]], level_anchors: Sequence[Array],
                  image_shape: tuple[int, int], nms_pre: int = 1000, max_per_img: int = 1000,
                  iou_threshold: float = 0.7, min_size: float = 0.0,
                  ) -> tuple[Array, Array, Array]:
  """The RPN's proposals for one image (mmdet ``RPNHead`` post-processing, static shapes).

  ``rpn``: per level ``(objectness (h, w, A), deltas (h, w, 4A))``; ``level_anchors``: the
  level's ``anchors(...)`` ``(h * w * A, 4)``. Per level: sigmoid scores, the ``nms_pre`` best,
  decoded (stds 1) and clipped to ``image_shape = (H, W)``, boxes not wider and taller than
  ``min_size`` dropped, NMS at ``iou_threshold`` within the level (mmdet's ``batched_nms`` by
  level); then the ``max_per_img`` best over all levels. Returns ``(boxes (max_per_img, 4),
  scores (max_per_img,), valid (max_per_img,))``, best first.
  """
  all_boxes, all_scores, all_valid = [], [], []
  for (cls, reg), anc in zip(rpn, level_anchors, strict=True):
    scores = jax.nn.sigmoid(cls.reshape(-1).astype(jnp.float32))
    deltas = reg.reshape(-1, 4).astype(jnp.float32)
    k = min(nms_pre, scores.shape[0])
    top, idx = jax.lax.top_k(scores, k)
    b = decode(jnp.asarray(anc)[idx], deltas[idx], max_shape=image_shape)
    ok = ((b[:, 2] - b[:, 0]) > min_size) & ((b[:, 3] - b[:, 1]) > min_size)
    keep, kept = nms(b, top, iou_threshold, min(k, max_per_img), valid=ok)
    all_boxes.append(b[keep])
    all_scores.append(jnp.where(kept, top[keep], -jnp.inf))
    all_valid.append(kept)
  boxes_c = jnp.concatenate(all_boxes)
  scores_c = jnp.concatenate(all_scores)
  valid_c = jnp.concatenate(all_valid)
  n = min(max_per_img, scores_c.shape[0])
  best, order = jax.lax.top_k(scores_c, n)
  out_boxes = jnp.zeros((max_per_img, 4), jnp.float32).at[:n].set(boxes_c[order])
  out_scores = jnp.zeros((max_per_img,), jnp.float32).at[:n].set(
      jnp.where(valid_c[order], best, 0.0))
  out_valid = jnp.zeros((max_per_img,), bool).at[:n].set(valid_c[order])
  return out_boxes, out_scores, out_valid


def assign_max_iou(priors: Array, prior_valid: Array, gt: Array, gt_valid: Array,
                   pos_iou: float, neg_iou: float, min_pos_iou: float,
                   match_low_quality: bool = True) -> tuple[Array, Array]:
  """mmdet ``MaxIoUAssigner`` at static shapes: ``(assigned (N,), max_iou (N,))`` where
  ``assigned`` is ``-1`` ignore, ``0`` negative, ``g + 1`` the prior matched to gt ``g``.

  Negative: best IoU in ``[0, neg_iou)``; positive: best IoU ``>= pos_iou``; with
  ``match_low_quality`` every gt (in order, later ones winning) also takes each prior whose IoU
  equals the gt's best, if that best is ``>= min_pos_iou``. Padded priors stay ``-1``; with no
  valid gt every valid prior is negative.
  """
  iou = box_iou(gt, priors)                                   # (G, N)
  iou = jnp.where(gt_valid[:, None] & prior_valid[None, :], iou, -1.0)
  max_iou = jnp.max(iou, axis=0)
  argmax = jnp.argmax(iou, axis=0)
  assigned = jnp.full(priors.shape[:1], -1, jnp.int32)
  assigned = jnp.where((max_iou >= 0) & (max_iou < neg_iou), 0, assigned)
  assigned = jnp.where(max_iou >= pos_iou, argmax + 1, assigned)
  if match_low_quality:
    gt_max = jnp.max(iou, axis=1)

    def body(g, assigned):
      hit = (iou[g] == gt_max[g]) & (gt_max[g] >= min_pos_iou) & gt_valid[g] & prior_valid
      return jnp.where(hit, g + 1, assigned)

    assigned = jax.lax.fori_loop(0, gt.shape[0], body, assigned)
  none = ~jnp.any(gt_valid)
  assigned = jnp.where(none & prior_valid, 0, assigned)
  return assigned, max_iou


def sample_random(key: Array, assigned: Array, num: int, pos_fraction: float
                  ) -> tuple[Array, Array, Array]:
  """mmdet ``RandomSampler`` (``neg_pos_ub=-1``) at static shapes: up to ``int(num *
  pos_fraction)`` positives drawn at random, negatives drawn to fill ``num``. Returns
  ``(indices (num,), is_positive (num,), valid (num,))``, positives first; slots past what
  there is to draw are invalid (index 0)."""
  n = assigned.shape[0]
  n_pos = int(num * pos_fraction)
  u = jax.random.uniform(key, (n,))
  extra = max(num - n, 0)                       # padding so that top_k always has num entries
  pos_score = jnp.concatenate([jnp.where(assigned > 0, u, -1.0), -jnp.ones((extra,))])
  neg_score = jnp.concatenate([jnp.where(assigned == 0, u, -1.0), -jnp.ones((extra,))])
  ps, pi = jax.lax.top_k(pos_score, n_pos)
  ns, ni = jax.lax.top_k(neg_score, num)
  pos_ok = ps >= 0
  neg_ok = (ns >= 0) & (jnp.arange(num) < num - jnp.sum(pos_ok))
  idx = jnp.concatenate([pi, ni])
  ok = jnp.concatenate([pos_ok, neg_ok])
  is_pos = jnp.concatenate([pos_ok, jnp.zeros((num,), bool)])
  order = jnp.argsort(~ok, stable=True)[:num]
  ok = ok[order]
  return jnp.where(ok, idx[order], 0).astype(jnp.int32), is_pos[order], ok
