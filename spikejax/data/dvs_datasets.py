"""tfds builders for recorded DVS data sets (manual download) and the HAR-DVS clip transform.

Public API::

  Cifar10Dvs            # tfds name 'cifar10_dvs': the CIFAR10-DVS release (.aedat, DVS128)
  Cifar10DvsConfig(train_fraction=0.9, name=..., ...)
  cifar10_dvs_config(train_fraction) -> Cifar10DvsConfig   # the default one for 0.9
  prepare_cifar10_dvs(manual_dir, data_dir=None, *, train_fraction=0.9) -> str

  HarDvs                # tfds name 'har_dvs': the HAR-DVS release (rawframes + label lists)
  prepare_har_dvs(manual_dir, data_dir=None) -> str

  hardvs_clip(frames, time_steps=8, *, train, rng, size=224, resize=256, eval_start='random')
      -> float32 [T, size, size, 2]                       # spec section 6.1 per-sample input

  natural_sort_key(name)  # 'rec_2' < 'rec_10'

Building needs TensorFlow (tfds' writer); use ``file_format='array_record'`` to read the result
back with ``tfds.data_source`` without TensorFlow. Both data sets must be downloaded by hand
(``MANUAL_DOWNLOAD_INSTRUCTIONS``); pass their directory as
``tfds.download.DownloadConfig(manual_dir=...)``.

``cifar10_dvs`` examples use the shared event layout of ``spikejax.data.event_datasets``
(``events/{t,x,y,p}``, ``label``) plus ``file`` (``'<class>/<file name>'``). Timestamps are
relative to the recording's first event. The release has no official train/test split. The
common convention is the first 90 % of each class's recordings (900 of 1000, ordered by the
number in the file name) for ``train`` and the remaining 10 % for ``test``;
``Cifar10DvsConfig(train_fraction=...)`` changes the fraction. Each class keeps
``round(train_fraction * n)`` recordings for ``train``. A non-default fraction is a config
that tfds does not know by name: build it with ``prepare_cifar10_dvs(..., train_fraction=f)``
(or ``Cifar10Dvs(config=cifar10_dvs_config(f))``) and read the returned directory with
``tfds.builder_from_directory(dir).as_data_source(split)``.

``har_dvs`` examples hold ``frames`` (the video's pre-rendered event-frame images, DAVIS346
346x260, as greyscale PNG), ``label`` (300 classes) and ``video`` (the path as written in the
sample list). Frames are in natural file-name order. The official loader (``hardvs_dataset1.py``,
spec section 6.1) uses the unsorted ``os.listdir`` order, which depends on the file system. That
is a quirk, not a convention, so this builder sorts instead. ``hardvs_clip`` turns the frames of
one example into the model input.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from spikejax.data import transforms
from spikejax.data.errors import MissingDataError
from spikejax.data.event_datasets import as_feature, event_features

CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                       "ship", "truck")
#: DVS128 (width, height).
CIFAR10_DVS_SENSOR_SIZE = (128, 128)
HARDVS_NUM_CLASSES = 300
#: DAVIS346 (width, height).
HARDVS_SENSOR_SIZE = (346, 260)
#: Frame-image suffixes ``har_dvs`` reads (case-insensitive); other files are ignored.
HARDVS_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Sample lists: split name -> file in the manual directory (``validation`` is optional).
HARDVS_LISTS = {"train": "train_label.txt", "test": "test_label.txt",
                "validation": "val_label.txt"}

_INT32_MAX = np.iinfo(np.int32).max


def natural_sort_key(name: str) -> tuple:
  """Sort key that orders embedded numbers numerically ('a_2.aedat' < 'a_10.aedat')."""
  parts = re.split(r"(\d+)", name)
  return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in parts if s != "")


def _manual_dir(dl_manager, dataset: str, expected: str) -> pathlib.Path:
  """The manual directory, with an error naming it and the expected layout if unusable."""
  path = getattr(dl_manager, "_manual_dir", None)
  if path is None:  # a download manager without the private attribute: tfds' own check
    return pathlib.Path(os.fspath(dl_manager.manual_dir))
  path = pathlib.Path(os.fspath(path))
  if not path.is_dir() or not any(path.iterdir()):
    state = "is empty" if path.is_dir() else "does not exist"
    raise MissingDataError(
        f"{dataset}: the manual directory {path} {state}. Expected {expected}. Download the data "
        f"by hand and pass its directory with "
        f"download_config=tfds.download.DownloadConfig(manual_dir=...).")
  return path


# --------------------------------------------------------------------------- CIFAR10-DVS

_CIFAR10_DVS_LAYOUT = ("one folder per class, <manual_dir>/<class>/*.aedat, for the 10 classes "
                       + ", ".join(CIFAR10_DVS_CLASSES))

_CIFAR10_DVS_INSTRUCTIONS = f"""\
CIFAR10-DVS (Li et al., "CIFAR10-DVS: An Event-Stream Dataset for Object Classification",
Frontiers in Neuroscience 2017): 10,000 recordings (1,000 per class) of CIFAR-10 images moving on
a monitor, filmed by a DVS128 camera (128x128) and saved as jAER AEDAT 2.0 files.

