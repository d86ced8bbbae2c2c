"""Segmentation pipeline (``DatasetSpec.kind == 'segmentation'``) -> numpy batches.

Records hold an ``image`` (PNG/JPEG bytes or uint8 HWC) and a class map under the spec's
``label_feature`` (PNG bytes or uint8 HW; a 3-channel PNG's first channel). Batches
(``B = batch_size // process_count``):

* ``image``: float32 ``[B, S, S, C]`` normalised with the data set's mean/std; padded pixels 0;
* ``label``: int32 ``[B, S, S]`` class map, ``255`` = ignored (padding included); eval on a
  fixed-size data set (no ``eval_scale``/``eval_size``): the class maps at their stored
  resolution (``spec.input_shape``) whatever ``S`` the images are resized to, as mmseg tests
  (the task resizes the logits to the label size);
* eval only -- ``mask``: float32 ``[B]``, 0 for the padding examples of the last batch.

Train examples go through ``seg_augment.train_example`` (random resize, crop with
``cat_max_ratio``, flip, photometric distortion, pad to ``S``); eval examples through
``seg_augment.eval_example`` (label mapping, keep-ratio resize, pad to the eval canvas, which is
``S`` x ``S`` unless the pipeline's ``eval_size`` says otherwise). Sharding, order and determinism:
``spikejax.data.batching`` (each example's randomness from ``(seed, epoch, index)``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from spikejax.data import seg_augment as SA
from spikejax.data import sources as S
from spikejax.data import transforms as T
from spikejax.data.batching import Batch, Dataset
from spikejax.data.errors import DataError


def decode_label(data) -> np.ndarray:
  """A record's class map (PNG bytes or an array) as uint8 ``[H, W]`` (first channel)."""
  if isinstance(data, (bytes, bytearray, np.bytes_)):
    with Image.open(io.BytesIO(bytes(data))) as im:
      data = np.asarray(im)
  label = np.asarray(data)
  if label.ndim == 3:
    label = label[..., 0]
  if label.ndim != 2:
    raise DataError(f"a class map must be [H, W] (or [H, W, C]), got shape {label.shape}")
  return label.astype(np.uint8)


class SegmentationDataset(Dataset):
  """Iterable of numpy batches of one process's shard of a segmentation split (module
  docstring). Attributes: those of ``batching.Dataset`` and ``image_size``, ``channels``,
  ``image_shape`` (``(S, S, C)``; eval: the canvas), ``pipeline`` (``SegPipelineConfig``)."""

  def __init__(self, spec, *, split: str, batch_size: int, data_dir: str | None, train: bool,
               seed: int, image_size: int | None, augment: SA.SegPipelineConfig,
               process_index: int, process_count: int, channels: int | None,
               num_epochs: int | None, download: bool, num_workers: int | None, prefetch: int):
    if spec.kind != "segmentation":
      raise ValueError(f"{spec.name} is an {spec.kind} data set, not a segmentation one")
    self._init_common(spec, split=split, batch_size=batch_size, train=train, seed=seed,
                      process_index=process_index, process_count=process_count,
                      num_epochs=num_epochs, num_workers=num_workers, prefetch=prefetch)
    self._init_pixels(spec, image_size, channels)
    self.pipeline = augment
    if train:
      self.canvas = (self.image_size, self.image_size)
    else:
      size = augment.eval_size
      self.canvas = tuple(size) if size is not None else (self.image_size,) * 2
    self.image_shape = self.canvas + (self.channels,)
    # fixed-size data (no eval resize, no canvas): labels keep the stored resolution
    self.fixed_size_eval = not train and augment.eval_scale is None and augment.eval_size is None
    self.label_canvas = tuple(spec.input_shape[:2]) if self.fixed_size_eval else self.canvas
    self._source = spec.builder(spec, split, data_dir=data_dir, download=download)
    self._set_shard(len(self._source))

  def _example(self, record, index: int, epoch: int):
    image = S.decode_image(record["image"], self.spec.channels)
    label = decode_label(record[self.spec.label_feature])
    if image.shape[:2] != label.shape:
      raise DataError(f"{self.name}[{self.split}] example {index}: image {image.shape[:2]} and "
                      f"class map {label.shape} differ in size")
    if self.train:
      rng = self._example_rng(index, epoch)
      return SA.train_example(image, label, rng, self.pipeline, self.image_size)
    if self.fixed_size_eval:   # the image resized to S, the labels as stored (mmseg's test)
      if label.shape != self.label_canvas:
        raise DataError(f"{self.name}[{self.split}] example {index}: class map {label.shape}, "
                        f"expected the data set's {self.label_canvas}")
      if self.pipeline.reduce_zero_label:
        label = SA.reduce_zero_label(label)
      return T.resize(image, self.canvas, "bilinear"), label, np.ones(self.canvas, bool)
    return SA.eval_example(image, label, self.pipeline, self.canvas)

  def get_batch(self, epoch: int, step: int) -> Batch:
    """Batch ``step`` of ``epoch``: a pure function of (seed, process, epoch, step)."""
    idx, valid = self.batch_indices(epoch, step)
    global_idx = idx + self.shard[0]
    records = self._source.read(global_idx)
    args = [(r, int(g), epoch) for r, g in zip(records, global_idx, strict=True)]
    out = self._map(lambda a: self._example(*a), args)
    b = self.local_batch_size
    images = np.zeros((b,) + self.canvas + (self.spec.channels,), np.uint8)
    labels = np.full((b,) + self.label_canvas, SA.IGNORE_INDEX, np.int32)
    real = np.zeros((b,) + self.canvas, bool)
    for i, (im, lab, ok) in enumerate(out):
      images[i], labels[i], real[i] = im, lab, ok
    x = T.to_channels(T.normalize(images, self.mean, self.std), self.channels)
    x = np.where(real[..., None], x, 0.0).astype(np.float32)
    batch = {"image": x, "label": labels}
    if not self.train:
      mask = np.zeros((b,), np.float32)
      mask[:valid] = 1.0
      batch["mask"] = mask
    return batch
