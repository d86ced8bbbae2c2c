"""Build tfds' own ``fashion_mnist`` dataset from local files, with no network.

tfds' ``FashionMNIST`` builder downloads four idx ``.gz`` archives and checks them against the
sha256 sums tfds ships. Debian's ``dataset-fashion-mnist`` package installs the same four
archives under ``/usr/share/datasets/fashion-mnist/`` (same file names), but *recompressed*: the
gzip headers differ (no stored file name, other mtime), so the archives are 23 bytes shorter and
their sha256 differs from tfds' registered sums, although the decompressed idx files -- the only
thing the builder reads -- are the genuine data.

``prepare_fashion_mnist`` therefore runs tfds' stock builder (its ``_info``, ``VERSION`` 3.0.1,
``_split_generators`` and ``_generate_examples`` are untouched) with two changes that only affect
*where the archives come from*:

* ``DownloadConfig(manual_dir=source_dir)``: tfds' download manager takes an archive from
  ``manual_dir/<file name>`` instead of downloading it when that file exists;
* the expected checksums of the four URLs are those of the local archives (computed at build
  time), after this module has checked that the *decompressed* files are byte-identical to the
  Fashion-MNIST idx files (``_IDX_SHA256``; this also stops MNIST digits, which use the same
  file names, from being built as ``fashion_mnist``).

The result is written where and how tfds writes it (``<data_dir>/fashion_mnist/3.0.1``), so
``tfds.builder('fashion_mnist', data_dir=...)`` and ``tfds.data_source`` read it like a download.
The default ``file_format='array_record'`` gives random access without TensorFlow (tfds cannot
read array_record through ``tfds.load``/``as_dataset``; pass ``file_format='tfrecord'`` for that).
The only differences from an online build are the recorded ``downloadSize`` and ``moduleName`` in
``dataset_info.json``.

Building needs TensorFlow (the builder reads the archives with ``tf.io.gfile``); reading the
prepared array_record files does not.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from typing import Mapping

import numpy as np

from spikejax.data.errors import DataError, MissingDataError

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = f"apt-get update && apt-get install -y {DEBIAN_PACKAGE}"
#: How to build the tfds data set by hand (the error when it is missing).
PREPARE_HINT = ("spikejax.data.prepare_fashion_mnist(data_dir) (from the Debian files: "
                f"{INSTALL_HINT})")

#: sha256 and size of the *decompressed* idx files (identical in the upstream archives and
#: Debian's recompressed ones). Header + 60000/10000 examples of 28x28 uint8 / uint8 labels.
_IDX_SHA256: Mapping[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (
        47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": (
        60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": (
        7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": (
        10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
FILE_NAMES = tuple(_IDX_SHA256)

#: Per-pixel mean / std of the 60000 training images, pixels scaled to [0, 1] (computed once
#: over all 47,040,000 training pixels: 0.28604059..., 0.35302424...).
MEAN = 0.2860406
STD = 0.3530242


def source_dir_or_raise(source_dir: str | os.PathLike | None = None) -> str:
  """Return the directory with the 4 Fashion-MNIST archives, or raise with install instructions.

  ``source_dir`` defaults to ``$FASHION_MNIST_DIR`` or else Debian's ``DEBIAN_DIR``.
  """
  source_dir = os.fspath(source_dir or os.environ.get("FASHION_MNIST_DIR") or DEBIAN_DIR)
  missing = [f for f in FILE_NAMES if not os.path.isfile(os.path.join(source_dir, f))]
  if missing:
    raise MissingDataError(
        f"Fashion-MNIST source files missing in {source_dir}: {', '.join(missing)}.\n"
        f"Install them (Debian/Ubuntu, as root) with:\n    {INSTALL_HINT}\n"
        f"which puts {', '.join(FILE_NAMES)} into {DEBIAN_DIR}; or pass source_dir= / set "
        "FASHION_MNIST_DIR to a directory holding these four files.")
  return source_dir


def _read_archive(path: str, chunk_size: int | None = None):
  """The decompressed bytes of one ``.gz`` archive (an iterator of chunks when
  ``chunk_size`` is given); ``DataError`` naming the file if it is not a whole gzip file."""
  try:
    with gzip.open(path, "rb") as f:
      if chunk_size is None:
        return f.read()
      return list(iter(lambda: f.read(chunk_size), b""))
  except (OSError, EOFError) as e:   # gzip.BadGzipFile is an OSError; a cut file, EOFError
    raise DataError(f"{path} is not a readable gzip archive ({type(e).__name__}: {e}); "
                    f"reinstall the Fashion-MNIST files with: {INSTALL_HINT}") from None


def verify_source_files(source_dir: str) -> None:
  """Check that the decompressed archives are exactly the Fashion-MNIST idx files."""
  for name, (size, digest) in _IDX_SHA256.items():
    h = hashlib.sha256()
    n = 0
    for chunk in _read_archive(os.path.join(source_dir, name), 1 << 22):
      h.update(chunk)
      n += len(chunk)
    if n != size or h.hexdigest() != digest:
      raise DataError(
          f"{os.path.join(source_dir, name)} does not decompress to the Fashion-MNIST idx file "
          f"(got {n} bytes, sha256 {h.hexdigest()}; expected {size} bytes, sha256 {digest}). "
          f"Is it MNIST or a corrupted file? Reinstall with: {INSTALL_HINT}")


def _local_url_infos(source_dir: str) -> dict:
  """tfds ``UrlInfo`` for the builder's 4 URLs, describing the local archives."""
  from tensorflow_datasets.core.download import checksums
  from tensorflow_datasets.image_classification import mnist

  infos = {}
  for url, upstream in mnist.FashionMNIST.url_infos.items():
    infos[url] = checksums.compute_url_info(os.path.join(source_dir, upstream.filename))
  return infos


