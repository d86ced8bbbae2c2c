"""Detector box operations (mmdet semantics): anchors, delta coder, IoU, fixed-size NMS."""

import jax
import jax.numpy as jnp
import numpy as np

from spikejax.models import boxes


def test_anchors_match_mmdets_generator():
  base = boxes.base_anchors(4, (0.5, 1.0, 2.0), (8,))
  r = np.sqrt(2.0)
  np.testing.assert_allclose(base, [[-16 * r, -8 * r, 16 * r, 8 * r], [-16, -16, 16, 16],
                                    [-8 * r, -16 * r, 8 * r, 16 * r]], rtol=1e-12)
  a = boxes.anchors((2, 3), 16, (1.0,), (8,))       # one anchor per location, (y, x) order
  centres = np.stack([(a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2], -1)
  np.testing.assert_array_equal(centres, [[0, 0], [16, 0], [32, 0], [0, 16], [16, 16], [32, 16]])
  assert boxes.anchors((5, 7), 8).shape == (5 * 7 * 3, 4)
  full = boxes.anchors((5, 7), 8).reshape(5, 7, 3, 4)   # as the head's (h, w, A) flatten
  np.testing.assert_allclose(full[2, 4, 1], [32 - 32, 16 - 32, 32 + 32, 16 + 32])


def test_coder_round_trip_known_values_and_clamp():
  rng = np.random.default_rng(0)
  p = np.concatenate([rng.uniform(0, 50, (20, 2)), rng.uniform(60, 120, (20, 2))], 1)
  g = np.concatenate([rng.uniform(0, 50, (20, 2)), rng.uniform(60, 120, (20, 2))], 1)
  stds = (0.1, 0.1, 0.2, 0.2)
  d = boxes.encode(jnp.asarray(p), jnp.asarray(g), stds=stds)
  np.testing.assert_allclose(np.asarray(boxes.decode(jnp.asarray(p), d, stds=stds)), g,
                             rtol=1e-5, atol=1e-4)
  # a 10x20 box at (5, 10): dx = 0.5 moves the centre by half a width; dw = log 2 doubles it
  out = boxes.decode(jnp.asarray([[0.0, 0.0, 10.0, 20.0]]),
                     jnp.asarray([[0.5, 0.0, np.log(2.0), 0.0]]))
  np.testing.assert_allclose(np.asarray(out), [[0.0, 0.0, 20.0, 20.0]], atol=1e-5)
  big = boxes.decode(jnp.asarray([[0.0, 0.0, 10.0, 10.0]]), jnp.asarray([[0.0, 0.0, 50.0, 0.0]]))
  assert abs(float(big[0, 2] - big[0, 0]) - 10 * 1000 / 16) < 1e-3   # dw clamped
  clipped = boxes.decode(jnp.asarray([[0.0, 0.0, 10.0, 10.0]]), jnp.asarray([[0.0, 0, 2, 2]]),
                         max_shape=(30, 20))
  np.testing.assert_allclose(np.asarray(clipped), [[0, 0, 20, 30]])


def _greedy(b, s, thr, ids):
  order = sorted(range(len(s)), key=lambda i: (-s[i], i))
  keep = []
  iou = np.asarray(boxes.box_iou(jnp.asarray(b), jnp.asarray(b)))
  for i in order:
    if all(not (iou[i, j] > thr and ids[i] == ids[j]) for j in keep):
      keep.append(i)
  return keep


def test_nms_matches_a_greedy_reference_per_id_and_pads():
  rng = np.random.default_rng(1)
  xy = rng.uniform(0, 60, (40, 2))
  b = np.concatenate([xy, xy + rng.uniform(5, 30, (40, 2))], 1).astype(np.float32)
  s = rng.uniform(0, 1, 40).astype(np.float32)
  ids = rng.integers(0, 3, 40)
  valid = np.ones(40, bool)
  valid[::7] = False
  ref = _greedy(b[valid], s[valid], 0.5, ids[valid])
  ref = [np.flatnonzero(valid)[i] for i in ref]
  f = jax.jit(boxes.nms, static_argnums=(2, 3))
  idx, kept = f(jnp.asarray(b), jnp.asarray(s), 0.5, 64, jnp.asarray(ids), jnp.asarray(valid))
  idx, kept = np.asarray(idx), np.asarray(kept)
  assert kept.sum() == len(ref) and list(idx[kept]) == ref
  assert not kept[len(ref):].any() and (idx[len(ref):] == 0).all()
  idx3, kept3 = f(jnp.asarray(b), jnp.asarray(s), 0.5, 3, jnp.asarray(ids), jnp.asarray(valid))
  assert list(np.asarray(idx3)) == ref[:3] and np.asarray(kept3).all()   # truncated, in order
  # without ids every box competes
  ref_all = _greedy(b, s, 0.5, np.zeros(40))
  idx, kept = f(jnp.asarray(b), jnp.asarray(s), 0.5, 64)
  assert list(np.asarray(idx)[np.asarray(kept)]) == ref_all


def test_iou_known_values():
  a = jnp.asarray([[0.0, 0, 10, 10], [0, 0, 0, 0]])
  b = jnp.asarray([[5.0, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
  np.testing.assert_allclose(np.asarray(boxes.box_iou(a, b)),
                             [[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)


def _bilinear(f, y, x):
  """mmcv's bilinear_interpolate for one point of an (H, W, C) map."""
  h, w = f.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(f.shape[2])
  y, x = max(y, 0.0), max(x, 0.0)
  yl, xl = int(np.floor(y)), int(np.floor(x))
  if yl >= h - 1:
    yh = yl = h - 1
    y = float(yl)
  else:
    yh = yl + 1
  if xl >= w - 1:
    xh = xl = w - 1
    x = float(xl)
  else:
    xh = xl + 1
  ly, lx = y - yl, x - xl
  return ((1 - ly) * (1 - lx) * f[yl, xl] + (1 - ly) * lx * f[yl, xh] + ly * (1 - lx) * f[yh, xl]
          + ly * lx * f[yh, xh])


def _roi_align_loop(f, roi, out, scale, ratio, aligned):
  off = 0.5 if aligned else 0.0
  x1, y1, x2, y2 = [c * scale - off for c in roi]
  rw, rh = x2 - x1, y2 - y1
  if not aligned:
    rw, rh = max(rw, 1.0), max(rh, 1.0)
  bh, bw = rh / out, rw / out
  gh = ratio if ratio > 0 else int(np.ceil(rh / out))
  gw = ratio if ratio > 0 else int(np.ceil(rw / out))
  res = np.zeros((out, out, f.shape[2]))
  for p in range(out):
    for q in range(out):
      acc = np.zeros(f.shape[2])
      for iy in range(gh):
        y = y1 + p * bh + (iy + 0.5) * bh / gh
        for ix in range(gw):
          x = x1 + q * bw + (ix + 0.5) * bw / gw
          acc += _bilinear(f, y, x)
      res[p, q] = acc / max(gh * gw, 1)
  return res


def test_roi_align_matches_mmcvs_algorithm():
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
  rois = np.asarray([[0, 0, 40, 30], [3.3, 5.1, 20.7, 19.9], [-8, -6, 10, 4], [30, 20, 60, 50],
                     [10, 10, 10.5, 30], [0, 0, 0, 0]], np.float32)   # edges, outside, empty
  idx = np.asarray([0, 1, 0, 1, 1, 0])
  for ratio, aligned in ((0, True), (2, True), (0, False)):
    got = np.asarray(boxes.roi_align(jnp.asarray(feats), jnp.asarray(rois), jnp.asarray(idx), 4,
                                     0.25, ratio, aligned))
    for r in range(len(rois)):
      ref = _roi_align_loop(feats[idx[r]], rois[r], 4, 0.25, ratio, aligned)
      np.testing.assert_allclose(got[r], ref, rtol=1e-5, atol=1e-5, err_msg=f"{r} {ratio}")
  assert got.shape == (6, 4, 4, 3)


def test_roi_levels_and_multi_level_pooling():
  rois = jnp.asarray([[0, 0, 50, 50], [0, 0, 112, 112], [0, 0, 230, 230], [0, 0, 500, 500],
                      [0, 0, 2000, 2000]], jnp.float32)
  np.testing.assert_array_equal(np.asarray(boxes.map_roi_levels(rois, 4)), [0, 1, 2, 3, 3])
  rng = np.random.default_rng(3)
  levels = [jnp.asarray(rng.normal(size=(1, s, s, 2)), jnp.float32) for s in (32, 16, 8, 4)]
  strides = (4, 8, 16, 32)
  got = boxes.multi_level_roi_align(levels, rois, jnp.zeros(5, jnp.int32), strides, 3)
  for r, k in enumerate([0, 1, 2, 3, 3]):
    one = boxes.roi_align(levels[k], rois[r:r + 1], jnp.zeros(1, jnp.int32), 3, 1 / strides[k])
    np.testing.assert_allclose(np.asarray(got[r]), np.asarray(one[0]), rtol=1e-5, atol=1e-6)


def _proposals_reference(rpn, level_anchors, shape, nms_pre, max_per_img, thr):
  """mmdet's RPN post-processing in plain numpy: per-level top-k, decode, clip, NMS by level,
  the best max_per_img."""
  cand = []
  for lvl, ((cls, reg), anc) in enumerate(zip(rpn, level_anchors)):
    s = 1 / (1 + np.exp(-np.asarray(cls, np.float64).reshape(-1)))
    d = np.asarray(reg).reshape(-1, 4)
    idx = np.argsort(-s, kind="stable")[:nms_pre]
    b = np.asarray(boxes.decode(jnp.asarray(anc[idx]), jnp.asarray(d[idx]), max_shape=shape))
    ok = ((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)
    bi, si = b[ok], s[idx][ok]
    for i in _greedy(bi, si, thr, np.zeros(len(si))):
      cand.append((si[i], lvl, bi[i]))
  cand.sort(key=lambda c: -c[0])
  return cand[:max_per_img]


def test_rpn_proposals_match_the_reference():
  rng = np.random.default_rng(4)
  sizes, strides = [(8, 8), (4, 4)], [4, 8]
  rpn = [(jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32),
          jnp.asarray(rng.normal(0, 0.3, size=(h, w, 12)), jnp.float32)) for h, w in sizes]
  anc = [boxes.anchors(sz, st) for sz, st in zip(sizes, strides)]
  f = jax.jit(boxes.rpn_proposals, static_argnums=(2, 3, 4, 5))
  b, s, v = f(rpn, anc, (32, 32), 50, 40, 0.7)
  ref = _proposals_reference(rpn, anc, (32, 32), 50, 40, 0.7)
  n = int(np.asarray(v).sum())
  assert n == len(ref) and np.asarray(v)[:n].all() and not np.asarray(v)[n:].any()
  np.testing.assert_allclose(np.asarray(s)[:n], [c[0] for c in ref], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(b)[:n], np.stack([c[2] for c in ref]), rtol=1e-5,
                             atol=1e-4)
  assert b.shape == (40, 4) and (np.asarray(b)[:n, 2] <= 32).all()


def test_max_iou_assigner_rules():
  priors = jnp.asarray([[0, 0, 10, 10], [0, 0, 10, 8], [20, 20, 30, 30], [50, 50, 60, 60],
                        [0, 0, 10, 5], [100, 100, 110, 110]], jnp.float32)
  pv = jnp.asarray([True, True, True, True, True, False])
  gt = jnp.asarray([[0, 0, 10, 10], [22, 22, 32, 32], [0, 0, 1, 1]], jnp.float32)
  gv = jnp.asarray([True, True, False])
  assigned, max_iou = boxes.assign_max_iou(priors, pv, gt, gv, 0.7, 0.3, 0.3)
  # prior 0: IoU 1 with gt 0; prior 1: 0.8 -> gt 0; prior 2: IoU 64/136 = 0.47 with gt 1:
  # ignored by the thresholds but gt 1's best, so a low-quality match; prior 3: negative;
  # prior 4: IoU 0.5 with gt 0: ignore; prior 5: padding
  np.testing.assert_array_equal(np.asarray(assigned), [1, 1, 2, 0, -1, -1])
  np.testing.assert_allclose(float(max_iou[2]), 64 / 136, rtol=1e-6)
  a2, _ = boxes.assign_max_iou(priors, pv, gt, gv, 0.7, 0.3, 0.5)   # min_pos_iou above 0.47
  assert int(a2[2]) == -1
  a3, _ = boxes.assign_max_iou(priors, pv, gt, jnp.zeros(3, bool), 0.7, 0.3, 0.3)
  np.testing.assert_array_equal(np.asarray(a3), [0, 0, 0, 0, 0, -1])


def test_random_sampler_fractions_and_padding():
  assigned = jnp.asarray([1, 2, 0, 0, 0, -1, 3, 0, 0, 0, 0, 1], jnp.int32)
  idx, pos, ok = boxes.sample_random(jax.random.key(0), assigned, 6, 0.5)
  idx, pos, ok = np.asarray(idx), np.asarray(pos), np.asarray(ok)
  assert ok.all() and pos.sum() == 3 and len(set(idx)) == 6
  assert (np.asarray(assigned)[idx[pos]] > 0).all() and (np.asarray(assigned)[idx[~pos]] == 0).all()
  # few positives: negatives fill the rest
  few = jnp.asarray([0, 0, 0, 0, 0, 0, 2, -1], jnp.int32)
  idx, pos, ok = boxes.sample_random(jax.random.key(1), few, 5, 0.5)
  assert np.asarray(ok).all() and int(np.asarray(pos).sum()) == 1
  # not enough of either: the rest is padding
  idx, pos, ok = boxes.sample_random(jax.random.key(2), jnp.asarray([1, 0, -1], jnp.int32), 6,
                                     0.5)
  assert np.asarray(ok).sum() == 2 and np.asarray(pos).sum() == 1 and idx.shape == (6,)
  assert sorted(np.asarray(idx)[np.asarray(ok)]) == [0, 1]
  idx, pos, ok = boxes.sample_random(jax.random.key(3), jnp.asarray([1, 0], jnp.int32), 6, 0.5)
  assert np.asarray(ok).tolist() == [True, True, False, False, False, False]
  assert np.asarray(pos).tolist() == [True, False, False, False, False, False]
  # different keys draw different subsets
  draws = {tuple(sorted(np.asarray(boxes.sample_random(jax.random.key(k), assigned, 4, 0.5)[0])))
           for k in range(8)}
  assert len(draws) > 1


def test_grouped_roi_align_equals_the_flat_one():
  B = boxes
  rng = np.random.default_rng(4)
  levels = [jnp.asarray(rng.normal(size=(3, 16 // 2 ** k, 20 // 2 ** k, 5)), jnp.float32)
            for k in range(3)]
  xy = rng.uniform(0, 50, size=(3, 6, 2))
  wh = rng.uniform(2, 60, size=(3, 6, 2))
  rois = jnp.asarray(np.concatenate([xy, xy + wh], -1), jnp.float32)
  strides = (4, 8, 16)
  got = B.multi_level_roi_align_grouped(levels, rois, strides, 7)
  flat = B.multi_level_roi_align(levels, rois.reshape(-1, 4), jnp.repeat(jnp.arange(3), 6),
                                 strides, 7)
  np.testing.assert_allclose(np.asarray(got).reshape(flat.shape), np.asarray(flat), atol=1e-5)
