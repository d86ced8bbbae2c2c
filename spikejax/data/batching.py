"""What every input pipeline shares: per-process sharding, deterministic order, prefetch.

* Sharding: process ``p`` of ``P`` owns the contiguous examples ``[p*n//P, (p+1)*n//P)`` of the
  split (what ``tfds.split_for_jax_process`` / ``tfds.even_splits`` do) and reads only those.
  Training epochs have ``(n // P) // (B // P)`` steps on every process, eval passes
  ``ceil(ceil(n / P) / (B // P))``.
* Determinism: batch ``(epoch, step)`` is a pure function of ``(seed, process_index, epoch,
  step)`` (the epoch's shuffle of the shard, the batch's augmentation) and of the example
  index (per-example augmentation), whatever the number of worker threads; so resuming at a
  step needs no replay (``Dataset.iterate(start_step)``).

``Dataset`` is the base class of the image (``spikejax.data.images``) and event
(``spikejax.data.event_pipeline``) pipelines; a subclass sets the attributes of
``_init_common``'s docstring and implements ``get_batch``.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import queue
import threading
from typing import Any, Iterator

import numpy as np

Batch = dict[str, np.ndarray]

#: Seeds of the generators: ``rng(seed, TAG, process_or_0, epoch, step_or_index)``.
TAG_PERM, TAG_BATCH, TAG_EXAMPLE = 0, 1, 2


def rng(*key: int) -> np.random.Generator:
  return np.random.default_rng([int(k) for k in key])


def check_sharding(batch_size: int, seed: int, process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} is not divisible by process_count "
                     f"{process_count}")
  if seed < 0:
    raise ValueError("seed must be >= 0")


def resolve_process(process_index: int | None,
                    process_count: int | None) -> tuple[int, int]:
  """``(process_index, process_count)``, defaults from ``jax.process_index/process_count``."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def eval_batch(x: np.ndarray, labels: np.ndarray, valid: int, b: int) -> Batch:
  """An eval batch zero-padded to ``b`` rows, with ``mask`` 1 for the ``valid`` real ones."""
  mask = np.zeros((b,), np.float32)
  mask[:valid] = 1.0
  if valid < b:
    x = np.concatenate([x, np.zeros((b - valid,) + x.shape[1:], np.float32)])
    labels = np.concatenate([labels, np.zeros((b - valid,), np.int32)])
  return {"image": x, "label": labels, "mask": mask}


