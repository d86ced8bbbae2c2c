"""Deterministic image transforms (decode, resize, crop, pad, normalize) on numpy arrays.

Images are ``uint8`` HWC (one image) or NHWC (a batch) until ``normalize`` turns them into
``float32``. Resizing uses PIL.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: ImageNet eval: resize the shorter side to ``floor(224 / crop_pct) = 232``, center-crop 224.
DEFAULT_CROP_PCT = 224 / 232

_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def pil_interpolation(name: str) -> Image.Resampling:
  """PIL resampling filter for ``'nearest' | 'bilinear' | 'bicubic' | 'lanczos'``."""
  try:
    return _INTERPOLATION[name]
  except KeyError:
    raise ValueError(f"unknown interpolation {name!r}; one of {sorted(_INTERPOLATION)}") from None


def to_pil(image: np.ndarray) -> Image.Image:
  """uint8 HWC (C = 1 or 3) -> PIL image (mode ``L`` or ``RGB``)."""
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def from_pil(image: Image.Image, channels: int) -> np.ndarray:
  """PIL image -> uint8 HWC with ``channels`` (1 or 3) channels."""
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[..., None]
  return array if array.shape[-1] == channels else np.repeat(array, channels, axis=-1)


def decode_image(data: bytes, channels: int = 3) -> np.ndarray:
  """Decode PNG/JPEG bytes to uint8 HWC with ``channels`` (1: greyscale, 3: RGB)."""
  with Image.open(io.BytesIO(data)) as im:
    mode = "L" if channels == 1 else "RGB"
    if im.mode != mode:
      im = im.convert(mode)
    array = np.asarray(im)
  return array[..., None] if array.ndim == 2 else array


def resize(image: np.ndarray, size: tuple[int, int] | int,
           interpolation: str = "bicubic") -> np.ndarray:
  """Resize uint8 HWC to ``size`` = (height, width) (or a square side)."""
  h, w = (size, size) if isinstance(size, int) else size
  if image.shape[:2] == (h, w):
    return image
  out = to_pil(image).resize((w, h), pil_interpolation(interpolation))
  return from_pil(out, image.shape[-1])


def resize_shorter_side(image: np.ndarray, size: int, interpolation: str = "bicubic") -> np.ndarray:
  """Resize uint8 HWC so that its shorter side is ``size``, keeping the aspect ratio.

  Same output size as torchvision's ``Resize(int)``: the longer side is ``int(size * long /
  short)``.
  """
  h, w = image.shape[:2]
  if h <= w:
    new_h, new_w = size, int(size * w / h)
  else:
    new_h, new_w = int(size * h / w), size
  return resize(image, (new_h, new_w), interpolation)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Center crop HWC to ``size x size`` (zero-pads first if the image is smaller)."""
  h, w = image.shape[:2]
  if h < size or w < size:
    image = pad_to_size(image[None], max(size, h), max(size, w))[0]
    h, w = image.shape[:2]
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return image[top:top + size, left:left + size]


def resize_center_crop(image: np.ndarray, size: int, crop_pct: float = DEFAULT_CROP_PCT,
                       interpolation: str = "bicubic") -> np.ndarray:
  """ImageNet eval transform: shorter side to ``floor(size / crop_pct)``, center crop ``size``.

  ``crop_pct = 224/232`` resizes to 232 and crops 224 (timm's ``crop_pct`` convention;
  ``crop_pct = 0.875`` gives the classic 256 -> 224).
  """
  scale_size = math.floor(size / crop_pct)
  return center_crop(resize_shorter_side(image, scale_size, interpolation), size)


def pad_to_size(images: np.ndarray, height: int, width: int | None = None,
                fill: float = 0) -> np.ndarray:
  """Zero-pad (``fill``) a batch NHWC centrally to ``height x width`` (e.g. 28 -> 32)."""
  width = height if width is None else width
  h, w = images.shape[1:3]
  if (h, w) == (height, width):
    return images
  if h > height or w > width:
    raise ValueError(f"cannot pad {h}x{w} images to {height}x{width}")
  top, left = (height - h) // 2, (width - w) // 2
  return np.pad(images, ((0, 0), (top, height - h - top), (left, width - w - left), (0, 0)),
                constant_values=fill)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """Replicate a greyscale NHWC batch to ``channels`` channels (no-op if already there)."""
  c = images.shape[-1]
  if c == channels:
    return images
  if c != 1:
    raise ValueError(f"cannot convert {c} channels to {channels}")
  return np.repeat(images, channels, axis=-1)


def normalize(images: np.ndarray, mean: Sequence[float] | float,
              std: Sequence[float] | float) -> np.ndarray:
  """uint8 NHWC -> float32 ``(x / 255 - mean) / std`` (per channel)."""
  mean = np.asarray(mean, np.float32) * 255.0
  inv = 1.0 / (np.asarray(std, np.float32) * 255.0)
  return (images.astype(np.float32) - mean) * inv


def fill_color(mean: Sequence[float] | float, channels: int) -> tuple[int, ...]:
  """uint8 fill color from a [0, 1] mean (used by geometric ops, as timm's ``img_mean``)."""
  m = np.broadcast_to(np.asarray(mean, np.float64), (channels,))
  return tuple(int(round(255 * v)) for v in m)
