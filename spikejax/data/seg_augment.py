"""Joint image + label-map transforms of the segmentation pipeline (addendum B.3, mmseg 1.x).

Pure numpy/PIL functions of a ``np.random.Generator``; images uint8 HWC, label maps uint8/int
HW (255 = ignore). The official ADE20K train pipeline is ``random_resize`` (scale (2048, 512),
ratio 0.5-2.0, keep ratio) -> ``random_crop`` (512, ``cat_max_ratio`` 0.75) -> ``random_flip``
-> ``photometric_distortion`` -> pad to the crop (image 0 after normalisation, label 255);
``reduce_zero_label`` maps label 0 to 255 and every other label ``k`` to ``k - 1``. Eval:
``rescale_keep_ratio`` to (2048, 512), labels resized with the image (nearest).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from spikejax.data import transforms as T

IGNORE_INDEX = 255


@dataclasses.dataclass(frozen=True)
class SegPipelineConfig:
  """The segmentation pipeline of one data set (defaults: no random op, images as stored).

  Attributes:
    reduce_zero_label: label 0 (ADE20K's "other") -> 255 (ignored), ``k`` -> ``k - 1``.
    train_scale: ``(long, short)`` of the train ``random_resize`` (None: no resize).
    ratio_range: the random factor range of ``train_scale``.
    crop_size: side of the train ``random_crop`` (None: the data set's input size).
    cat_max_ratio: a crop is redrawn (up to 10 times) while one class covers this fraction
      or more of its labelled pixels (1.0: never).
    flip: horizontal flip with probability 0.5.
    photometric: mmseg's ``PhotoMetricDistortion``.
    eval_scale: ``(long, short)`` keep-ratio resize of eval images (None: as stored).
    eval_size: ``(H, W)`` canvas eval images are padded to (None: the input size ``S x S``);
      static shapes for the jitted eval step. Padded pixels are ignored by the metrics but,
      unlike mmseg's per-image ``whole`` mode, enter the global attention sums.
  """
  reduce_zero_label: bool = False
  train_scale: tuple[int, int] | None = None
  ratio_range: tuple[float, float] = (1.0, 1.0)
  crop_size: int | None = None
  cat_max_ratio: float = 1.0
  flip: bool = True
  photometric: bool = False
  eval_scale: tuple[int, int] | None = None
  eval_size: tuple[int, int] | None = None

  def __post_init__(self):
    for k in ("train_scale", "ratio_range", "eval_scale", "eval_size"):
      v = getattr(self, k)
      if v is not None:
        object.__setattr__(self, k, tuple(v))
    if self.ratio_range[0] <= 0 or self.ratio_range[0] > self.ratio_range[1]:
      raise ValueError(f"ratio_range must be 0 < low <= high, got {self.ratio_range}")
    if not 0 < self.cat_max_ratio <= 1:
      raise ValueError(f"cat_max_ratio must be in (0, 1], got {self.cat_max_ratio}")
    if self.crop_size is not None and self.crop_size < 1:
      raise ValueError(f"crop_size must be >= 1, got {self.crop_size}")

  @classmethod
  def none(cls, base: "SegPipelineConfig | None" = None) -> "SegPipelineConfig":
    """No random op; ``base``'s label mapping and eval resize kept."""
    base = base or cls()
    return cls(reduce_zero_label=base.reduce_zero_label, flip=False,
               eval_scale=base.eval_scale, eval_size=base.eval_size, crop_size=base.crop_size)


def seg_pipeline_config(augment, default: SegPipelineConfig) -> SegPipelineConfig:
  """``'default'`` -> ``default``; ``None``/``'none'`` -> no random op; a ``SegPipelineConfig``
  as is; a mapping -> ``default`` with those fields replaced (unknown ones: ValueError)."""
  if isinstance(augment, SegPipelineConfig):
    return augment
  if augment == "default":
    return default
  if augment is None or augment == "none":
    return SegPipelineConfig.none(default)
  if isinstance(augment, Mapping):
    fields = {f.name for f in dataclasses.fields(SegPipelineConfig)}
    unknown = sorted(set(augment) - fields)
    if unknown:
      raise ValueError(f"unknown segmentation augment option(s) {unknown}; options are "
                       f"{sorted(fields)}")
    return dataclasses.replace(default, **dict(augment))
  raise ValueError(f"augment must be 'default', 'none', a SegPipelineConfig or a mapping, got "
                   f"{augment!r}")


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
  """mmseg's ``reduce_zero_label``: 0 -> 255, ``k`` -> ``k - 1`` (255 stays 255)."""
  label = label.astype(np.int32)
  out = np.where(label == 0, IGNORE_INDEX, label - 1)
  out[label == IGNORE_INDEX] = IGNORE_INDEX
  return out.astype(np.uint8)


def keep_ratio_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
  """mmcv ``rescale_size`` for ``keep_ratio``: the largest factor with the long side <=
  ``max(scale)`` and the short side <= ``min(scale)``; ``(new_h, new_w)`` rounded."""
  long_edge, short_edge = max(scale), min(scale)
  factor = min(long_edge / max(height, width), short_edge / min(height, width))
  return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_pair(image, label, size: tuple[int, int]):
  """Image bilinear, label nearest to ``size`` ``(h, w)``."""
  if image.shape[:2] == tuple(size):
    return image, label
  lab = T.resize(label.astype(np.uint8)[..., None], size, "nearest")[..., 0]
  return T.resize(image, size, "bilinear"), lab


def random_resize(image, label, rng: np.random.Generator, scale, ratio_range):
  """mmseg ``RandomResize(scale, ratio_range, keep_ratio=True)``."""
  r = rng.uniform(*ratio_range)
  target = (scale[0] * r, scale[1] * r)
  return resize_pair(image, label, keep_ratio_size(*image.shape[:2], target))


def random_crop(image, label, rng: np.random.Generator, size: int, cat_max_ratio: float = 1.0):
  """mmseg ``RandomCrop``: a ``size`` crop (the whole extent on a smaller side), redrawn up to
  10 times while one class covers ``cat_max_ratio`` or more of its labelled pixels."""
  h, w = label.shape

  def draw():
    y = int(rng.integers(0, max(h - size, 0) + 1))
    x = int(rng.integers(0, max(w - size, 0) + 1))
    return y, x

  y, x = draw()
  if cat_max_ratio < 1.0:
    for _ in range(10):
      crop = label[y:y + size, x:x + size]
      _, counts = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
      if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
        break
      y, x = draw()
  return image[y:y + size, x:x + size], label[y:y + size, x:x + size]


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """float RGB 0..255 -> H in degrees [0, 360), S in [0, 1], V in 0..255 (OpenCV's float
  convention)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = rgb.max(-1)
  c = v - rgb.min(-1)
  s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
  safe = np.maximum(c, 1e-12)
  h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  h = np.where(c > 0, (h * 60.0) % 360.0, 0.0)
  return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  h, s, v = hsv[..., 0] % 360.0, hsv[..., 1], hsv[..., 2]
  c = v * s
  hp = h / 60.0
  x = c * (1 - np.abs(hp % 2 - 1))
  zeros = np.zeros_like(h)
  k = np.floor(hp).astype(np.int32) % 6
  rgb = np.select([k[..., None] == i for i in range(6)], [
      np.stack(t, -1) for t in ((c, x, zeros), (x, c, zeros), (zeros, c, x), (zeros, x, c),
                                (x, zeros, c), (c, zeros, x))])
  return rgb + (v - c)[..., None]


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, *,
                           brightness_delta: int = 32, contrast=(0.5, 1.5),
                           saturation=(0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
  """mmseg ``PhotoMetricDistortion`` on an RGB uint8 image: each of brightness (+-32),
  contrast (x 0.5-1.5, before or after the colour ops), saturation (x 0.5-1.5) and hue
  (+-18) with probability 0.5, clipped to 0..255 after each. The hue shift is taken modulo
  180 on OpenCV's 0-360 float scale, as the official code does."""
  img = image.astype(np.float32)
  if img.shape[-1] != 3:
    raise ValueError("photometric distortion needs RGB images")

  def clip(a):
    return np.clip(a, 0, 255).astype(np.uint8).astype(np.float32)

  def contrast_op(a):
    if rng.integers(2):
      a = clip(a * rng.uniform(*contrast))
    return a

  if rng.integers(2):
    img = clip(img + rng.uniform(-brightness_delta, brightness_delta))
  mode = int(rng.integers(2))
  if mode == 1:
    img = contrast_op(img)
  if rng.integers(2):   # saturation
    hsv = _rgb_to_hsv(img)
    hsv[..., 1] = hsv[..., 1] * rng.uniform(*saturation)
    img = clip(_hsv_to_rgb(hsv))
  if rng.integers(2):   # hue
    hsv = _rgb_to_hsv(img)
    hsv[..., 0] = (hsv[..., 0] + rng.integers(-hue_delta, hue_delta)) % 180
    img = clip(_hsv_to_rgb(hsv))
  if mode == 0:
    img = contrast_op(img)
  return img.astype(np.uint8)


def pad_pair(image, label, size: tuple[int, int]):
  """Bottom/right pad to ``size`` ``(H, W)``: image 0 (uint8, before normalisation a marker
  only; the pipeline zeroes padded pixels after normalising), label 255. Returns ``(image,
  label, valid)`` with ``valid`` the boolean map of real pixels."""
  h, w = label.shape
  H, W = size
  if h > H or w > W:
    raise ValueError(f"an image of {h}x{w} does not fit the {H}x{W} canvas; raise the canvas "
                     f"(augment.eval_size) or lower augment.eval_scale")
  im = np.zeros((H, W, image.shape[-1]), np.uint8)
  lab = np.full((H, W), IGNORE_INDEX, np.uint8)
  valid = np.zeros((H, W), bool)
  im[:h, :w], lab[:h, :w], valid[:h, :w] = image, label, True
  return im, lab, valid


def train_example(image, label, rng: np.random.Generator, cfg: SegPipelineConfig,
                  size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The train transform of one example (module docstring), padded to ``size`` x ``size``."""
  if cfg.reduce_zero_label:
    label = reduce_zero_label(label)
  if cfg.train_scale is not None:
    image, label = random_resize(image, label, rng, cfg.train_scale, cfg.ratio_range)
  elif cfg.crop_size is None and label.shape != (size, size):
    image, label = resize_pair(image, label, (size, size))   # fixed-size data at another S
  crop = cfg.crop_size or size
  if label.shape != (crop, crop) or cfg.cat_max_ratio < 1.0:
    image, label = random_crop(image, label, rng, crop, cfg.cat_max_ratio)
  if cfg.flip and rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  if cfg.photometric:
    image = photometric_distortion(image, rng)
  return pad_pair(np.ascontiguousarray(image), np.ascontiguousarray(label), (size, size))


def eval_example(image, label, cfg: SegPipelineConfig, canvas: tuple[int, int]):
  """The eval transform: label mapping, keep-ratio resize to ``eval_scale``, pad to
  ``canvas``."""
  if cfg.reduce_zero_label:
    label = reduce_zero_label(label)
  if cfg.eval_scale is not None:
    image, label = resize_pair(image, label, keep_ratio_size(*image.shape[:2], cfg.eval_scale))
  return pad_pair(image, label, canvas)

