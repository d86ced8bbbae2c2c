"""Fashion-MNIST scenes: canvases of 1 to 4 garments, with per-pixel classes, instance masks and
boxes, for the dense-prediction benchmarks (segmentation, detection) that run on this machine.

A scene is a pure function of ``(garments, seed, index)``: the generator draws, from
``numpy.random.default_rng([seed, index])``, how many garments (1 .. ``max_objects``), and for
each one a garment of the given split, a scale (its 28 px side becomes ``28 * scale``, bilinear)
and a position where it lies wholly inside the canvas. Garments are pasted in order, so later
ones occlude earlier ones. A garment's own pixels (its resized intensity above
``MASK_THRESHOLD``) are its mask: the per-pixel class map is ``1 + class`` there and 0
(background) elsewhere, every instance keeps only its visible pixels, and its box is their
extent. Instances left with fewer than ``MIN_VISIBLE`` visible pixels are not instances (their
pixels keep their class in the class map). Train scenes are
built from the train split's garments and test scenes from the test split's only (the caller
passes the split's arrays).

Every output has a fixed shape: instances are padded to ``max_objects`` with ``valid`` False,
class -1, an empty mask and a zero box.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MASK_THRESHOLD = 25          # of 255: a resized garment pixel above this belongs to it
MIN_VISIBLE = 16             # pixels; an instance occluded below this is dropped
NUM_CLASSES = 11             # background (0) + the 10 Fashion-MNIST classes (1 + label)


@dataclasses.dataclass(frozen=True)
class Scene:
  """One scene. ``image`` ``(S, S, 1)`` uint8; ``semantic`` ``(S, S)`` uint8 in 0..10 (0:
  background); ``masks`` ``(M, S, S)`` bool (visible pixels); ``boxes`` ``(M, 4)`` float32
  ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive; ``classes`` ``(M,)`` int32 Fashion-MNIST
  labels (-1: padding); ``valid`` ``(M,)`` bool; M = ``max_objects``, visible instances first,
  in paste order."""
  image: np.ndarray
  semantic: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray
  valid: np.ndarray


def _resize(garment: np.ndarray, side: int) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(garment).resize((side, side), Image.BILINEAR), np.uint8)


def make_scene(garments: np.ndarray, labels: np.ndarray, *, seed: int, index: int,
               size: int = 96, max_objects: int = 4, scale: tuple[float, float] = (0.8, 2.0)
               ) -> Scene:
  """The scene ``index`` of ``seed`` built from ``garments`` ``(N, 28, 28)`` uint8 with their
  ``labels`` ``(N,)`` (see the module docstring)."""
  garments = np.asarray(garments, np.uint8).reshape(len(garments), 28, 28)
  if int(round(28 * scale[1])) > size:
    raise ValueError(f"scale up to {scale[1]} makes a garment {round(28 * scale[1])} px, more "
                     f"than the {size} px canvas; lower the scale or enlarge the canvas.")
  rng = np.random.default_rng([int(seed), int(index)])
  n = int(rng.integers(1, max_objects + 1))
  image = np.zeros((size, size), np.uint8)
  owner = np.full((size, size), -1, np.int32)       # which pasted garment each pixel shows
  pasted = []
  for k in range(n):
    j = int(rng.integers(len(garments)))
    side = int(round(28 * rng.uniform(*scale)))
    y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    g = _resize(garments[j], side)
    own = g > MASK_THRESHOLD
    image[y:y + side, x:x + side][own] = g[own]
    owner[y:y + side, x:x + side][own] = k
    pasted.append(int(labels[j]))
  masks = np.zeros((max_objects, size, size), bool)
  boxes = np.zeros((max_objects, 4), np.float32)
  classes = np.full((max_objects,), -1, np.int32)
  semantic = np.zeros((size, size), np.uint8)
  m = 0
  for k, label in enumerate(pasted):
    visible = owner == k
    semantic[visible] = 1 + label
    if visible.sum() < MIN_VISIBLE:   # a sliver: still its class per pixel, not an instance
      continue
    ys, xs = np.nonzero(visible)
    masks[m], classes[m] = visible, label
    boxes[m] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    m += 1
  return Scene(image=image[..., None], semantic=semantic, masks=masks, boxes=boxes,
               classes=classes, valid=classes >= 0)
