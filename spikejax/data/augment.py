"""Random training augmentations in numpy (+ PIL), deterministic given a ``np.random.Generator``.

Every function is pure: it takes the images and a ``Generator`` and returns new arrays (inputs
are never modified). Semantics follow timm's defaults where named so.

* ``random_crop_with_padding`` / ``random_flip``: batch-vectorized, for small images (CIFAR /
  Fashion-MNIST ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``).
* ``random_resized_crop``: timm/torchvision ``RandomResizedCrop`` (scale (0.08, 1), ratio
  (3/4, 4/3), 10 attempts, then a central fallback crop), one image.
* ``rand_augment``: timm ``rand-m9-mstd0.5-inc1`` RandAugment, one uint8 image.
* ``random_erasing``: timm ``RandomErasing`` (p=0.25, mode 'pixel', count 1) on a normalized
  float batch.
* ``mixup_cutmix``: timm ``Mixup`` in 'batch' mode, with label smoothing -> soft targets.
* ``smooth_labels``: one-hot with label smoothing for hard labels.

``AugmentConfig`` names the training augmentation of a pipeline; each data set's default is
``spikejax.data.get_spec(name).augment``. ``augment_config`` turns the ``augment=`` argument
of ``get_dataset`` into one.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from spikejax.data import transforms as T


# --------------------------------------------------------------------------- crops and flips


def random_crop_with_padding(images: np.ndarray, rng: np.random.Generator, padding: int,
                             fill: float = 0) -> np.ndarray:
  """Pad NHWC by ``padding`` on each side (with ``fill``), then crop back to HxW at a random offset.

  Vectorized over the batch; each image gets its own uniform offset in ``[0, 2 * padding]``.
  """
  if padding <= 0:
    return images
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                  constant_values=fill)
  oy = rng.integers(0, 2 * padding + 1, size=b)
  ox = rng.integers(0, 2 * padding + 1, size=b)
  rows = oy[:, None, None] + np.arange(h)[None, :, None]
  cols = ox[:, None, None] + np.arange(w)[None, None, :]
  return padded[np.arange(b)[:, None, None], rows, cols]


def random_flip(images: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  """Horizontally flip each image of an NHWC batch with probability ``p``."""
  flip = rng.random(images.shape[0]) < p
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: Sequence[float] = (0.08, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """Sample a ``RandomResizedCrop`` box ``(top, left, h, w)`` (timm / torchvision semantics).

  Up to 10 tries of area ~ U(scale) * H * W and log-uniform aspect ratio in ``ratio``; if none
  fits, a central crop of the whole image clamped to the ratio range.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3),
                        interpolation: str = "bicubic") -> np.ndarray:
  """timm ``RandomResizedCrop``: crop a random box (``random_resized_crop_box``), resize to size^2.

  One uint8 HWC image in, uint8 ``(size, size, C)`` out.
  """
  top, left, h, w = random_resized_crop_box(rng, image.shape[0], image.shape[1], scale, ratio)
  out = T.to_pil(image).resize((size, size), T.pil_interpolation(interpolation),
                               box=(left, top, left + w, top + h))
  return T.from_pil(out, image.shape[-1])


# --------------------------------------------------------------------------- RandAugment


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
  """Parsed timm RandAugment spec, e.g. ``rand-m9-mstd0.5-inc1``.

  Attributes:
    num_ops: ops applied per image (``n``), drawn uniformly with replacement.
    magnitude: mean magnitude (``m``) on timm's 0..10 scale.
    magnitude_std: per-op Gaussian noise on the magnitude (``mstd``); ``inf`` = uniform(0, m).
    magnitude_max: clip for the sampled magnitude (``mmax``).
    increasing: ``inc1``: the "increasing" op set, where every op gets more severe with m.
    prob: probability that each chosen op is applied (``p``; timm default 0.5).
  """
  num_ops: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.5
  magnitude_max: float = 10.0
  increasing: bool = True
  prob: float = 0.5

  @classmethod
  def parse(cls, spec: str) -> "RandAugmentConfig":
    """Parse ``rand-m9-n2-mstd0.5-mmax10-inc1-p0.5`` (any subset of the options, any order)."""
    parts = spec.split("-")
    if parts[0] != "rand":
      raise ValueError(f"RandAugment spec must start with 'rand': {spec!r}")
    kw = {"increasing": False}
    keys = {"m": ("magnitude", float), "n": ("num_ops", int), "mstd": ("magnitude_std", float),
            "mmax": ("magnitude_max", float), "inc": ("increasing", lambda v: bool(int(v))),
            "p": ("prob", float)}
    for part in parts[1:]:
      match = re.fullmatch(r"([a-z]+)([0-9.]+|inf)", part)
      if not match or match.group(1) not in keys:
        raise ValueError(f"unknown RandAugment option {part!r} in {spec!r}")
      name, conv = keys[match.group(1)]
      kw[name] = conv(match.group(2))
    return cls(**kw)


