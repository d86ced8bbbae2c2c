"""Detection pipeline (``DatasetSpec.kind == 'detection'``) -> numpy batches.

Batch contract (``B = batch_size // process_count``; ``M`` = the pipeline's ``max_instances``;
the canvas ``(H, W)`` is fixed per pipeline, so every shape is static under ``jax.jit``):

* ``image``: float32 ``[B, H, W, C]``, normalised with the data set's mean/std (COCO: mean
  (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) on 0..255, RGB); the image sits at
  the top left, padded pixels (bottom/right, mmdet's ``Pad``) are 0;
* ``image_hw``: int32 ``[B, 2]``: ``(height, width)`` of the real image content in the canvas
  after resizing (mmdet's ``img_shape``); proposals get clipped to it;
* ``gt_boxes``: float32 ``[B, M, 4]`` ``(x1, y1, x2, y2)`` in canvas pixels after every
  transform (resize, flip, crop); a pixel ``(y, x)`` covers ``[x, x + 1) x [y, y + 1)``, so a
  mask's box is ``(min x, min y, max x + 1, max y + 1)``; padding rows 0;
* ``gt_classes``: int32 ``[B, M]``: ``0 .. num_classes - 1`` (Fashion-MNIST scenes: the
  garment label 0..9; COCO: the 80 contiguous indices in COCO's category-id order, tfds'
  ``objects/label``), -1 on padding rows;
* ``gt_valid``: bool ``[B, M]``: a real, non-crowd instance (the trainer's targets);
* ``gt_iscrowd``: bool ``[B, M]``: a COCO ``iscrowd`` region. Crowd rows are kept in the arrays
  (box, class and mask filled) with ``gt_valid`` False and ``gt_iscrowd`` True: the trainer
  ignores them, the evaluator can use them as crowd regions. Fashion-MNIST scenes: all False;
* ``gt_masks``: uint8 ``[B, M, H // s, W // s]`` 0/1 instance masks after the same transforms
  (``s`` = the pipeline's ``mask_stride``; 1 for the scenes, 4 for COCO), sampled nearest at
  ``(i * s, j * s)`` of the canvas-resolution mask (OpenCV's ``INTER_NEAREST`` convention,
  what mmcv uses to resize masks); absent when the pipeline has ``masks=False``;
* eval only -- ``mask``: float32 ``[B]``, 0 for the padding examples of the last batch (their
  ``image`` is 0, no instance, ``image_hw`` the whole canvas, ``scale`` 1, ``image_id`` -1);
  ``scale``: float32 ``[B, 2]`` canvas pixels per original pixel ``(y, x)`` (original boxes
  are ``gt_boxes / (sx, sy, sx, sy)``); ``image_id``: int32 ``[B]`` (COCO's image id; the
  scenes: the example's index in the split).

Instance rows are in annotation order. An image with more than ``M`` instances (after the
transforms) keeps the first ``M`` and the rest are counted in ``truncated_instances`` /
``truncated_examples`` (a warning is logged once). Instances whose box becomes empty in a crop
are dropped (mmdet's ``RandomCrop``); a crop left without instances is kept
(``allow_negative_crop``). COCO annotations mmdet's ``CocoDataset`` skips are skipped here too
(box width or height < 1 pixel, no overlap with the image; not its ``area <= 0`` test: tfds
truncates the area to an integer); images without
annotations are NOT filtered from training (mmdet's ``filter_empty_gt``), they have no
instance rows.

Record layouts (the builder's source, ``spikejax.data.sources``):

* Fashion-MNIST scenes (``spikejax.data.seg_datasets``): ``image`` (PNG), ``instances`` (PNG,
  ``k + 1`` on the pixels of row ``k``), ``boxes`` ``[R, 4]`` ``(x0, y0, x1, y1)`` pixels with
  ``x1``/``y1`` exclusive, ``classes`` ``[R]`` (-1: padding row);
* COCO (tfds ``coco/2017``): ``image`` (JPEG), ``image/id``, ``objects``: ``bbox`` ``[n, 4]``
  normalised ``(ymin, xmin, ymax, xmax)``, ``label``, ``is_crowd``, ``id`` (the annotation id),
  ``area``. tfds has no masks: they come from ``objects/segmentation`` when the records carry
  them (COCO RLEs or uint8 ``[n, h, w]`` arrays; ``coco_mock``), else from the official
  ``instances_{train,val}2017.json`` (pycocotools ``annToMask``), matched by annotation id;
  where that file is looked for: ``det_augment.DetPipelineConfig.annotations_dir``. A
  missing file is a one-line ``DataError`` at construction.

Train examples go through ``det_augment.train_example`` (seeded per ``(seed, epoch, index)``,
``batching.Dataset._example_rng``), eval examples through ``det_augment.eval_example``.
Sharding and order: ``spikejax.data.batching``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import threading
from typing import Any, Callable

import numpy as np

from spikejax.data import det_augment as DA
from spikejax.data import sources as S
from spikejax.data import transforms as T
from spikejax.data.batching import Batch, Dataset
from spikejax.data.errors import DataError, MissingDataError
from spikejax.data.seg_pipeline import decode_label

#: tfds split -> the name of COCO 2017's annotation files.
COCO_SPLIT_FILES = {"train": "train2017", "validation": "val2017"}
_BOX_EPS = 1e-3      # tfds stores normalised float32 boxes: 1 px may come back as 0.9999 px

_ANNOTATIONS: dict[str, Any] = {}
_ANNOTATIONS_LOCK = threading.Lock()


def annotations_path(cfg: DA.DetPipelineConfig, split: str, data_dir: str | None) -> str:
  """Where COCO's ``instances_<split>2017.json`` is looked for (``DetPipelineConfig``)."""
  base = split.split("[")[0]
  if base not in COCO_SPLIT_FILES:
    raise DataError(f"COCO instance masks exist for the splits {sorted(COCO_SPLIT_FILES)}, not "
                    f"{split!r}; pass augment.masks=False for boxes only")
  directory = cfg.annotations_dir or os.environ.get("COCO_ANNOTATIONS_DIR")
  if not directory:
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    directory = os.path.join(root, "downloads", "manual", "annotations")
  return os.path.join(os.path.expanduser(directory), f"instances_{COCO_SPLIT_FILES[base]}.json")


