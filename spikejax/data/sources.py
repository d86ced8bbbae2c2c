"""Random-access example sources: what a ``DatasetSpec.builder`` returns and pipelines read.

A *source* is a sized, random-access collection of records (``dict``s) with ``metadata``:

* ``len(source)``: number of examples of the split;
* ``source.read(indices) -> list[dict]``: the records at ``indices`` (in that order);
* ``source.metadata``: a mapping of facts stored with the data (e.g. ``sensor_size``);
* ``source.location``: where it was read from (for messages).

Record layouts by data set kind (``DatasetSpec.kind``):

* ``'image'``: ``{'image': PNG/JPEG bytes or uint8 [H, W, C], 'label': int}``;
* ``'segmentation'``: ``{'image': ..., <label_feature>: PNG bytes or uint8 [H, W]}``;
* ``'event'`` (``event_format='events'``): ``{'events': {'t', 'x', 'y', 'p'}, 'label'}``
  (``spikejax.data.event_datasets`` layout); (``'frame_images'``): ``{'frames': [T, H, W(, 1)]
  uint8, 'label'}`` (``har_dvs``).

Sources here: ``ArraySource`` (in-memory image arrays), ``RecordSource`` (a list of records),
``TfdsSource`` (a tfds ``data_source``; array_record files, no TensorFlow at read time), and
``TfdsBuilder``, the builder of any tfds data set. ``load_arrays`` decodes an image source into
uint8 arrays, cached per process and (tfds sources) on disk in ``cache_dir()``. Nothing here
knows a particular data set; the registry (``spikejax.data.registry``) says which builder
serves which.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from spikejax.data import transforms as T


class Source(Protocol):
  """What pipelines read (module docstring)."""
  metadata: Mapping[str, Any]
  location: str

  def __len__(self) -> int: ...

  def read(self, indices: Sequence[int]) -> list[dict[str, Any]]: ...


class ArraySource:
  """Images and labels held in memory: records ``{'image': uint8 [H, W, C], 'label': int}``.

  ``images``: uint8 ``[N, H, W, C]`` (``[N, H, W]`` gets a channel axis); ``labels``: ints
  ``[N]``. ``arrays(start, end)`` gives read-only views, so image pipelines skip decoding.
  """

  def __init__(self, images, labels, *, metadata: Mapping[str, Any] | None = None,
               location: str = "<memory>"):
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 [N, H, W, C]; got {images.dtype} {images.shape}")
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels must be integers [N={len(images)}]; got {labels.dtype} "
                       f"{labels.shape}")
    self.images = images
    self.labels = labels.astype(np.int32)
    for a in (self.images, self.labels):
      a.setflags(write=False)
    self.metadata = dict(metadata or {})
    self.location = location

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [{"image": self.images[i], "label": int(self.labels[i])} for i in indices]

  def arrays(self, start: int = 0, end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    return self.images[start:end], self.labels[start:end]


class RecordSource:
  """A sequence of records held in memory (any layout of the module docstring)."""

  def __init__(self, records: Sequence[Mapping[str, Any]], *,
               metadata: Mapping[str, Any] | None = None, location: str = "<memory>"):
    self.records = list(records)
    self.metadata = dict(metadata or {})
    self.location = location

  def __len__(self) -> int:
    return len(self.records)

  def read(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [dict(self.records[int(i)]) for i in indices]


class TfdsSource:
  """A tfds random-access ``data_source`` of one split of a prepared builder."""

  def __init__(self, builder, data_source, split: str):
    self.builder, self.data_source, self.split = builder, data_source, split
    self.metadata = dict(builder.info.metadata or {})
    self.location = os.fspath(builder.data_dir)
    self.cache_key = (builder.name, self.location, split)

  def fingerprint(self) -> dict[str, Any]:
    """What the decoded arrays depend on: the builder, its version and the prepared files
    (names, sizes, modification times), so a rebuilt data set never reads a stale cache.
    None (no disk cache) when the builder has no directory of files (e.g. tfds mock data)."""
    if not os.path.isdir(self.location):
      return None
    files = []
    for name in sorted(os.listdir(self.location)):
      st = os.stat(os.path.join(self.location, name))
      files.append([name, st.st_size, st.st_mtime_ns])
    return {"name": self.builder.name, "version": str(self.builder.info.version),
            "location": self.location, "split": self.split, "files": files}

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    indices = [int(i) for i in indices]
    try:
      return list(self.data_source.__getitems__(indices))  # batched (parallel in array_record)
    except TypeError:  # tfds.testing.mock_data's data source mock breaks __getitems__
      return [self.data_source[i] for i in indices]


_ARRAY_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def _cached(key, make):
  with _CACHE_LOCK:
    if key in _ARRAY_CACHE:
      return _ARRAY_CACHE[key]
  value = make()
  with _CACHE_LOCK:
    return _ARRAY_CACHE.setdefault(key, value)


def decode_image(data, channels: int) -> np.ndarray:
  """A record's ``image`` (encoded bytes or a uint8 array) as uint8 ``[H, W, channels]``."""
  if isinstance(data, (bytes, bytearray, np.bytes_)):
    return T.decode_image(bytes(data), channels)
  image = np.asarray(data, np.uint8)
  return image[..., None] if image.ndim == 2 else image


