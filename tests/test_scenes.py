"""Fashion-MNIST scenes (spikejax/data/scenes.py): deterministic, consistent labels."""

import numpy as np
import pytest

from spikejax.data import scenes


def _garments(n=12, seed=0):
  rng = np.random.default_rng(seed)
  g = np.zeros((n, 28, 28), np.uint8)
  g[:, 4:24, 6:22] = rng.integers(60, 256, (n, 20, 16))      # a solid block per garment
  return g, np.arange(n) % 10


def test_a_scene_is_a_function_of_seed_and_index():
  g, y = _garments()
  a = scenes.make_scene(g, y, seed=3, index=7)
  b = scenes.make_scene(g, y, seed=3, index=7)
  for f in ("image", "semantic", "masks", "boxes", "classes"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  c = scenes.make_scene(g, y, seed=3, index=8)
  d = scenes.make_scene(g, y, seed=4, index=7)
  assert not np.array_equal(a.image, c.image) and not np.array_equal(a.image, d.image)


@pytest.mark.parametrize("index", range(40))
def test_labels_agree_with_the_pixels(index):
  g, y = _garments()
  s = scenes.make_scene(g, y, seed=0, index=index, size=96)
  assert s.image.shape == (96, 96, 1) and s.masks.shape == (4, 96, 96)
  assert 1 <= s.valid.sum() <= 4 and list(s.valid) == sorted(s.valid, reverse=True)
  union = np.zeros((96, 96), bool)
  for m, box, c, v in zip(s.masks, s.boxes, s.classes, s.valid):
    if not v:
      assert c == -1 and not m.any() and not box.any()
      continue
    assert not (union & m).any()                    # visible pixels belong to one instance
    union |= m
    assert (s.semantic[m] == 1 + c).all()           # the class map carries its class
    x0, y0, x1, y1 = box.astype(int)
    ys, xs = np.nonzero(m)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
  garment = s.image[..., 0] > scenes.MASK_THRESHOLD
  np.testing.assert_array_equal(s.semantic > 0, garment)   # the class map is the garments' pixels
  assert (s.semantic[~garment] == 0).all() and (s.image[~garment] == 0).all()


def test_later_garments_occlude_earlier_ones():
  g = np.full((2, 28, 28), 200, np.uint8)
  y = np.array([3, 7])
  found = False
  for index in range(200):
    s = scenes.make_scene(g, y, seed=1, index=index, size=64, max_objects=2,
                          scale=(1.0, 1.0))
    if s.valid.sum() == 2 and (s.boxes[0, :2] < s.boxes[1, 2:]).all() and \
        (s.boxes[1, :2] < s.boxes[0, 2:]).all():
      # two overlapping 28 px squares: the first shows its square less the second's
      assert s.masks[1].sum() == 28 * 28               # the last one is whole
      assert s.masks[0].sum() < 28 * 28
      assert s.masks[0].sum() + s.masks[1].sum() == (s.semantic > 0).sum()
      found = True
      break
  assert found


def test_a_garment_larger_than_the_canvas_is_refused():
  g, y = _garments()
  with pytest.raises(ValueError, match="more than the 48 px canvas"):
    scenes.make_scene(g, y, seed=0, index=0, size=48, scale=(1.0, 2.0))
