"""Joint image + box + instance-mask transforms of the detection pipeline (addendum B.2, mmdet 3.x).

Pure numpy/PIL functions of a ``np.random.Generator`` on an ``Example``: a uint8 HWC image, its
boxes ``(x1, y1, x2, y2)`` in current pixels, the original annotation rows still present
(``keep``), and two 1-D index maps that give, for every current row / column, the original
pixel it samples (``-1``: padding). Every geometric op here (resize, flip, crop, pad) is
separable, so instance masks are never transformed step by step: they are gathered once, at
the end, from the original masks through the composed maps (``gather_masks``), which equals
resizing them nearest at every step (OpenCV's ``INTER_NEAREST``, what mmcv uses for masks:
``src = floor(dst * src_len / dst_len)``), flipping and cropping them with the image, padding
with 0 and finally subsampling at the mask stride (``canvas_mask[::s, ::s]``, the same
nearest convention).

The official COCO train pipeline (``coco_pipeline()``, B.2 table and trap 4):
``Resize((853, 512), keep_ratio)`` (``initial_resize``) -> ``RandomFlip(0.5)`` ->
``RandomChoice`` of (a) ``RandomChoiceResize`` short side in {480, 512, ..., 800}, long <= 1333
or (b) short side in {400, 500, 600} (long <= 4200, as DETR) -> ``RandomCrop(absolute_range,
(384, 600))`` (boxes clipped, empty ones dropped, masks cropped; a crop without boxes is kept,
``allow_negative_crop``) -> short side in {480..800}, long <= 1333; test ``Resize((1333, 800),
keep_ratio)``. Keep-ratio sizes are mmcv's ``rescale_size`` (``seg_augment.keep_ratio_size``:
factor ``min(long_max / long_side, short_max / short_side)``, size ``int(x * f + 0.5)``); boxes
are scaled by ``new / old`` per axis and clipped to the image, as mmdet's ``Resize``. Images
are resized bilinearly with PIL (which, unlike OpenCV, low-pass filters when downscaling, as
the segmentation pipeline does).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from spikejax.data import transforms as T
from spikejax.data.seg_augment import keep_ratio_size

Scale = tuple[int, int]


def _pairs(v) -> tuple[Scale, ...]:
  return tuple(tuple(int(x) for x in s) for s in v)


@dataclasses.dataclass(frozen=True)
class DetPipelineConfig:
  """The detection pipeline of one data set (defaults: no random op, images as stored).

  Scales are ``(long, short)`` pairs of mmcv's keep-ratio resize (the order does not matter:
  the larger number bounds the long side, the smaller the short side).

  Attributes:
    max_instances: M, the instance rows of every example (static shapes); more instances:
      the first M in annotation order are kept and the rest counted
      (``DetectionDataset.truncated_instances``).
    mask_stride: s; ``gt_masks`` are ``[M, H // s, W // s]``, sampled at ``(i * s, j * s)``.
    masks: produce ``gt_masks`` (COCO: needs the instance masks, in the records or in the
      annotation file); False: boxes only, no ``gt_masks`` key.
    canvas: ``(H, W)`` every image is padded to (bottom/right); None: the data set's input
      size (``get_dataset(image_size=S)`` makes it ``S x S``).
    flip: horizontal flip with probability 0.5 (train).
    ratio_range: a random keep-ratio resize of the stored image by a factor drawn from this
      range (train; ``(1, 1)``: off). An image larger than the canvas is then randomly
      cropped to it (boxes clipped, empty ones dropped).
    initial_resize: train: first resize every image to fit ``initial_scale`` (trap 4).
    initial_scale: the scale of ``initial_resize``.
    train_scales: train ``RandomChoiceResize`` scales (branch (a), and the last resize of
      branch (b)); empty: none.
    crop_scales: the resize scales of branch (b) before its crop; empty: no branch (b) (no
      ``RandomChoice``, branch (a) always).
    crop_size: branch (b)'s ``RandomCrop(crop_type='absolute_range')`` range: height and width
      drawn independently from ``[min(side, lo), min(side, hi)]``.
    eval_scale: eval keep-ratio resize; None: images as stored.
    annotations_dir: the directory of COCO's ``instances_{train,val}2017.json`` (masks);
      None: ``$COCO_ANNOTATIONS_DIR``, else ``<tfds data dir>/downloads/manual/annotations``.
  """
  max_instances: int = 100
  mask_stride: int = 1
  masks: bool = True
  canvas: Scale | None = None
  flip: bool = False
  ratio_range: tuple[float, float] = (1.0, 1.0)
  initial_resize: bool = False
  initial_scale: Scale = (853, 512)
  train_scales: tuple[Scale, ...] = ()
  crop_scales: tuple[Scale, ...] = ()
  crop_size: Scale = (384, 600)
  eval_scale: Scale | None = None
  annotations_dir: str | None = None

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    for k in ("canvas", "eval_scale"):
      if getattr(self, k) is not None:
        set_(k, tuple(int(v) for v in getattr(self, k)))
    set_("initial_scale", tuple(int(v) for v in self.initial_scale))
    set_("crop_size", tuple(int(v) for v in self.crop_size))
    set_("ratio_range", tuple(float(v) for v in self.ratio_range))
    set_("train_scales", _pairs(self.train_scales))
    set_("crop_scales", _pairs(self.crop_scales))
    if self.max_instances < 1:
      raise ValueError(f"max_instances must be >= 1, got {self.max_instances}")
    if self.mask_stride < 1:
      raise ValueError(f"mask_stride must be >= 1, got {self.mask_stride}")
    if self.ratio_range[0] <= 0 or self.ratio_range[0] > self.ratio_range[1]:
      raise ValueError(f"ratio_range must be 0 < low <= high, got {self.ratio_range}")
    if self.crop_scales and not self.train_scales:
      raise ValueError("crop_scales (branch (b)) need train_scales (its final resize)")
    if not 1 <= self.crop_size[0] <= self.crop_size[1]:
      raise ValueError(f"crop_size must be 1 <= low <= high, got {self.crop_size}")
    for k in ("canvas", "eval_scale", "initial_scale"):
      v = getattr(self, k)
      if v is not None and (len(v) != 2 or min(v) < 1):
        raise ValueError(f"{k} must be two sizes >= 1, got {v}")
    for k in ("train_scales", "crop_scales"):
      if any(len(s) != 2 or min(s) < 1 for s in getattr(self, k)):
        raise ValueError(f"{k} must be (long, short) pairs >= 1, got {getattr(self, k)}")

  @classmethod
  def none(cls, base: "DetPipelineConfig | None" = None) -> "DetPipelineConfig":
    """No random op; ``base``'s instance rows, masks, canvas, eval resize and annotations
    kept (the eval pipeline of a train one)."""
    base = base or cls()
    return cls(max_instances=base.max_instances, mask_stride=base.mask_stride,
               masks=base.masks, canvas=base.canvas, eval_scale=base.eval_scale,
               annotations_dir=base.annotations_dir)


def coco_pipeline(factor: float = 1.0, **overrides) -> DetPipelineConfig:
  """The official COCO pipeline (module docstring) with every size multiplied by ``factor``
  (smoke runs: e.g. 0.25 with a 352 canvas), ``overrides`` replacing fields. The canvas is
  ``1344 x 1344`` (x factor, rounded up to a multiple of 32): the longest side 1333 of both
  orientations fits; M = 100, mask stride 4."""
  f = float(factor)
  r = lambda v: max(1, int(round(v * f)))
  side = 32 * int(np.ceil(1344 * f / 32))
  cfg = dict(max_instances=100, mask_stride=4, canvas=(side, side), flip=True,
             initial_resize=True, initial_scale=(r(853), r(512)),
             train_scales=tuple((r(1333), r(s)) for s in range(480, 801, 32)),
             crop_scales=tuple((r(4200), r(s)) for s in (400, 500, 600)),
             crop_size=(r(384), r(600)), eval_scale=(r(1333), r(800)))
  cfg.update(overrides)
  return DetPipelineConfig(**cfg)


def det_pipeline_config(augment, default: DetPipelineConfig) -> DetPipelineConfig:
  """``'default'`` -> ``default``; ``None``/``'none'`` -> no random op; a
  ``DetPipelineConfig`` as is; a mapping -> ``default`` with those fields replaced (unknown
  ones: ValueError)."""
  if isinstance(augment, DetPipelineConfig):
    return augment
  if augment == "default":
    return default
  if augment is None or augment == "none":
    return DetPipelineConfig.none(default)
  if isinstance(augment, Mapping):
    fields = {f.name for f in dataclasses.fields(DetPipelineConfig)}
    unknown = sorted(set(augment) - fields)
    if unknown:
      raise ValueError(f"unknown detection augment option(s) {unknown}; options are "
                       f"{sorted(fields)}")
    return dataclasses.replace(default, **dict(augment))
  raise ValueError(f"augment must be 'default', 'none', a DetPipelineConfig or a mapping, got "
                   f"{augment!r}")


# --------------------------------------------------------------------------- the example


@dataclasses.dataclass
class Example:
  """One example in flight. ``image`` uint8 ``[h, w, C]``; ``boxes`` float32 ``[n, 4]``
  ``(x1, y1, x2, y2)`` in current pixels; ``keep`` int ``[n]``: the original annotation row of
  each box (ascending); ``ymap`` / ``xmap`` int ``[h]`` / ``[w]``: the original row / column
  each current one samples (-1: padding); ``scale`` ``(sy, sx)``: current pixels per original
  pixel (resizes only)."""
  image: np.ndarray
  boxes: np.ndarray
  keep: np.ndarray
  ymap: np.ndarray
  xmap: np.ndarray
  scale: tuple[float, float] = (1.0, 1.0)

  @classmethod
  def new(cls, image: np.ndarray, boxes: np.ndarray) -> "Example":
    h, w = image.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return cls(image=image, boxes=boxes, keep=np.arange(len(boxes)),
               ymap=np.arange(h), xmap=np.arange(w))

  @property
  def hw(self) -> tuple[int, int]:
    return self.image.shape[0], self.image.shape[1]


def _nearest(n_new: int, n_old: int) -> np.ndarray:
  """OpenCV ``INTER_NEAREST`` source indices of a resize from ``n_old`` to ``n_new``."""
  return np.minimum(np.floor(np.arange(n_new) * (n_old / n_new)).astype(np.int64), n_old - 1)


def resize(ex: Example, size: tuple[int, int]) -> Example:
  """Resize to ``size`` ``(h, w)``: image bilinear, boxes scaled per axis and clipped to the
  new image (mmdet ``Resize``), masks nearest."""
  h, w = ex.hw
  nh, nw = int(size[0]), int(size[1])
  if (nh, nw) == (h, w):
    return ex
  sy, sx = nh / h, nw / w
  boxes = ex.boxes * np.asarray([sx, sy, sx, sy], np.float32)
  boxes = np.clip(boxes, 0, np.asarray([nw, nh, nw, nh], np.float32))
  return Example(image=T.resize(ex.image, (nh, nw), "bilinear"), boxes=boxes, keep=ex.keep,
                 ymap=ex.ymap[_nearest(nh, h)], xmap=ex.xmap[_nearest(nw, w)],
                 scale=(ex.scale[0] * sy, ex.scale[1] * sx))


def rescale(ex: Example, scale: Scale) -> Example:
  """mmcv keep-ratio resize to fit ``scale`` (long, short); also enlarges."""
  return resize(ex, keep_ratio_size(*ex.hw, scale))


def random_choice_resize(ex: Example, rng: np.random.Generator,
                         scales: tuple[Scale, ...]) -> Example:
  """mmcv ``RandomChoiceResize(scales, keep_ratio=True)``: one of ``scales`` uniformly."""
  return rescale(ex, scales[int(rng.integers(len(scales)))])


def random_ratio_resize(ex: Example, rng: np.random.Generator,
                        ratio_range: tuple[float, float]) -> Example:
  """Keep-ratio resize by a factor uniform in ``ratio_range`` (mmdet ``RandomResize`` of the
  stored size)."""
  r = rng.uniform(*ratio_range)
  h, w = ex.hw
  return resize(ex, (max(1, int(h * r + 0.5)), max(1, int(w * r + 0.5))))


def flip(ex: Example) -> Example:
  """Horizontal flip: ``x1' = w - x2``, ``x2' = w - x1`` (mmdet ``RandomFlip``)."""
  w = ex.hw[1]
  boxes = ex.boxes.copy()
  boxes[:, 0], boxes[:, 2] = w - ex.boxes[:, 2], w - ex.boxes[:, 0]
  return dataclasses.replace(ex, image=ex.image[:, ::-1], boxes=boxes, xmap=ex.xmap[::-1])


def crop(ex: Example, y: int, x: int, h: int, w: int) -> Example:
  """The crop ``[y, y + h) x [x, x + w)`` (clipped to the image): boxes translated and clipped
  to it, boxes left empty (zero width or height) dropped with their masks (mmdet
  ``RandomCrop``, ``bbox_clip_border``)."""
  H, W = ex.hw
  y0, x0 = max(0, int(y)), max(0, int(x))
  y1, x1 = min(H, int(y) + int(h)), min(W, int(x) + int(w))
  boxes = ex.boxes - np.asarray([x0, y0, x0, y0], np.float32)
  boxes = np.clip(boxes, 0, np.asarray([x1 - x0, y1 - y0] * 2, np.float32))
  ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return dataclasses.replace(ex, image=ex.image[y0:y1, x0:x1], boxes=boxes[ok],
                             keep=ex.keep[ok], ymap=ex.ymap[y0:y1], xmap=ex.xmap[x0:x1])


def random_crop(ex: Example, rng: np.random.Generator, size: tuple[int, int]) -> Example:
  """A crop of ``size`` ``(h, w)`` (the whole extent on a smaller side) at a uniform offset
  (mmdet ``RandomCrop``'s ``margin = side - crop``, ``offset = randint(0, margin + 1)``)."""
  H, W = ex.hw
  h, w = min(H, int(size[0])), min(W, int(size[1]))
  oy = int(rng.integers(0, H - h + 1))
  ox = int(rng.integers(0, W - w + 1))
  return crop(ex, oy, ox, h, w)


def absolute_range_size(hw: tuple[int, int], rng: np.random.Generator,
                        crop_range: tuple[int, int]) -> tuple[int, int]:
  """mmdet ``RandomCrop(crop_type='absolute_range')``'s crop size: height and width each
  ``randint(min(side, lo), min(side, hi) + 1)``."""
  lo, hi = crop_range
  h = int(rng.integers(min(hw[0], lo), min(hw[0], hi) + 1))
  w = int(rng.integers(min(hw[1], lo), min(hw[1], hi) + 1))
  return h, w


def pad(ex: Example, canvas: tuple[int, int]) -> Example:
  """Bottom/right pad to ``canvas`` ``(H, W)`` (mmdet ``Pad``): image 0 (the pipeline zeroes
  padded pixels after normalising), maps -1 (masks 0)."""
  h, w = ex.hw
  H, W = canvas
  if h > H or w > W:
    raise ValueError(f"an image of {h}x{w} does not fit the {H}x{W} canvas; raise the canvas "
                     "(augment.canvas) or lower augment.eval_scale")
  image = np.zeros((H, W, ex.image.shape[-1]), np.uint8)
  image[:h, :w] = ex.image
  fill = lambda m, n: np.concatenate([m, np.full((n - len(m),), -1, np.int64)])
  return dataclasses.replace(ex, image=image, ymap=fill(ex.ymap, H), xmap=fill(ex.xmap, W))


def gather_masks(masks: np.ndarray, ex: Example, stride: int = 1) -> np.ndarray:
  """The original instance masks ``masks`` ``[k, h0, w0]`` (rows ``ex.keep``, in that order)
  through ``ex``'s maps, sampled every ``stride`` pixels: uint8 ``[k, len(ymap) // stride,
  len(xmap) // stride]``, 0 on padding."""
  ys = ex.ymap[::stride][:len(ex.ymap) // stride]
  xs = ex.xmap[::stride][:len(ex.xmap) // stride]
  out = np.zeros((len(masks), len(ys), len(xs)), np.uint8)
  vy, vx = ys >= 0, xs >= 0   # padding only at the bottom/right: a prefix is real
  ny, nx = int(vy.sum()), int(vx.sum())
  if len(masks) and ny and nx:
    out[:, :ny, :nx] = np.asarray(masks)[:, ys[:ny]][:, :, xs[:nx]] != 0
  return out


# --------------------------------------------------------------------------- pipelines


def train_example(ex: Example, rng: np.random.Generator, cfg: DetPipelineConfig,
                  canvas: tuple[int, int]) -> Example:
  """The train transform (module docstring), padded to ``canvas``."""
  if cfg.initial_resize:
    ex = rescale(ex, cfg.initial_scale)
  if cfg.ratio_range != (1.0, 1.0):
    ex = random_ratio_resize(ex, rng, cfg.ratio_range)
  if cfg.flip and rng.random() < 0.5:
    ex = flip(ex)
  if cfg.train_scales:
    if cfg.crop_scales and int(rng.integers(2)) == 1:   # RandomChoice: branch (b)
      ex = random_choice_resize(ex, rng, cfg.crop_scales)
      ex = random_crop(ex, rng, absolute_range_size(ex.hw, rng, cfg.crop_size))
    ex = random_choice_resize(ex, rng, cfg.train_scales)
  if ex.hw[0] > canvas[0] or ex.hw[1] > canvas[1]:
    ex = random_crop(ex, rng, canvas)
  return pad(ex, canvas)


def eval_example(ex: Example, cfg: DetPipelineConfig, canvas: tuple[int, int]) -> Example:
  """The eval transform: keep-ratio resize to ``eval_scale`` (if any), pad to ``canvas``."""
  if cfg.eval_scale is not None:
    ex = rescale(ex, cfg.eval_scale)
  return pad(ex, canvas)