def load_coco_annotations(path: str):
  """pycocotools ``COCO(path)``, loaded once per process (train2017's file: ~20 s, a few GB)."""
  with _ANNOTATIONS_LOCK:
    if path not in _ANNOTATIONS:
      from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
      with contextlib.redirect_stdout(io.StringIO()):   # its progress prints
        _ANNOTATIONS[path] = COCO(path)
    return _ANNOTATIONS[path]


def _decode_rles(segs, hw: tuple[int, int]) -> np.ndarray:
  """Masks stored in a record: COCO RLEs (compressed or not) or uint8 arrays -> ``[k, h, w]``."""
  if not len(segs):
    return np.zeros((0,) + tuple(hw), np.uint8)
  if not isinstance(segs[0], dict):
    return np.stack([np.asarray(s, np.uint8) for s in segs])
  from pycocotools import mask as mask_util  # pylint: disable=import-outside-toplevel
  rles = [mask_util.frPyObjects(s, *s["size"]) if isinstance(s["counts"], list) else s
          for s in segs]
  return np.ascontiguousarray(np.moveaxis(mask_util.decode(rles), -1, 0))


class Annotations:
  """One example's annotations: boxes ``(x1, y1, x2, y2)`` float32 ``[n, 4]`` in image pixels,
  classes int32 ``[n]``, iscrowd bool ``[n]``, ``image_id``, and ``masks(rows)`` -> uint8
  ``[len(rows), h, w]`` (decoded only for the rows that survive the transforms)."""

  def __init__(self, boxes, classes, iscrowd, image_id: int,
               masks: Callable[[np.ndarray], np.ndarray]):
    self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    self.classes = np.asarray(classes, np.int32)
    self.iscrowd = np.asarray(iscrowd, bool)
    self.image_id = int(image_id)
    self.masks = masks