def _local_builder_cls(url_infos: dict):
  """tfds' ``FashionMNIST`` whose expected archive checksums are those of the local files."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import mnist

  class LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
    """tfds' ``fashion_mnist`` builder, unchanged except for the expected archive checksums."""
    name = "fashion_mnist"

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):  # pylint: disable=invalid-overridden-method
      return url_infos

  return LocalFashionMNIST


def prepare_fashion_mnist(data_dir: str | os.PathLike | None = None, *,
                          source_dir: str | os.PathLike | None = None,
                          file_format: str = "array_record", verify: bool = True,
                          max_examples_per_split: int | None = None) -> str:
  """Build tfds' ``fashion_mnist`` (3.0.1) into ``data_dir`` from local archives; no network.

  Args:
    data_dir: tfds data dir; default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
    source_dir: directory with ``train-images-idx3-ubyte.gz`` & co; default
      ``$FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist`` (Debian package
      ``dataset-fashion-mnist``).
    file_format: tfds file format; ``array_record`` (default) allows random access without
      TensorFlow (``tfds.data_source``; what ``get_dataset`` reads), ``tfrecord`` is what
      ``tfds.load`` builds and reads.
    verify: check the decompressed archives against the known Fashion-MNIST sha256.
    max_examples_per_split: tfds' debugging option: write only the first N examples of each
      split (for quick tests; such a build is still named fashion_mnist 3.0.1, so use a
      separate ``data_dir``).

  Returns:
    The prepared dataset directory (``<data_dir>/fashion_mnist/3.0.1``). A no-op (besides
    returning it) when tfds already finds the dataset prepared there, in any format.

  Several processes sharing one ``data_dir`` should not build concurrently: prepare once (e.g.
  process 0, or before launching) and let the others read.

  Raises:
    MissingDataError (a FileNotFoundError): the archives are missing; the message says how to
      install them.
    DataError: an archive is not a readable gzip file, or not the Fashion-MNIST idx data.
    ImportError: TensorFlow is not installed (needed to build, not to read).
  """
  import tensorflow_datasets as tfds

  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  if builder.is_prepared():
    return os.fspath(builder.data_dir)

  source_dir = source_dir_or_raise(source_dir)
  try:
    import tensorflow  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "Building the tfds fashion_mnist dataset needs TensorFlow (reading it does not): "
        "pip install tensorflow-cpu==2.21.0") from e
  if verify:
    verify_source_files(source_dir)

  builder = _local_builder_cls(_local_url_infos(source_dir))(
      data_dir=data_dir, file_format=file_format)
  # The download manager extracts the archives (~55 MB) under its download dir: keep that out
  # of data_dir and delete it afterwards.
  with tempfile.TemporaryDirectory(prefix="fashion_mnist_extract_") as tmp:
    builder.download_and_prepare(
        download_dir=tmp,
        download_config=tfds.download.DownloadConfig(
            manual_dir=source_dir, max_examples_per_split=max_examples_per_split))
  return os.fspath(builder.data_dir)


def read_idx_arrays(source_dir: str | os.PathLike | None = None,
                    split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Read the raw idx archives (no tfds): ``(images uint8 [N,28,28,1], labels int32 [N])``.

  In the archives' original order (tfds' prepared order is a deterministic shuffle of it). Used
  by tests and to (re)compute ``MEAN``/``STD``.
  """
  source_dir = source_dir_or_raise(source_dir)
  prefix = {"train": "train", "test": "t10k"}[split]
  images = _read_archive(os.path.join(source_dir, f"{prefix}-images-idx3-ubyte.gz"))
  labels = _read_archive(os.path.join(source_dir, f"{prefix}-labels-idx1-ubyte.gz"))
  images = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 28, 28, 1)
  return images, np.frombuffer(labels, np.uint8, offset=8).astype(np.int32)
