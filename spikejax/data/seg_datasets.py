"""tfds dense-prediction data sets built here: ``fashion_mnist_scenes``.

``fashion_mnist_scenes`` (config ``s96``; ``tiny``: its first 256 + 64 scenes): 96 x 96 canvases of 1-4 Fashion-MNIST garments at
random positions and scales (0.8-2.0), later ones occluding earlier ones
(``spikejax.data.scenes.make_scene``); train scenes from the train split's garments, test
scenes from the test split's. The example with key ``i`` of a split is
``make_scene(seed=SPLIT_SEED[split], index=i)``: the data set is deterministic per (seed,
example); tfds stores the records in its own fixed shuffle of the keys. Features::

  image         Image uint8 [S, S, 1] (PNG)
  segmentation  Image uint8 [S, S, 1] (PNG): 0 background, 1 + Fashion-MNIST label
  instances     Image uint8 [S, S, 1] (PNG): 0 none, k + 1 for the k-th visible instance
  boxes         float32 [M, 4] (x0, y0, x1, y1) pixels, x1/y1 exclusive (M = 4, padded 0)
  classes       int32 [M] Fashion-MNIST label of each instance, -1 padding

Built locally from the tfds ``fashion_mnist`` data set (itself built from Debian's files; no
network); TensorFlow encodes the PNGs (the ``data`` extra).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from spikejax.data import scenes
from spikejax.data.event_datasets import FMNIST_CLASSES, fashion_mnist_arrays

SPLIT_SEED = {"train": 0, "test": 1}
CLASS_NAMES = ("background",) + FMNIST_CLASSES


class ScenesConfig(tfds.core.BuilderConfig):
  """Canvas side, garments per scene, scale range and scenes per split."""

  def __init__(self, *, size: int, max_objects: int, scale: tuple[float, float],
               scenes_per_split: dict[str, int], **kwargs):
    super().__init__(**kwargs)
    self.size, self.max_objects, self.scale = size, max_objects, tuple(scale)
    self.scenes_per_split = dict(scenes_per_split)


class FashionMnistScenes(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST scenes for semantic segmentation and detection (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "96x96, 1-4 garments, scale 0.8-2.0, 60000 + 10000 scenes."}
  BUILDER_CONFIGS = [
      ScenesConfig(name="s96", size=96, max_objects=4, scale=(0.8, 2.0),
                   scenes_per_split={"train": 60000, "test": 10000},
                   description="96x96 canvases, 1-4 garments each, scale 0.8-2.0."),
      # the first scenes of s96 (the same seeds), for smoke runs, tests and CI
      ScenesConfig(name="tiny", size=96, max_objects=4, scale=(0.8, 2.0),
                   scenes_per_split={"train": 256, "test": 64},
                   description="The first 256 train and 64 test scenes of s96."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    s, m = c.size, c.max_objects
    return self.dataset_info_from_configs(
        description="Scenes of 1-4 Fashion-MNIST garments with per-pixel classes (0 "
                    "background, 1 + label), visible instance masks and boxes.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 1)),
            "segmentation": tfds.features.Image(shape=(s, s, 1)),
            "instances": tfds.features.Image(shape=(s, s, 1)),
            "boxes": tfds.features.Tensor(shape=(m, 4), dtype=np.float32),
            "classes": tfds.features.Tensor(shape=(m,), dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES), size=s,
                                        max_objects=m, scale=list(c.scale),
                                        split_seed=dict(SPLIT_SEED)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    garments, labels = fashion_mnist_arrays(split, str(self.data_dir_root))
    c = self.builder_config
    for i in range(c.scenes_per_split[split]):
      yield i, as_feature(scenes.make_scene(garments[..., 0], labels, seed=SPLIT_SEED[split],
                                            index=i, size=c.size, max_objects=c.max_objects,
                                            scale=c.scale))


def as_feature(scene: scenes.Scene) -> dict[str, np.ndarray]:
  """One ``Scene`` in the stored layout."""
  instances = np.zeros(scene.semantic.shape, np.uint8)
  for k in range(len(scene.masks)):
    instances[scene.masks[k]] = k + 1
  return {"image": scene.image, "segmentation": scene.semantic[..., None],
          "instances": instances[..., None], "boxes": scene.boxes, "classes": scene.classes}


def prepare_fashion_mnist_scenes(data_dir: str | None = None, *, config: str = "s96",
                                 max_examples_per_split: int | None = None) -> str:
  """Build ``fashion_mnist_scenes/<config>`` (array_record) into ``data_dir``; returns its
  directory (``s96``: about 2 minutes here). ``max_examples_per_split`` builds only the first
  scenes of each split."""
  builder = tfds.builder(f"fashion_mnist_scenes/{config}", data_dir=data_dir)
  config = tfds.download.DownloadConfig(max_examples_per_split=max_examples_per_split)
  builder.download_and_prepare(file_format="array_record", download_config=config)
  return builder.data_dir


def mock_scene_parse150(spec, split: str, *, data_dir=None, download=True):
  """``scene_parse150_mock``: 24 train / 4 validation synthetic ADE20K-like records made in
  memory (RGB images of four sizes, portrait and landscape; ``annotation`` maps of 0..150, 0
  being ADE20K's "other"), a pure function of the split. For smoke runs and tests of the
  ADE20K pipeline where the real data cannot be had."""
  del spec, data_dir, download
  from spikejax.data.sources import RecordSource   # pylint: disable=import-outside-toplevel
  base = split.split("[")[0]
  n = {"train": 24, "validation": 4}.get(base)
  if n is None:
    raise ValueError(f"scene_parse150_mock has splits 'train' and 'validation', got {split!r}")
  sizes = [(96, 128), (128, 96), (80, 80), (100, 150)]
  records = []
  for i in range(n):
    rng = np.random.default_rng([7, 0 if base == "train" else 1, i])
    h, w = sizes[i % len(sizes)]
    label = np.zeros((h, w), np.uint8)
    for _ in range(6):   # rectangles of random classes over "other" (0)
      y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
      label[y0:y0 + rng.integers(8, h // 2), x0:x0 + rng.integers(8, w // 2)] = \
          rng.integers(1, 151)
    image = (rng.integers(0, 60, (h, w, 3)) + (label[..., None] * [1, 3, 7]) % 196)
    records.append({"image": image.astype(np.uint8), "annotation": label})
  return RecordSource(records, location="<scene_parse150_mock>")


# --------------------------------------------------------------------------- coco_mock

#: (height, width) of the mock's images: landscape, portrait, square.
COCO_MOCK_SIZES = ((96, 128), (128, 96), (80, 120), (120, 80), (64, 64), (100, 150),
                   (150, 100), (72, 96))
COCO_MOCK_SPLITS = {"train": (8, 100), "validation": (4, 900)}   # examples, first image id
COCO_MOCK_CATEGORIES = ((0, 1, "person"), (1, 2, "bicycle"), (2, 3, "car"), (3, 4, "motorcycle"),
                        (4, 5, "airplane"))   # (label, COCO category id, name)


def mock_coco_examples(split: str) -> list[dict]:
  """The ``coco_mock`` examples of ``split`` (a pure function of it) as plain arrays:
  ``image`` uint8 ``[h, w, 3]``, ``image_id``, and per instance (annotation order)
  ``masks`` bool ``[n, h, w]`` (visible pixels; later shapes occlude earlier ones), ``boxes``
  ``[n, 4]`` ``(x1, y1, x2, y2)`` pixels (the masks' extents, x2/y2 exclusive), ``labels``
  (0..4), ``iscrowd``, ``ids`` (annotation ids). Train example 1 and validation example 0 end
  with a crowd region (scattered dots); train example 2 has 10 instances (more than the
  mock's ``max_instances`` of 8)."""
  base = split.split("[")[0]
  if base not in COCO_MOCK_SPLITS:
    raise ValueError(f"coco_mock has splits 'train' and 'validation', got {split!r}")
  n, first_id = COCO_MOCK_SPLITS[base]
  out = []
  for i in range(n):
    rng = np.random.default_rng([11, 0 if base == "train" else 1, i])
    h, w = COCO_MOCK_SIZES[(i + (3 if base == "validation" else 0)) % len(COCO_MOCK_SIZES)]
    image = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
    owner = np.full((h, w), -1, np.int32)
    count = 10 if (base, i) == ("train", 2) else int(rng.integers(2, 6))
    labels, crowd = [], []
    yy, xx = np.mgrid[:h, :w]
    for k in range(count):
      ph, pw = int(rng.integers(8, h // 2)), int(rng.integers(8, w // 2))
      y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
      if rng.random() < 0.5:    # a rectangle
        shape = (yy >= y0) & (yy < y0 + ph) & (xx >= x0) & (xx < x0 + pw)
      else:                     # an ellipse
        cy, cx = y0 + (ph - 1) / 2, x0 + (pw - 1) / 2
        shape = ((yy - cy) / (ph / 2)) ** 2 + ((xx - cx) / (pw / 2)) ** 2 <= 1
      owner[shape] = k
      label = int(rng.integers(0, len(COCO_MOCK_CATEGORIES)))
      image[shape] = np.asarray([60 + 40 * label, 200 - 30 * label, 50 + 35 * k % 200])
      labels.append(label)
      crowd.append(False)
    if (base, i) in (("train", 1), ("validation", 0)):   # a crowd of dots, on top
      dots = ((yy % 6 < 2) & (xx % 6 < 2) & (yy < h // 3) & (xx < w // 3))
      owner[dots] = count
      image[dots] = 230
      labels.append(0)
      crowd.append(True)
    masks, boxes, keep = [], [], []
    for k in range(len(labels)):
      m = owner == k
      if m.sum() < 4:           # hidden under later shapes: not annotated
        continue
      ys, xs = np.nonzero(m)
      masks.append(m)
      boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
      keep.append(k)
    image_id = first_id + i
    out.append({"image": image, "image_id": image_id, "masks": np.asarray(masks, bool),
                "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "labels": np.asarray([labels[k] for k in keep], np.int64),
                "iscrowd": np.asarray([crowd[k] for k in keep], bool),
                "ids": np.asarray([image_id * 100 + k for k in keep], np.int64)})
  return out


def _encode_png(image: np.ndarray) -> bytes:
  import io   # pylint: disable=import-outside-toplevel
  from PIL import Image   # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def mock_coco(spec, split: str, *, data_dir=None, download=True, masks: bool = True):
  """``coco_mock``: ``mock_coco_examples(split)`` in tfds ``coco/2017``'s record layout
  (``image`` encoded (PNG, lossless), ``image/id``, ``image/filename``, ``objects`` with
  ``bbox`` normalised ``(ymin, xmin, ymax, xmax)`` float32, ``label``, ``is_crowd``, ``id``,
  ``area``) plus ``objects/segmentation``: the instance masks as compressed COCO RLEs
  (``masks=False``: left out, as in the real tfds records; the masks then come from the
  annotation file, ``write_mock_coco_annotations``). A pure function of the split."""
  del spec, data_dir, download
  from pycocotools import mask as mask_util  # pylint: disable=import-outside-toplevel
  from spikejax.data.sources import RecordSource   # pylint: disable=import-outside-toplevel
  records = []
  for ex in mock_coco_examples(split):
    h, w = ex["image"].shape[:2]
    b = ex["boxes"]
    objects = {"bbox": np.stack([b[:, 1] / h, b[:, 0] / w, b[:, 3] / h, b[:, 2] / w],
                                -1).astype(np.float32).reshape(-1, 4),
               "label": ex["labels"], "is_crowd": ex["iscrowd"], "id": ex["ids"],
               "area": ex["masks"].reshape(len(b), -1).sum(-1).astype(np.int64)}
    if masks:
      objects["segmentation"] = [mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                                 for m in ex["masks"]]
    records.append({"image": _encode_png(ex["image"]), "image/id": ex["image_id"],
                    "image/filename": f"{ex['image_id']:012d}.png", "objects": objects})
  return RecordSource(records, location="<coco_mock>")


def write_mock_coco_annotations(directory: str, split: str) -> str:
  """Write ``coco_mock``'s ``instances_{train,val}2017.json`` (the official file's layout:
  ``images``, ``annotations`` with ``segmentation`` (polygon-free: RLE, uncompressed for the
  crowd regions as COCO stores them, compressed otherwise), ``bbox`` ``[x, y, w, h]``,
  ``iscrowd``, ``category_id``, ``categories``) into ``directory``; returns its path."""
  import json   # pylint: disable=import-outside-toplevel
  import os   # pylint: disable=import-outside-toplevel
  from pycocotools import mask as mask_util  # pylint: disable=import-outside-toplevel
  base = split.split("[")[0]
  images, anns = [], []
  cat_id = {label: cid for label, cid, _ in COCO_MOCK_CATEGORIES}
  for ex in mock_coco_examples(base):
    h, w = ex["image"].shape[:2]
    images.append({"id": int(ex["image_id"]), "height": h, "width": w,
                   "file_name": f"{ex['image_id']:012d}.png"})
    for m, b, label, crowd, ann_id in zip(ex["masks"], ex["boxes"], ex["labels"],
                                           ex["iscrowd"], ex["ids"]):
      if crowd:   # COCO's crowd regions: uncompressed RLE (column-major run lengths)
        flat = m.reshape(-1, order="F").astype(np.int8)
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        runs = np.diff(bounds).tolist()
        seg = {"size": [h, w], "counts": ([0] if flat[0] else []) + runs}
      else:
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
      anns.append({"id": int(ann_id), "image_id": int(ex["image_id"]),
                   "category_id": cat_id[int(label)], "iscrowd": int(crowd),
                   "segmentation": seg, "area": float(m.sum()),
                   "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
  cats = [{"id": cid, "name": name, "supercategory": name}
          for _, cid, name in COCO_MOCK_CATEGORIES]
  name = {"train": "train2017", "validation": "val2017"}[base]
  path = os.path.join(directory, f"instances_{name}.json")
  os.makedirs(directory, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"images": images, "annotations": anns, "categories": cats}, f)
  return path