Download the per-class archives (airplane.zip, ..., truck.zip) of the original release from
figshare (https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671, DOI
10.6084/m9.figshare.4724671) and extract each archive into `manual_dir`, giving
{_CIFAR10_DVS_LAYOUT}:

  manual_dir/airplane/cifar10_airplane_0.aedat ... cifar10_airplane_999.aedat
  manual_dir/automobile/...
  ...
  manual_dir/truck/...

Then build with
  tfds.builder("cifar10_dvs").download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
(or spikejax.data.dvs_datasets.prepare_cifar10_dvs(manual_dir)).
"""


def _fraction_name(train_fraction: float) -> str:
  return "split" + format(float(train_fraction), ".6g").replace(".", "p")


class Cifar10DvsConfig(tfds.core.BuilderConfig):
  """CIFAR10-DVS split convention: the first ``train_fraction`` of each class is ``train``."""

  def __init__(self, *, train_fraction: float = 0.9, name: str | None = None, **kwargs):
    train_fraction = float(train_fraction)
    if not 0.0 < train_fraction < 1.0:
      raise ValueError(f"Cifar10DvsConfig: train_fraction must lie in (0, 1), got "
                       f"{train_fraction}")
    kwargs.setdefault(
        "description",
        f"First round({train_fraction:g} * n) recordings of each class (natural order of the "
        f"file names) for train, the rest for test.")
    super().__init__(name=name or _fraction_name(train_fraction), **kwargs)
    self.train_fraction = train_fraction


def cifar10_dvs_config(train_fraction: float = 0.9) -> Cifar10DvsConfig:
  """The builder config for ``train_fraction`` (the registered default one for 0.9)."""
  for config in Cifar10Dvs.BUILDER_CONFIGS:
    if config.train_fraction == float(train_fraction):
      return config
  return Cifar10DvsConfig(train_fraction=train_fraction)


def cifar10_dvs_files(manual_dir: str | os.PathLike) -> dict[str, list[pathlib.Path]]:
  """Class name -> its ``.aedat`` files in natural file-name order.

  Raises:
    FileNotFoundError: a class folder is missing or holds no ``.aedat`` file.
  """
  root = pathlib.Path(os.fspath(manual_dir))
  files = {}
  for name in CIFAR10_DVS_CLASSES:
    folder = root / name
    if not folder.is_dir():
      raise MissingDataError(
          f"cifar10_dvs: class folder {folder} does not exist. Expected {_CIFAR10_DVS_LAYOUT} "
          f"(extract {name}.zip of the release into {root}).")
    found = [p for p in folder.iterdir() if p.suffix.lower() == ".aedat" and p.is_file()]
    if not found:
      raise MissingDataError(f"cifar10_dvs: class folder {folder} holds no .aedat file. "
                              f"Expected {_CIFAR10_DVS_LAYOUT}.")
    files[name] = sorted(found, key=lambda p: natural_sort_key(p.name))
  return files


class Cifar10Dvs(tfds.core.GeneratorBasedBuilder):
  """CIFAR10-DVS event streams from the original release (manual download)."""

  name = "cifar10_dvs"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Events of the original AEDAT 2.0 release, 90/10 split per class."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _CIFAR10_DVS_INSTRUCTIONS
  BUILDER_CONFIGS = [Cifar10DvsConfig(train_fraction=0.9)]

  def _info(self) -> tfds.core.DatasetInfo:
    features = dict(event_features(names=CIFAR10_DVS_CLASSES))
    features["file"] = tfds.features.Text()
    return self.dataset_info_from_configs(
        description="CIFAR10-DVS: CIFAR-10 images moving on a screen, recorded by a DVS128 "
                    "event camera. Events relative to each recording's first event; `file` is "
                    "'<class>/<file name>' of the release. There is no official split: "
                    f"{self.builder_config.description}",
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("events", "label"),
        homepage="https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671",
        metadata=tfds.core.MetadataDict(sensor_size=list(CIFAR10_DVS_SENSOR_SIZE),
                                        train_fraction=self.builder_config.train_fraction),
    )

  def _split_generators(self, dl_manager):
    root = _manual_dir(dl_manager, "cifar10_dvs", _CIFAR10_DVS_LAYOUT)
    files = cifar10_dvs_files(root)
    train, test = [], []
    for label, name in enumerate(CIFAR10_DVS_CLASSES):
      paths = files[name]
      n_train = min(len(paths), max(0, int(round(self.builder_config.train_fraction
                                                  * len(paths)))))
      train += [(label, name, p) for p in paths[:n_train]]
      test += [(label, name, p) for p in paths[n_train:]]
    return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

  def _generate_examples(self, items):
    from spikejax.data import events  # pylint: disable=import-outside-toplevel
    for label, name, path in items:
      stream = events.read_aedat2(path)
      t = stream.t - stream.t[0] if len(stream) else stream.t
      if len(t) and t[-1] > _INT32_MAX:
        raise ValueError(f"cifar10_dvs: {path} spans {t[-1]} us, more than the int32 "
                         "microseconds (~35 minutes) of the stored layout")
      key = f"{name}/{path.name}"
      yield key, {"events": as_feature(t, stream.x, stream.y, stream.p), "label": label,
                  "file": key}


def prepare_cifar10_dvs(manual_dir: str | os.PathLike, data_dir: str | None = None, *,
                        train_fraction: float = 0.9,
                        max_examples_per_split: int | None = None) -> str:
  """Build ``cifar10_dvs`` (array_record) from the release in ``manual_dir``; returns its dir."""
  builder = Cifar10Dvs(data_dir=data_dir, config=cifar10_dvs_config(train_fraction))
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir),
                                        max_examples_per_split=max_examples_per_split)
  builder.download_and_prepare(file_format="array_record", download_config=config)
  return builder.data_dir


# --------------------------------------------------------------------------- HAR-DVS

_HARDVS_LAYOUT = ("<manual_dir>/train_label.txt and <manual_dir>/test_label.txt (optionally "
                  "val_label.txt), one sample per line as '<video path> <n> <label>', and the "
                  "frame images of each video in <manual_dir>/rawframes/<video path>/*.png|jpg")

_HARDVS_INSTRUCTIONS = f"""\
HAR-DVS (Wang et al., "HARDVS: Revisiting Human Activity Recognition with Dynamic Vision
Sensors", AAAI 2024): about 107,000 DAVIS346 (346x260) recordings of 300 human activities.

Get the release's pre-rendered event-frame images ("rawframes") and the sample lists from the
links in https://github.com/Event-AHU/HARDVS and lay them out as
{_HARDVS_LAYOUT}:

  manual_dir/train_label.txt       # lines '<video path> <n> <label 0..299>'
  manual_dir/test_label.txt
  manual_dir/val_label.txt         # optional -> 'validation' split
  manual_dir/rawframes/<video path>/0001.png ...

A video path is looked up as <manual_dir>/rawframes/<path>, then <manual_dir>/<path>; an
absolute path is used as is when it exists, otherwise its part after a 'rawframes' component is
looked up under <manual_dir>/rawframes. Images may be colour or grey; they are stored as 8-bit
greyscale PNG (PIL's convert('L')).

Then build with
  tfds.builder("har_dvs").download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
(or spikejax.data.dvs_datasets.prepare_har_dvs(manual_dir)).
"""


def parse_hardvs_list(path: str | os.PathLike) -> list[tuple[str, int]]:
  """``[(video path, label)]`` from a HAR-DVS sample list (lines ``path _ label``).

  Blank lines are skipped. Raises ``ValueError`` naming the file and line of a malformed entry.
  """
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      parts = line.rsplit(None, 2)
      if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
        raise ValueError(f"har_dvs: {path}:{lineno}: expected '<video path> <n> <label>', got "
                         f"{line!r}")
      label = int(parts[2])
      if not 0 <= label < HARDVS_NUM_CLASSES:
        raise ValueError(f"har_dvs: {path}:{lineno}: label {label} is outside "
                         f"[0, {HARDVS_NUM_CLASSES})")
      out.append((parts[0], label))
  return out


def resolve_hardvs_video(manual_dir: str | os.PathLike, video: str) -> pathlib.Path | None:
  """The frame folder of ``video`` (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``), None if absent."""
  root = pathlib.Path(os.fspath(manual_dir))
  rel = pathlib.PurePosixPath(video.replace("\\", "/"))
  candidates = []
  if rel.is_absolute():
    candidates.append(pathlib.Path(str(rel)))
    parts = rel.parts
    if "rawframes" in parts:
      i = len(parts) - 1 - parts[::-1].index("rawframes")
      candidates.append(root.joinpath("rawframes", *parts[i + 1:]))
  else:
    candidates += [root.joinpath("rawframes", *rel.parts), root.joinpath(*rel.parts)]
  for c in candidates:
    if c.is_dir():
      return c
  return None


def hardvs_frame_files(video_dir: str | os.PathLike) -> list[pathlib.Path]:
  """The frame images of one video folder, in natural file-name order."""
  files = [p for p in pathlib.Path(os.fspath(video_dir)).iterdir()
           if p.suffix.lower() in HARDVS_FRAME_SUFFIXES and p.is_file()]
  return sorted(files, key=lambda p: natural_sort_key(p.name))


def _grey_png(path: pathlib.Path) -> tuple[bytes, tuple[int, int]]:
  """(PNG bytes of the 8-bit grey image, (width, height)); a grey PNG is kept byte for byte."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.format == "PNG" and im.mode == "L" and "transparency" not in im.info:
        return data, im.size
      grey = im.convert("L")
  except (OSError, ValueError) as e:
    raise ValueError(f"har_dvs: cannot read the frame image {path}: {e}") from e
  buf = io.BytesIO()
  grey.save(buf, format="PNG")
  return buf.getvalue(), grey.size


class HarDvs(tfds.core.GeneratorBasedBuilder):
  """HAR-DVS pre-rendered event-frame videos with the official sample lists (manual download)."""

  name = "har_dvs"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Official rawframes as grey PNG, natural frame order."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _HARDVS_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="HAR-DVS: human activity recognition, 300 classes, DAVIS346 event "
                    "recordings as the release's pre-rendered event-frame images (grey). "
                    "Frames in natural file-name order (the official loader uses the "
                    "unsorted os.listdir order). `video` is the path of the sample list.",
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 1))),
            "label": tfds.features.ClassLabel(num_classes=HARDVS_NUM_CLASSES),
            "video": tfds.features.Text(),
        }),
        supervised_keys=("frames", "label"),
        homepage="https://github.com/Event-AHU/HARDVS",
        metadata=tfds.core.MetadataDict(sensor_size=list(HARDVS_SENSOR_SIZE)),
    )

  def _split_generators(self, dl_manager):
    root = _manual_dir(dl_manager, "har_dvs", _HARDVS_LAYOUT)
    splits = {}
    for split, fname in HARDVS_LISTS.items():
      path = root / fname
      if not path.is_file():
        if split == "validation":
          continue
        raise MissingDataError(f"har_dvs: the sample list {path} does not exist. Expected "
                                f"{_HARDVS_LAYOUT}.")
      entries = []
      missing = []
      for video, label in parse_hardvs_list(path):
        folder = resolve_hardvs_video(root, video)
        if folder is None:
          missing.append(video)
        entries.append((video, label, folder))
      if missing:
        raise MissingDataError(
            f"har_dvs: {len(missing)} video folder(s) of {path} are missing, e.g. "
            f"{missing[:3]} (looked up as {root / 'rawframes'}/<path> and {root}/<path>). "
            f"Expected {_HARDVS_LAYOUT}.")
      splits[split] = self._generate_examples(entries)
    return splits

  def _generate_examples(self, entries) -> Iterator:
    # One video in memory at a time: the frames' encoded bytes.
    for i, (video, label, folder) in enumerate(entries):
      frames, size = [], None
      for f in hardvs_frame_files(folder):
        data, wh = _grey_png(f)
        if size is not None and wh != size:
          raise ValueError(f"har_dvs: frame {f} is {wh[0]}x{wh[1]} but the earlier frames of "
                           f"{folder} are {size[0]}x{size[1]}")
        size = wh
        frames.append(data)
      # The line index keeps repeated list entries distinct (each line is one sample).
      yield f"{i:08d}:{video}", {"frames": frames, "label": label, "video": video}