def load_arrays(source: Source, channels: int, start: int = 0,
                end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Examples ``[start, end)`` of an image source as read-only ``(uint8 [N, H, W, C], int32
  [N])``; decoded once per process (cached by the source's ``cache_key``, when it has one)."""
  if hasattr(source, "arrays"):
    return source.arrays(start, end)
  end = len(source) if end is None else end

  def make():
    images, labels = None, np.empty((end - start,), np.int32)
    chunk = 8192
    for lo in range(start, end, chunk):
      for j, rec in enumerate(source.read(range(lo, min(end, lo + chunk)))):
        image = decode_image(rec["image"], channels)
        if images is None:
          images = np.empty((end - start,) + image.shape, np.uint8)
        images[lo - start + j] = image
        labels[lo - start + j] = rec["label"]
    if images is None:
      images = np.zeros((0, 1, 1, channels), np.uint8)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels

  def decoded():   # from the disk cache when the source says what its arrays depend on
    fingerprint = source.fingerprint() if hasattr(source, "fingerprint") else None
    if fingerprint is None:
      return make()
    return _disk_cached(dict(fingerprint, channels=channels, start=start, end=end), make)

  key = getattr(source, "cache_key", None)
  return decoded() if key is None else _cached(("arrays",) + tuple(key) + (start, end), decoded)


def cache_dir() -> str | None:
  """Where decoded arrays are kept between processes: ``$SPIKEJAX_CACHE_DIR`` (empty: off),
  default ``~/.cache/spikejax``."""
  d = os.environ.get("SPIKEJAX_CACHE_DIR")
  if d is None:
    d = os.path.join(os.path.expanduser("~"), ".cache", "spikejax")
  return d or None


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
  import hashlib
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(images).data)
  h.update(np.ascontiguousarray(labels).data)
  return h.hexdigest()


def _disk_cached(key: dict[str, Any], make: Callable[[], tuple[np.ndarray, np.ndarray]]):
  """``make()`` (decoded ``(images, labels)``), kept as an ``.npz`` in ``cache_dir()`` under a
  hash of ``key``. A file is used only when its stored key matches and its arrays hash to the
  stored digest; a stale or corrupt file is replaced (written to a temporary name, then
  renamed, so a reader never sees a partial file). Decoding Fashion-MNIST's 70,000 PNGs took
  about 25 s a process here; reading the cache well under a second."""
  import hashlib
  import json
  import logging
  directory = cache_dir()
  if directory is None:
    return make()
  text = json.dumps(key, sort_keys=True)
  path = os.path.join(directory, "arrays", hashlib.sha256(text.encode()).hexdigest()[:24] + ".npz")
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) == text:
          images, labels = z["images"], z["labels"]
          if _digest(images, labels) == str(z["digest"]):
            images.setflags(write=False)
            labels.setflags(write=False)
            return images, labels
      logging.getLogger("spikejax").warning("decoded-array cache %s is stale or corrupt; "
                                            "decoding again", path)
    except Exception as e:  # noqa: BLE001 - a damaged file is rebuilt, never trusted
      logging.getLogger("spikejax").warning("decoded-array cache %s unreadable (%s); decoding "
                                            "again", path, type(e).__name__)
  images, labels = make()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
      np.savez(f, images=images, labels=labels, key=np.array(text),
               digest=np.array(_digest(images, labels)))
    os.replace(tmp, path)
  except OSError as e:  # a read-only home: work without the cache
    logging.getLogger("spikejax").warning("could not write the decoded-array cache %s (%s)",
                                          path, e)
  return images, labels


# --------------------------------------------------------------------------- tfds


