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
