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