def _sign(rng: np.random.Generator, v: float) -> float:
  return -v if rng.random() < 0.5 else v


def _affine(img: Image.Image, matrix, fill, interpolation) -> Image.Image:
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=interpolation,
                       fillcolor=fill)


def _solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
  lut = [min(255, i + add) if i < threshold else i for i in range(256)]
  return img.point(lut * (3 if img.mode == "RGB" else 1))


def _op_table(increasing: bool) -> list[tuple[str, Callable]]:
  """``[(name, fn(img, m, rng, fill, interp))]``, ``m`` in [0, 1] (timm level / 10)."""

  def enhance(cls):
    if increasing:  # factor 1 +- 0.9 m: further from identity as m grows
      return lambda img, m, rng, fill, interp: cls(img).enhance(1.0 + _sign(rng, 0.9 * m))
    return lambda img, m, rng, fill, interp: cls(img).enhance(0.1 + 1.8 * m)

  ops = [
      ("AutoContrast", lambda img, m, rng, fill, interp: ImageOps.autocontrast(img)),
      ("Equalize", lambda img, m, rng, fill, interp: ImageOps.equalize(img)),
      ("Invert", lambda img, m, rng, fill, interp: ImageOps.invert(img)),
      ("Rotate", lambda img, m, rng, fill, interp: img.rotate(
          _sign(rng, 30.0 * m), resample=interp, fillcolor=fill)),
      ("Posterize", (lambda img, m, rng, fill, interp: ImageOps.posterize(img, 4 - int(4 * m)))
       if increasing else
       (lambda img, m, rng, fill, interp: ImageOps.posterize(img, int(4 * m)))),
      ("Solarize", (lambda img, m, rng, fill, interp: ImageOps.solarize(img, 256 - int(256 * m)))
       if increasing else
       (lambda img, m, rng, fill, interp: ImageOps.solarize(img, int(256 * m)))),
      ("SolarizeAdd", lambda img, m, rng, fill, interp: _solarize_add(img, int(110 * m))),
      ("Color", enhance(ImageEnhance.Color)),
      ("Contrast", enhance(ImageEnhance.Contrast)),
      ("Brightness", enhance(ImageEnhance.Brightness)),
      ("Sharpness", enhance(ImageEnhance.Sharpness)),
      ("ShearX", lambda img, m, rng, fill, interp: _affine(
          img, (1, _sign(rng, 0.3 * m), 0, 0, 1, 0), fill, interp)),
      ("ShearY", lambda img, m, rng, fill, interp: _affine(
          img, (1, 0, 0, _sign(rng, 0.3 * m), 1, 0), fill, interp)),
      ("TranslateXRel", lambda img, m, rng, fill, interp: _affine(
          img, (1, 0, _sign(rng, 0.45 * m) * img.size[0], 0, 1, 0), fill, interp)),
      ("TranslateYRel", lambda img, m, rng, fill, interp: _affine(
          img, (1, 0, 0, 0, 1, _sign(rng, 0.45 * m) * img.size[1]), fill, interp)),
  ]
  return ops


_OPS = {True: _op_table(True), False: _op_table(False)}


def rand_augment(image: np.ndarray, rng: np.random.Generator,
                 config: RandAugmentConfig | str = "rand-m9-mstd0.5-inc1",
                 fill: Sequence[int] | int = 128, interpolation: str = "bicubic") -> np.ndarray:
  """timm RandAugment on one uint8 HWC image (C = 1 or 3); returns a new uint8 image.

  ``num_ops`` ops are drawn uniformly with replacement from the 15-op set (AutoContrast,
  Equalize, Invert, Rotate, Posterize, Solarize, SolarizeAdd, Color, Contrast, Brightness,
  Sharpness, ShearX/Y, TranslateX/YRel; with ``inc1`` the "increasing" variants of Posterize,
  Solarize and the enhancers). Each is applied with probability ``prob`` at magnitude
  ``clip(N(m, mstd), 0, mmax)`` on timm's 0..10 scale: rotate <= 30 deg, shear <= 0.3,
  translate <= 45 % of the side, enhance factor 1 +- 0.9, posterize to >= 0 bits, solarize
  threshold down to 0, solarize-add <= 110; signs are random. ``fill`` is the color of pixels
  that geometric ops bring in (timm uses the dataset mean).
  """
  if isinstance(config, str):
    config = RandAugmentConfig.parse(config)
  channels = image.shape[-1]
  img = T.to_pil(image)
  if channels == 1:
    fill = int(np.mean(fill))
  elif isinstance(fill, (int, np.integer)):
    fill = (int(fill),) * channels
  else:
    fill = tuple(int(v) for v in fill)
  interp = T.pil_interpolation(interpolation)
  ops = _OPS[config.increasing]
  for idx in rng.integers(0, len(ops), size=config.num_ops):
    if config.prob < 1.0 and rng.random() > config.prob:
      continue
    m = config.magnitude
    if config.magnitude_std == float("inf"):
      m = rng.uniform(0.0, m)
    elif config.magnitude_std > 0:
      m = rng.normal(m, config.magnitude_std)
    m = min(max(m, 0.0), config.magnitude_max) / 10.0
    img = ops[idx][1](img, m, rng, fill, interp)
  return T.from_pil(img, channels)