class DetectionDataset(Dataset):
  """Iterable of numpy batches of one process's shard of a detection split (module docstring).

  Attributes: those of ``batching.Dataset`` and ``image_shape`` (``(H, W, C)`` of the canvas),
  ``canvas``, ``channels``, ``max_instances``, ``mask_stride``, ``class_names``, ``pipeline``
  (``det_augment.DetPipelineConfig``), ``layout`` (``'scenes'`` or ``'coco'``),
  ``annotation_file`` (the COCO file masks are read from, or None), ``truncated_instances`` /
  ``truncated_examples`` (instances beyond ``max_instances`` cut so far in this process).
  """

  def __init__(self, spec, *, split: str, batch_size: int, data_dir: str | None, train: bool,
               seed: int, image_size: int | None, augment: DA.DetPipelineConfig,
               process_index: int, process_count: int, channels: int | None,
               num_epochs: int | None, download: bool, num_workers: int | None, prefetch: int):
    if spec.kind != "detection":
      raise ValueError(f"{spec.name} is an {spec.kind} data set, not a detection one")
    self._init_common(spec, split=split, batch_size=batch_size, train=train, seed=seed,
                      process_index=process_index, process_count=process_count,
                      num_epochs=num_epochs, num_workers=num_workers, prefetch=prefetch)
    self._init_pixels(spec, image_size, channels)
    pipe = augment
    if image_size is not None:
      # a square canvas of S; a pipeline without resizes of its own fits images into it
      if (image_size != spec.image_size and not pipe.initial_resize and not pipe.train_scales
          and pipe.eval_scale is None):
        pipe = dataclasses.replace(pipe, initial_resize=True, initial_scale=(image_size,) * 2,
                                   eval_scale=(image_size,) * 2)
      self.canvas = (image_size, image_size)
    else:
      self.canvas = tuple(pipe.canvas) if pipe.canvas is not None else tuple(spec.input_shape[:2])
    self.pipeline = pipe
    self.image_shape = self.canvas + (self.channels,)
    self.max_instances, self.mask_stride = pipe.max_instances, pipe.mask_stride
    self.mask_shape = (self.canvas[0] // self.mask_stride, self.canvas[1] // self.mask_stride)
    if min(self.mask_shape) < 1:
      raise ValueError(f"mask_stride {self.mask_stride} is larger than the {self.canvas} canvas")
    self.class_names = tuple(spec.class_names)
    self.truncated_instances = self.truncated_examples = 0
    self._count_lock = threading.Lock()
    self._source = spec.builder(spec, split, data_dir=data_dir, download=download)
    self._set_shard(len(self._source))
    self.layout, self.annotation_file, self._coco = "coco", None, None
    if len(self._source):
      first = self._source.read([0])[0]
      if "instances" in first:
        self.layout = "scenes"
      elif "objects" not in first:
        raise DataError(f"{self.name}[{split}] ({self._source.location}): a detection record "
                        "needs 'instances' + 'boxes' + 'classes' (scenes) or 'objects' (COCO); "
                        f"got the keys {sorted(first)}")
      elif pipe.masks and "segmentation" not in first["objects"]:
        self.annotation_file = annotations_path(pipe, split, data_dir)
        if not os.path.isfile(self.annotation_file):
          raise MissingDataError(
              f"{self.name}[{split}]: instance masks need COCO's annotation file "
              f"{self.annotation_file}, which does not exist; unzip annotations_trainval2017.zip "
              "(cocodataset.org) and pass its annotations/ directory as "
              "augment.annotations_dir (config.augment.annotations_dir) or "
              "$COCO_ANNOTATIONS_DIR, or set augment.masks=False for boxes only")

  # ------------------------------------------------------------------------- records

  def _annotations(self, record, image: np.ndarray, index: int) -> Annotations:
    h, w = image.shape[:2]
    if self.layout == "scenes":
      classes = np.asarray(record["classes"], np.int32)
      rows = np.nonzero(classes >= 0)[0]
      boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)[rows]
      inst = record["instances"]

      def masks(keep):
        labels = decode_label(inst)
        return (labels[None] == (rows[keep] + 1)[:, None, None]).astype(np.uint8)

      return Annotations(boxes, classes[rows], np.zeros(len(rows), bool), index, masks)
    obj = record["objects"]
    bbox = np.asarray(obj["bbox"], np.float32).reshape(-1, 4)   # normalised (y0, x0, y1, x1)
    boxes = bbox[:, [1, 0, 3, 2]] * np.asarray([w, h, w, h], np.float32)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    inter_w = np.minimum(boxes[:, 2], w) - np.maximum(boxes[:, 0], 0)
    inter_h = np.minimum(boxes[:, 3], h) - np.maximum(boxes[:, 1], 0)
    # mmdet's CocoDataset also skips area <= 0; tfds stores the area truncated to an
    # integer (0 for a real sub-pixel area), so that test is left out (w, h >= 1 px remain)
    ok = (bw >= 1 - _BOX_EPS) & (bh >= 1 - _BOX_EPS) & (inter_w > 0) & (inter_h > 0)
    rows = np.nonzero(ok)[0]
    ann_ids = np.asarray(obj.get("id", np.zeros(len(bbox))), np.int64).reshape(-1)
    image_id = int(np.asarray(record.get("image/id", index)))
    segs = obj.get("segmentation")

    def masks(keep):
      if segs is not None:
        return _decode_rles([segs[int(r)] for r in rows[keep]], (h, w))
      if not len(keep):
        return np.zeros((0, h, w), np.uint8)
      coco = self._coco_annotations()
      rles = []
      for r in rows[keep]:
        ann = coco.anns.get(int(ann_ids[r]))
        if ann is None:
          raise DataError(f"{self.name}[{self.split}] image {image_id}: annotation id "
                          f"{int(ann_ids[r])} is not in {self.annotation_file} (another "
                          "COCO release?)")
        rles.append(coco.annToRLE(ann))   # polygons / RLEs at the file's image size
      out = _decode_rles(rles, (h, w))
      if out.shape[1:] != (h, w):
        raise DataError(f"{self.name}[{self.split}] image {image_id}: masks of "
                        f"{out.shape[1:]} in {self.annotation_file}, the image is {(h, w)}")
      return out

    return Annotations(boxes[rows], np.asarray(obj["label"], np.int32).reshape(-1)[rows],
                       np.asarray(obj.get("is_crowd", np.zeros(len(bbox), bool)),
                                  bool).reshape(-1)[rows], image_id, masks)

  def _coco_annotations(self):
    if self._coco is None:
      self._coco = load_coco_annotations(self.annotation_file)
    return self._coco

  # ------------------------------------------------------------------------- examples

  def _example(self, record, index: int, epoch: int) -> dict[str, Any]:
    image = S.decode_image(record["image"], self.spec.channels)
    ann = self._annotations(record, image, index)
    ex = DA.Example.new(image, ann.boxes)
    if self.train:
      ex = DA.train_example(ex, self._example_rng(index, epoch), self.pipeline, self.canvas)
    else:
      try:
        ex = DA.eval_example(ex, self.pipeline, self.canvas)
      except ValueError as e:
        raise DataError(f"{self.name}[{self.split}] example {index}: {e}") from None
    keep, boxes = ex.keep, ex.boxes
    m = self.max_instances
    if len(keep) > m:
      with self._count_lock:
        if not self.truncated_examples:
          logging.getLogger("spikejax").warning(
              "%s[%s]: an image has %d instances, more than max_instances=%d; the first %d "
              "are kept (counted in truncated_instances)", self.name, self.split, len(keep), m,
              m)
        self.truncated_instances += len(keep) - m
        self.truncated_examples += 1
      keep, boxes = keep[:m], boxes[:m]
    # the real content inside the canvas: the maps' non-negative prefix (padding is -1)
    hw = (int((ex.ymap >= 0).sum()), int((ex.xmap >= 0).sum()))
    out = {"image": ex.image, "hw": hw, "boxes": boxes, "classes": ann.classes[keep],
           "iscrowd": ann.iscrowd[keep], "scale": ex.scale, "image_id": ann.image_id}
    if self.pipeline.masks:
      out["masks"] = DA.gather_masks(ann.masks(keep), ex, self.mask_stride)
    return out

  def get_batch(self, epoch: int, step: int) -> Batch:
    """Batch ``step`` of ``epoch``: a pure function of (seed, process, epoch, step)."""
    idx, valid = self.batch_indices(epoch, step)
    global_idx = idx + self.shard[0]
    records = self._source.read(global_idx)
    args = [(r, int(g), epoch) for r, g in zip(records, global_idx, strict=True)]
    out = self._map(lambda a: self._example(*a), args)
    b, m = self.local_batch_size, self.max_instances
    H, W = self.canvas
    images = np.zeros((b, H, W, self.spec.channels), np.uint8)
    hw = np.tile(np.asarray(self.canvas, np.int32), (b, 1))
    boxes = np.zeros((b, m, 4), np.float32)
    classes = np.full((b, m), -1, np.int32)
    valid_rows = np.zeros((b, m), bool)
    crowd = np.zeros((b, m), bool)
    masks = np.zeros((b, m) + self.mask_shape, np.uint8) if self.pipeline.masks else None
    scale = np.ones((b, 2), np.float32)
    image_id = np.full((b,), -1, np.int32)
    for i, o in enumerate(out):
      n = len(o["classes"])
      images[i] = o["image"]
      hw[i] = o["hw"]
      boxes[i, :n], classes[i, :n], crowd[i, :n] = o["boxes"], o["classes"], o["iscrowd"]
      valid_rows[i, :n] = ~o["iscrowd"]
      if masks is not None:
        masks[i, :n] = o["masks"]
      scale[i], image_id[i] = o["scale"], o["image_id"]
    x = T.to_channels(T.normalize(images, self.mean, self.std), self.channels)
    rows = np.arange(H)[None, :, None] < hw[:, 0, None, None]
    cols = np.arange(W)[None, None, :] < hw[:, 1, None, None]
    real = rows & cols
    real[len(out):] = False
    x = np.where(real[..., None], x, 0.0).astype(np.float32)
    batch = {"image": x, "image_hw": hw, "gt_boxes": boxes, "gt_classes": classes,
             "gt_valid": valid_rows, "gt_iscrowd": crowd}
    if masks is not None:
      batch["gt_masks"] = masks
    if not self.train:
      mask = np.zeros((b,), np.float32)
      mask[:valid] = 1.0
      batch.update(mask=mask, scale=scale, image_id=image_id)
    return batch
