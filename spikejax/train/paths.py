"""One path layer for everything the job reads or writes: a local directory or a bucket.

A path is a string. One with a scheme (``gs://bucket/run``, ``s3://...``) goes through
``etils.epath`` (TensorFlow's gfile when TensorFlow is installed, else fsspec: ``gcsfs`` for
``gs://``); a local one through ``os``. The functions below are the only file access of the
trainer, metrics, checkpoints, budget plan and analysis tools, so ``--workdir=gs://bucket/run``
is one shared directory for every host of a pod (orbax and tensorstore write the checkpoint
arrays there themselves).

Object stores have no rename and no append. Here:

- ``write_text`` is atomic either way: locally a temporary file replaced onto the target, in
  a bucket one object upload (readers see the old object or the new one, never a part).
- ``AppendLog`` appends locally and, in a bucket, keeps the file's text and uploads it whole
  at ``flush`` (at most every ``min_interval_s`` on ``write``, always on ``flush``/``close``).
- ``move`` of a bucket directory copies its objects, then deletes the source.

Tests run the bucket case against a GCS emulator on 127.0.0.1 (``tests/test_bucket.py``):
``STORAGE_EMULATOR_HOST`` for gcsfs, ``TENSORSTORE_GCS_HTTP_URL`` for the checkpoint arrays
and ``EPATH_USE_TF=false`` so that epath takes gcsfs rather than TensorFlow's GCS client.
"""

from __future__ import annotations

import os
import posixpath
import re
import time

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str) -> bool:
  """True for ``scheme://...`` (a bucket), False for a local path."""
  return bool(_SCHEME.match(os.fspath(path)))


def resolve(path: str) -> str:
  """A local path made absolute (``~`` expanded); a bucket path as given, without a
  trailing ``/`` (``os.path.abspath`` would turn ``gs://b/run`` into ``./gs:/b/run``)."""
  path = os.fspath(path)
  if is_remote(path):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rstrip('/')}"
  return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
  base = os.fspath(base)
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
  return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def _epath(path: str):
  from etils import epath
  return epath.Path(path)


def exists(path: str) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  """In a bucket: some object lies under ``path/``."""
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path: str) -> list[str]:
  """The names (not paths) in the directory ``path``; [] when it does not exist."""
  if not isdir(path):
    return []
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def makedirs(path: str) -> None:
  """Creates ``path`` and its parents (in a bucket, directories are implicit: a no-op there
  unless the backend keeps markers)."""
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = "r"):
  """A file object; modes ``r``, ``w``, ``rb``, ``wb`` (and ``a`` locally)."""
  if is_remote(path):
    if "a" in mode or "+" in mode:
      raise ValueError(f"mode {mode!r} on {path}: buckets cannot append; use AppendLog")
    return _epath(path).open(mode)
  return open(path, mode)


def read_text(path: str) -> str:
  with open_file(path, "r") as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def _write(path: str, data, mode: str) -> None:
  if is_remote(path):
    with open_file(path, mode) as f:
      f.write(data)
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, mode) as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  """Writes ``text`` atomically (see the module docstring)."""
  _write(path, text, "w")


def write_bytes(path: str, data: bytes) -> None:
  _write(path, data, "wb")


def write_keeping_old(path: str, text: str) -> str | None:
  """Writes ``text`` to ``path``; a different earlier file is first kept as ``<stem>.<n><ext>``
  (the first free ``n``), never overwritten. Returns the name it was kept under, or None
  (no earlier file, or the same text: then nothing is written)."""
  kept = None
  if exists(path):
    if read_text(path) == text:
      return None
    stem, ext = os.path.splitext(path)
    n = 1
    while exists(f"{stem}.{n}{ext}"):
      n += 1
    kept = f"{stem}.{n}{ext}"
    move(path, kept)
  write_text(path, text)
  return kept


def remove(path: str) -> None:
  if is_remote(path):
    _epath(path).unlink()
  else:
    os.remove(path)


def move(src: str, dst: str) -> None:
  """Renames a file or directory (``os.replace`` locally; copy then delete in a bucket)."""
  if not is_remote(src) and not is_remote(dst):
    os.replace(src, dst)
    return
  s = _epath(src)
  if not s.is_dir():
    s.copy(_epath(dst), overwrite=True)
    s.unlink()
    return
  _copy_tree(src, dst)
  s.rmtree()


def _copy_tree(src: str, dst: str) -> None:
  for name in listdir(src):
    a, b = join(src, name), join(dst, name)
    if isdir(a):
      _copy_tree(a, b)
    else:
      _epath(a).copy(_epath(b), overwrite=True)


class AppendLog:
  """A text file that grows by lines (``metrics.jsonl``): appended and flushed at once locally;
  in a bucket the whole text is uploaded at ``flush`` and by ``write`` at most every
  ``min_interval_s`` (an upload per log step would cost a round trip each). Call ``flush``
  before anything that must find the rows written (a checkpoint)."""

  def __init__(self, path: str, *, min_interval_s: float = 30.0):
    self.path = path
    self.remote = is_remote(path)
    self.min_interval_s = float(min_interval_s)
    if self.remote:
      self._text = read_text(path) if exists(path) else ""
      self._dirty = False
      self._last = time.time()
    else:
      self._f = open(path, "a")

  def write(self, text: str) -> None:
    if not self.remote:
      self._f.write(text)
      self._f.flush()
      return
    self._text += text
    self._dirty = True
    if time.time() - self._last >= self.min_interval_s:
      self.flush()

  def flush(self) -> None:
    if self.remote:
      if self._dirty:
        write_text(self.path, self._text)
        self._dirty = False
      self._last = time.time()
    else:
      self._f.flush()

  def close(self) -> None:
    self.flush()
    if not self.remote:
      self._f.close()


def append_text(path: str, text: str) -> None:
  """Appends ``text`` once (a read and a rewrite in a bucket)."""
  if is_remote(path):
    write_text(path, (read_text(path) if exists(path) else "") + text)
  else:
    with open(path, "a") as f:
      f.write(text)
