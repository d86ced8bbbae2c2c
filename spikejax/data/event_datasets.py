"""tfds event-classification data sets: one feature layout for every event stream.

Every example holds one recording as four equal-length vectors and a label::

  events/t  int32  [n]  microseconds from the start of the recording, non-decreasing
  events/x  uint16 [n]  pixel column
  events/y  uint16 [n]  pixel row
  events/p  uint8  [n]  polarity, 1 = ON
  label     ClassLabel

``spikejax.data.get_dataset`` turns them into frames (``spikejax.data.events``) at read time,
so the number of frames T, equal-time or equal-count binning and counts or binary frames are
options of the input pipeline, not of the stored data.

``event_fashion_mnist``: Fashion-MNIST turned into event streams by ``spikejax.data.emulate``
(saccades in front of a static image, like N-MNIST). Built locally from the tfds
``fashion_mnist`` data set (itself built from Debian's files, no network). Results on it are
results on *emulated* events.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from spikejax.data import emulate, sources
from spikejax.data import fashion_mnist as fmnist

FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")


def event_features(num_classes: int | None = None, names=None) -> tfds.features.FeaturesDict:
  """The shared feature layout (module docstring)."""
  label = tfds.features.ClassLabel(names=names) if names is not None else \
      tfds.features.ClassLabel(num_classes=num_classes)
  return tfds.features.FeaturesDict({
      "events": tfds.features.FeaturesDict({
          "t": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "x": tfds.features.Tensor(shape=(None,), dtype=np.uint16),
          "y": tfds.features.Tensor(shape=(None,), dtype=np.uint16),
          "p": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
      }),
      "label": label,
  })


def as_feature(t, x, y, p) -> dict[str, np.ndarray]:
  """One stream in the stored layout (checks and casts)."""
  t, x, y, p = (np.asarray(a) for a in (t, x, y, p))
  if not (t.ndim == x.ndim == y.ndim == p.ndim == 1 and
          len(t) == len(x) == len(y) == len(p)):
    raise ValueError(f"events must be four 1-D arrays of one length; got shapes "
                     f"{t.shape}, {x.shape}, {y.shape}, {p.shape}")
  return {"t": t.astype(np.int32), "x": x.astype(np.uint16), "y": y.astype(np.uint16),
          "p": p.astype(np.uint8)}


def fashion_mnist_arrays(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """The tfds ``fashion_mnist`` split (uint8 [N, 28, 28, 1], int32 [N]), in its prepared order;
  prepared from Debian's files first when absent (``fashion_mnist.prepare_fashion_mnist``)."""
  source = sources.open_tfds_source("fashion_mnist", split, data_dir=data_dir, download=True,
                                    in_memory=True, prepare=fmnist.prepare_fashion_mnist,
                                    hint=fmnist.PREPARE_HINT)
  return sources.load_arrays(source, channels=1)


class EventFashionMnistConfig(tfds.core.BuilderConfig):
  """A builder config holding the emulated sensor (``emulate.EmulatorConfig``)."""

  def __init__(self, *, emulator: emulate.EmulatorConfig, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.emulator = emulator
    self.seed = seed


class EventFashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST as emulated DVS event streams (N-MNIST recording geometry)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Emulated saccades, 34x34 sensor, 3 x 100 ms."}
  BUILDER_CONFIGS = [
      EventFashionMnistConfig(
          name="saccade34", emulator=emulate.EmulatorConfig(),
          description="34x34 window, three 100 ms saccades of 3 px along a triangle, "
                      "contrast threshold 0.4 (5 % mismatch), 0.5 Hz noise per pixel."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.emulator.sensor
    return self.dataset_info_from_configs(
        description="Fashion-MNIST turned into event streams by an emulated event camera "
                    "moving in front of the image (spikejax.data.emulate). EMULATED data.",
        features=event_features(names=FMNIST_CLASSES),
        supervised_keys=("events", "label"),
        metadata=tfds.core.MetadataDict(sensor_size=[s, s],
                                        duration_us=self.builder_config.emulator.duration_us),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

  def _generate_examples(self, split: str):
    images, labels = fashion_mnist_arrays(split, str(self.data_dir_root))
    cfg, seed = self.builder_config.emulator, self.builder_config.seed
    chunk = 512
    for lo in range(0, len(images), chunk):
      streams = emulate.emulate_events(images[lo:lo + chunk], lo, seed=seed, config=cfg)
      for j, ev in enumerate(streams):
        yield lo + j, {"events": as_feature(ev["t"], ev["x"], ev["y"], ev["p"]),
                       "label": int(labels[lo + j])}


def prepare_event_fashion_mnist(data_dir: str | None = None, *,
                                max_examples_per_split: int | None = None) -> str:
  """Build ``event_fashion_mnist`` (array_record) into ``data_dir``; returns its directory.

  Needs the tfds ``fashion_mnist`` data set (built on the fly from Debian's files,
  ``apt-get install -y dataset-fashion-mnist``) and TensorFlow (tfds' writer).
  """
  builder = tfds.builder("event_fashion_mnist", data_dir=data_dir)
  config = tfds.download.DownloadConfig(max_examples_per_split=max_examples_per_split)
  builder.download_and_prepare(file_format="array_record", download_config=config)
  return builder.data_dir
