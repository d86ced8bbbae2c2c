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