class Dataset:
  """Iterable of numpy batches of one process's shard of a split (module docstring).

  Attributes: ``spec`` (the ``DatasetSpec``), ``name, split, train, batch_size,
  local_batch_size, process_index, process_count, num_examples`` (whole split),
  ``num_local_examples`` (this process's shard), ``shard`` (``(start, end)`` example range),
  ``steps_per_epoch`` (same on every process), ``num_classes, image_shape`` (of one example),
  ``augment, seed``.
  """

  def _init_common(self, spec, *, split: str, batch_size: int, train: bool, seed: int,
                   process_index: int, process_count: int, num_epochs: int | None,
                   num_workers: int | None, prefetch: int) -> None:
    check_sharding(batch_size, seed, process_index, process_count)
    self.spec = spec
    self.name, self.split, self.train, self.seed = spec.name, split, train, int(seed)
    self.batch_size = batch_size
    self.local_batch_size = batch_size // process_count
    self.process_index, self.process_count = process_index, process_count
    self.num_classes = spec.num_classes
    self.num_epochs = num_epochs if train else 1
    self.prefetch = prefetch
    self.num_workers = num_workers or min(8, os.cpu_count() or 1)
    self._pool = None
    self._perm_cache: tuple[int, np.ndarray] | None = None

  def _init_pixels(self, spec, image_size: int | None, channels: int | None) -> None:
    """``image_size``, ``channels`` (the stored ones, or 3 replicating a grey channel) and the
    per-channel ``mean``/``std`` of an image or segmentation set."""
    self.image_size = image_size or spec.image_size
    self.channels = channels or spec.channels
    if self.channels not in (spec.channels, 3):
      raise ValueError(f"{spec.name}: channels must be {spec.channels} or 3")
    self.mean = np.broadcast_to(np.asarray(spec.mean, np.float32), (spec.channels,))
    self.std = np.broadcast_to(np.asarray(spec.std, np.float32), (spec.channels,))

  def _set_shard(self, n: int) -> None:
    """This process's contiguous shard of the ``n`` examples and the steps per epoch."""
    p, count = self.process_index, self.process_count
    self.num_examples = n
    self.shard = (p * n // count, (p + 1) * n // count)
    self.num_local_examples = self.shard[1] - self.shard[0]
    if self.train:
      self.steps_per_epoch = (n // count) // self.local_batch_size
      if self.steps_per_epoch == 0:
        raise ValueError(f"{self.name}[{self.split}]: {n // count} examples per process is less "
                         f"than one local batch of {self.local_batch_size}")
    else:
      self.steps_per_epoch = math.ceil(math.ceil(n / count) / self.local_batch_size)

  def __len__(self) -> int:
    return self.steps_per_epoch

  def __iter__(self) -> Iterator[Batch]:
    return self.iterate()

  def iterate(self, start_step: int = 0) -> Iterator[Batch]:
    """Batches from global step ``start_step`` on (``step = epoch * steps_per_epoch + i``).

    Train: ``num_epochs`` epochs (``None``: forever), each reshuffled. Eval: one pass.
    Prefetched on a background thread when ``prefetch > 0``.
    """
    def gen():
      total = None if self.num_epochs is None else self.num_epochs * self.steps_per_epoch
      step = start_step
      while total is None or step < total:
        yield self.get_batch(*divmod(step, self.steps_per_epoch))
        step += 1
    return prefetch(gen, self.prefetch) if self.prefetch > 0 else gen()

  def iter_epoch(self, epoch: int) -> Iterator[Batch]:
    """The ``steps_per_epoch`` batches of one epoch."""
    def gen():
      return (self.get_batch(epoch, s) for s in range(self.steps_per_epoch))
    return prefetch(gen, self.prefetch) if self.prefetch > 0 else gen()

  def permutation(self, epoch: int) -> np.ndarray:
    """Local (shard-relative) example order of a training epoch."""
    if self._perm_cache is None or self._perm_cache[0] != epoch:
      r = rng(self.seed, TAG_PERM, self.process_index, epoch, 0)
      self._perm_cache = (epoch, r.permutation(self.num_local_examples))
    return self._perm_cache[1]

  def batch_indices(self, epoch: int, step: int) -> tuple[np.ndarray, int]:
    """Shard-relative example indices of a batch and how many of them are real (not padding)."""
    if not 0 <= step < self.steps_per_epoch:
      raise IndexError(f"step {step} not in [0, {self.steps_per_epoch})")
    b = self.local_batch_size
    if self.train:
      return self.permutation(epoch)[step * b:(step + 1) * b], b
    idx = np.arange(step * b, min((step + 1) * b, self.num_local_examples))
    return idx, len(idx)

  def get_batch(self, epoch: int, step: int) -> Batch:
    """Batch ``step`` of ``epoch``: a pure function of (seed, process, epoch, step)."""
    raise NotImplementedError(f"{type(self).__name__} does not define get_batch")

  def _example_rng(self, index: int, epoch: int) -> np.random.Generator:
    return rng(self.seed, TAG_EXAMPLE, 0, epoch, index)

  def _batch_rng(self, epoch: int, step: int) -> np.random.Generator:
    return rng(self.seed, TAG_BATCH, self.process_index, epoch, step)

  def _map(self, fn, items):
    if self.num_workers <= 1 or len(items) < 2:
      return [fn(x) for x in items]
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self.num_workers)
    return list(self._pool.map(fn, items))


# --------------------------------------------------------------------------- prefetch


class _Raised:
  def __init__(self, exc: BaseException):
    self.exc = exc


_END = object()


def prefetch(make_iterator, size: int) -> Iterator[Any]:
  """Run ``make_iterator()`` on a daemon thread, ``size`` items ahead; same order."""
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def worker():
    try:
      for item in make_iterator():
        if not put(item):
          return
      put(_END)
    except BaseException as e:  # pylint: disable=broad-except
      put(_Raised(e))

  thread = threading.Thread(target=worker, daemon=True, name="spikejax-data-prefetch")
  thread.start()
  try:
    while True:
      item = q.get()
      if item is _END:
        return
      if isinstance(item, _Raised):
        raise item.exc
      yield item
  finally:
    stop.set()