def prepare_har_dvs(manual_dir: str | os.PathLike, data_dir: str | None = None, *,
                    max_examples_per_split: int | None = None) -> str:
  """Build ``har_dvs`` (array_record) from the release in ``manual_dir``; returns its dir."""
  builder = HarDvs(data_dir=data_dir)
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir),
                                        max_examples_per_split=max_examples_per_split)
  builder.download_and_prepare(file_format="array_record", download_config=config)
  return builder.data_dir


# --------------------------------------------------------------------------- HAR-DVS clip


def _as_grey(frame) -> np.ndarray:
  """One frame -> uint8 [H, W, 1]."""
  a = np.asarray(frame)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim != 2:
    raise ValueError(f"hardvs_clip: frames must be grey [H, W] or [H, W, 1], got shape "
                     f"{np.asarray(frame).shape}")
  if a.dtype != np.uint8:
    raise ValueError(f"hardvs_clip: frames must be uint8 (decoded images), got {a.dtype}")
  return a[..., None]


def hardvs_clip(frames: np.ndarray | Sequence[np.ndarray], time_steps: int = 8, *, train: bool,
                rng: np.random.Generator | int | None, size: int = 224, resize: int = 256,
                eval_start: str = "random", interpolation: str = "bicubic") -> np.ndarray:
  """One HAR-DVS sample's model input (spec section 6.1, ``hardvs_dataset1.py``).

  1. T = ``time_steps`` consecutive frames from a start uniform in ``[0, n - T]``
     (``events.hardvs_sample_frames``). As in the official code this is random at test time
     too. ``eval_start='center'`` (a deviation, for reproducible evaluation) takes the start
     ``(n - T) // 2`` when ``train`` is False. With n < T frames the clip starts at frame 0 and
     its last T - n steps are all-zero (both channels 0, i.e. zeros after the transform).
  2. Per frame: Resize(``resize``, bicubic, shorter side; ``transforms.resize_shorter_side``)
     -> CenterCrop(``size``) -> train only: horizontal flip with p = 0.5 drawn independently
     per frame -> p = value / 255 in [0, 1] -> the 2 binary channels of
     ``events.hardvs_frame_channels`` (ch0 = 1[p < 0.12], ch1 = 1[0.3 < p <= 0.78]).

  Args:
    frames: [n, H, W] or [n, H, W, 1] uint8 grey frames (e.g. a ``har_dvs`` example's
      ``frames``), or a sequence of such frames; n may be 0 (tfds decodes a video without
      frames as an empty array of shape (0,), which gives all-zero steps).
    time_steps: T.
    train: training mode (flips; ``eval_start`` applies only when False).
    rng: ``np.random.Generator`` or seed; draws the start, then one flip per real frame.
    size, resize: crop side and shorter-side resize target (224, 256 in the official code).
    eval_start: ``'random'`` (official) or ``'center'``.
    interpolation: PIL filter name for the resize.

  Returns:
    float32 [T, size, size, 2] (NHWC) with values in {0, 1}.
  """
  from spikejax.data import events  # pylint: disable=import-outside-toplevel
  if eval_start not in ("random", "center"):
    raise ValueError(f"hardvs_clip: eval_start must be 'random' or 'center', got {eval_start!r}")
  rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  n = len(frames)
  if not train and eval_start == "center":
    steps = int(time_steps)
    if steps < 1:
      raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}")
    start = max(0, (n - steps) // 2)
    idx = start + np.arange(steps)
    mask = idx < n
    idx = np.where(mask, idx, 0)
  else:
    idx, mask = events.hardvs_sample_frames(n, time_steps, rng)
  out = np.zeros((len(idx), size, size, 2), np.float32)
  for k, (i, valid) in enumerate(zip(idx, mask)):
    if not valid:
      continue
    img = transforms.resize_shorter_side(_as_grey(frames[int(i)]), resize, interpolation)
    img = transforms.center_crop(img, size)[..., 0]
    if train and rng.random() < 0.5:
      img = img[:, ::-1]
    out[k] = events.hardvs_frame_channels(img)
  return out