def open_tfds_builder(name: str, data_dir: str | None, download: bool, *,
                      prepare: Callable[[str | None], Any] | None = None, manual: bool = False,
                      hint: str | None = None):
  """``tfds.builder(name)``, prepared first when it is not and ``download``: with
  ``prepare(data_dir)`` or tfds' ``download_and_prepare(file_format='array_record')``.

  Raises ``FileNotFoundError`` (saying how to build it) when it is not prepared and cannot be
  (``download=False``, or ``manual``: data downloaded by hand)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  if not download or manual:
    raise not_prepared_error(builder, manual, hint)
  with _build_lock(data_dir, name):   # one builder per data dir; others wait, then read
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      if prepare is not None:
        prepare(data_dir)
      else:
        builder.download_and_prepare(file_format="array_record")
  return tfds.builder(name, data_dir=data_dir)


class _build_lock:
  """An exclusive ``fcntl`` lock on ``<data dir>/.<name>.lock`` while a data set is built, so
  processes sharing a data dir (test workers, hosts on one disk) build it once."""

  def __init__(self, data_dir: str | None, name: str):
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    root = os.path.expanduser(root)
    self.path = os.path.join(root, "." + name.replace("/", "_") + ".lock")
    self.file = None

  def __enter__(self):
    import fcntl  # pylint: disable=import-outside-toplevel
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      self.file = open(self.path, "a")   # noqa: SIM115 - held until __exit__
    except OSError:   # a read-only or remote data dir: build without the lock
      return self
    fcntl.flock(self.file, fcntl.LOCK_EX)
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      import fcntl  # pylint: disable=import-outside-toplevel
      fcntl.flock(self.file, fcntl.LOCK_UN)
      self.file.close()


def not_prepared_error(builder, manual: bool, hint: str | None) -> FileNotFoundError:
  hint = hint or f"`tfds build {builder.name} --file_format=array_record --data_dir=...`"
  how = f"build it with {hint}" if manual else f"pass download=True or build it with {hint}"
  return FileNotFoundError(f"data set {builder.name!r} is not prepared in {builder.data_dir}; "
                           f"{how}")


def open_tfds_source(name: str, split: str, *, data_dir: str | None = None,
                     download: bool = True, images: bool = True, in_memory: bool = False,
                     prepare: Callable[[str | None], Any] | None = None, manual: bool = False,
                     hint: str | None = None, encoded: Sequence[str] = ()) -> Source:
  """Split ``split`` of tfds data set ``name`` as a source (``open_tfds_builder`` prepares it).

  ``images``: leave the ``image`` feature encoded (decoded by the pipeline); ``encoded``: more
  features left encoded (a segmentation set's class map). A data set
  prepared without random access (tfrecord) is read whole into an ``ArraySource`` with
  ``as_dataset`` (needs TensorFlow) when ``in_memory``; otherwise that is a ``ValueError``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = open_tfds_builder(name, data_dir, download, prepare=prepare, manual=manual,
                              hint=hint)
  names = (("image",) if images else ()) + tuple(encoded)
  decoders = {k: tfds.decode.SkipDecoding() for k in names} or None
  try:
    return TfdsSource(builder, builder.as_data_source(split=split, decoders=decoders), split)
  except NotImplementedError as e:  # tfds' answer for formats without random access
    if not builder.is_prepared():
      raise not_prepared_error(builder, manual, hint) from e
    if not in_memory:
      raise ValueError(
          f"{name} is prepared in {builder.data_dir} in a format without random access; "
          f"prepare it with file_format='array_record' (`tfds build {name} "
          "--file_format=array_record`)") from e

  def make():
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return ArraySource(np.asarray(data["image"], np.uint8), np.asarray(data["label"], np.int32),
                       metadata=builder.info.metadata or {},
                       location=os.fspath(builder.data_dir))
  return _cached(("as_dataset", name, os.fspath(builder.data_dir), split), make)


@dataclasses.dataclass(frozen=True)
class TfdsBuilder:
  """``DatasetSpec.builder`` of a tfds data set: ``builder(spec, split, data_dir=, download=)``.

  Attributes:
    tfds_name: the tfds name (default: the spec's name).
    prepare: called as ``prepare(data_dir)`` to build it when missing (default: tfds'
      ``download_and_prepare(file_format='array_record')``).
    manual: the data must be downloaded by hand; never prepared automatically.
    hint: how to build it, for the error when it is missing.
    setup: called first, e.g. to import the module that registers the tfds builder class.
  """
  tfds_name: str | None = None
  prepare: Callable[[str | None], Any] | None = None
  manual: bool = False
  hint: str | None = None
  setup: Callable[[], Any] | None = None

  def __call__(self, spec, split: str, *, data_dir: str | None = None,
               download: bool = True) -> Source:
    if self.setup is not None:
      self.setup()
    seg = spec.kind == "segmentation"
    return open_tfds_source(self.tfds_name or spec.name, split, data_dir=data_dir,
                            download=download, images=spec.kind == "image" or seg,
                            in_memory=spec.in_memory, prepare=self.prepare, manual=self.manual,
                            hint=self.hint, encoded=(spec.label_feature,) if seg else ())