# --------------------------------------------------------------------------- random erasing


def random_erasing_boxes(rng: np.random.Generator, batch: int, height: int, width: int,
                         probability: float = 0.25, min_area: float = 0.02,
                         max_area: float = 1 / 3, min_aspect: float = 0.3,
                         max_aspect: float | None = None,
                         count: int = 1) -> list[list[tuple[int, int, int, int]]]:
  """Sample timm ``RandomErasing`` rectangles ``(top, left, h, w)`` for each image of a batch.

  With probability ``probability`` an image gets ``count`` rectangles of area
  ~ U(min_area, max_area) * H * W / count and log-uniform aspect in (min_aspect, 1/min_aspect),
  each from up to 10 attempts (a rectangle that does not fit is skipped).
  """
  max_aspect = max_aspect or 1.0 / min_aspect
  log_aspect = (math.log(min_aspect), math.log(max_aspect))
  area = height * width
  boxes = []
  for _ in range(batch):
    image_boxes = []
    if rng.random() < probability:
      for _ in range(count):
        for _ in range(10):
          target_area = rng.uniform(min_area, max_area) * area / count
          aspect = math.exp(rng.uniform(*log_aspect))
          h = int(round(math.sqrt(target_area * aspect)))
          w = int(round(math.sqrt(target_area / aspect)))
          if w < width and h < height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            image_boxes.append((top, left, h, w))
            break
    boxes.append(image_boxes)
  return boxes


def random_erasing(images: np.ndarray, rng: np.random.Generator, probability: float = 0.25,
                   mode: str = "pixel", count: int = 1, min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3) -> np.ndarray:
  """timm ``RandomErasing`` on a *normalized* float NHWC batch (p=0.25, 'pixel', count 1).

  Each erased rectangle is filled with per-pixel, per-channel N(0, 1) noise (``'pixel'``), one
  N(0, 1) value per channel (``'rand'``) or zeros (``'const'``), i.e. noise in normalized units.
  """
  if probability <= 0:
    return images
  b, h, w, c = images.shape
  out = np.array(images, dtype=np.float32, copy=True)
  for i, image_boxes in enumerate(random_erasing_boxes(
      rng, b, h, w, probability, min_area, max_area, min_aspect, None, count)):
    for top, left, bh, bw in image_boxes:
      if mode == "pixel":
        patch = rng.standard_normal((bh, bw, c), dtype=np.float32)
      elif mode == "rand":
        patch = rng.standard_normal((1, 1, c), dtype=np.float32)
      elif mode == "const":
        patch = np.zeros((1, 1, c), np.float32)
      else:
        raise ValueError(f"unknown random erasing mode {mode!r}")
      out[i, top:top + bh, left:left + bw] = patch
  return out


# --------------------------------------------------------------------------- labels and mixing


def smooth_labels(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
  """Hard int labels [B] -> float32 targets [B, C]: ``1 - s + s/C`` on the label, ``s/C`` off."""
  off = smoothing / num_classes
  targets = np.full((labels.shape[0], num_classes), off, np.float32)
  targets[np.arange(labels.shape[0]), labels] = 1.0 - smoothing + off
  return targets


def cutmix_box(rng: np.random.Generator, height: int, width: int,
               lam: float) -> tuple[int, int, int, int]:
  """timm ``rand_bbox``: a box of side ratio sqrt(1 - lam) around a uniform center, clipped.

  Returns ``(y0, y1, x0, x1)``.
  """
  cut = math.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * cut), int(width * cut)
  cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
  y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
  x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
  return y0, y1, x0, x1


def mixup_cutmix(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1,
                 correct_lam: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
  """timm ``Mixup`` (mode 'batch') on a float NHWC batch: ``(images, soft targets [B, C], lam)``.

  One lambda per batch: with probability ``prob`` mix, choosing CutMix (lam ~ Beta(cutmix_alpha))
  with probability ``switch_prob`` when both alphas are > 0, else Mixup (lam ~ Beta(mixup_alpha)).
  Each image is mixed with the batch reversed (image i with image B-1-i). CutMix pastes the
  partner's box (``cutmix_box``) and, with ``correct_lam``, sets lam to the kept area fraction.
  Targets are ``lam * smooth(y) + (1 - lam) * smooth(y reversed)``; each row sums to 1. Use an
  even batch size (with an odd one the middle image is "mixed" with itself).
  """
  lam = 1.0
  use_cutmix = False
  if (mixup_alpha > 0 or cutmix_alpha > 0) and rng.random() < prob:
    if mixup_alpha > 0 and cutmix_alpha > 0:
      use_cutmix = rng.random() < switch_prob
    else:
      use_cutmix = cutmix_alpha > 0
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix
                else rng.beta(mixup_alpha, mixup_alpha))
  out = np.asarray(images, np.float32)
  if lam < 1.0:
    partner = out[::-1]
    if use_cutmix:
      h, w = out.shape[1:3]
      y0, y1, x0, x1 = cutmix_box(rng, h, w, lam)
      out = out.copy()
      out[:, y0:y1, x0:x1] = partner[:, y0:y1, x0:x1]
      if correct_lam:
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
      out = out * np.float32(lam) + partner * np.float32(1.0 - lam)
  y = smooth_labels(labels, num_classes, label_smoothing)
  targets = (y * np.float32(lam) + y[::-1] * np.float32(1.0 - lam)).astype(np.float32)
  return out, targets, lam


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training augmentation of an input pipeline (each data set's default: ``DatasetSpec.augment``).

  Attributes:
    crop: ``'pad'``: random crop with ``padding`` (small images); ``'rrc'``: RandomResizedCrop to
      ``image_size`` with ``scale``/``ratio`` (ImageNet style); ``'none'``.
    padding: pixels of zero padding on each side for ``crop='pad'``.
    flip: random horizontal flip (p = 0.5).
    scale, ratio: RandomResizedCrop area fraction / aspect-ratio ranges (timm defaults).
    randaugment: timm RandAugment spec, e.g. ``'rand-m9-mstd0.5-inc1'``; ``None`` = off.
    reprob, remode, recount: random erasing probability / mode / count (timm ``RandomErasing``).
    mixup, cutmix: Beta alphas (0 = off); ``mixup_prob``: probability to mix a batch at all;
      ``switch_prob``: probability of CutMix when both are on.
    label_smoothing: applied to the soft ``target`` of every training batch.
  """
  crop: str = "pad"
  padding: int = 4
  flip: bool = True
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  randaugment: str | None = None
  reprob: float = 0.0
  remode: str = "pixel"
  recount: int = 1
  mixup: float = 0.0
  cutmix: float = 0.0
  mixup_prob: float = 1.0
  switch_prob: float = 0.5
  label_smoothing: float = 0.0

  def __post_init__(self):
    if self.crop not in ("pad", "rrc", "none"):
      raise ValueError(f"crop must be 'pad', 'rrc' or 'none', got {self.crop!r}")
    if self.randaugment:
      RandAugmentConfig.parse(self.randaugment)  # validate early

  @classmethod
  def none(cls) -> "AugmentConfig":
    """No augmentation at all (plain one-hot targets)."""
    return cls(crop="none", flip=False)

  @classmethod
  def flip_only(cls) -> "AugmentConfig":
    """The random horizontal mirror alone (no crop, plain one-hot targets)."""
    return cls(crop="none", flip=True)


def augment_config(augment: "AugmentConfig | Mapping[str, Any] | str | None",
                   default: AugmentConfig) -> AugmentConfig:
  """The ``augment=`` argument of ``get_dataset`` as an ``AugmentConfig``: ``'default'`` ->
  ``default`` (the data set's), ``'none'``/``None`` -> ``AugmentConfig.none()``, ``'flip'`` ->
  ``AugmentConfig.flip_only()``, a mapping ->
  ``AugmentConfig(**mapping)`` (lists become tuples), an ``AugmentConfig`` -> itself."""
  if isinstance(augment, str):
    if augment not in ("default", "none", "flip"):
      raise ValueError(f"augment must be 'default', 'none', 'flip', None, an AugmentConfig or a "
                       f"mapping, got {augment!r}")
    if augment == "flip":
      return AugmentConfig.flip_only()
    return AugmentConfig.none() if augment == "none" else default
  if augment is None:
    return AugmentConfig.none()
  if hasattr(augment, "to_dict"):  # an ml_collections.ConfigDict
    augment = augment.to_dict()
  if isinstance(augment, Mapping):
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in augment.items()})
  if not isinstance(augment, AugmentConfig):
    raise TypeError(f"augment must be 'default', 'none', 'flip', None, an AugmentConfig or a mapping; "
                    f"got {type(augment).__name__}")
  return augment
