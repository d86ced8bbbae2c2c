"""Running a task's jitted train step on the split ``(graphdef, state)`` of model and optimizer."""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from spikejax.train import checkpoints as ckpt_lib
from spikejax.train.tasks import classify


def unalias(tree):
  """``tree`` with a private copy of every array whose device buffer another array (or another
  shard of itself) also uses: donating such a buffer to the train step would free it while in
  use (one array shared by two parameters; orbax restores on CPU "devices")."""
  seen: set[int] = set()

  def own(x):
    if not isinstance(x, jax.Array):
      return x
    ptrs = [s.data.unsafe_buffer_pointer() for s in x.addressable_shards]
    if len(set(ptrs)) < len(ptrs) or seen.intersection(ptrs):
      x = ckpt_lib.copy_array(x)
      ptrs = [s.data.unsafe_buffer_pointer() for s in x.addressable_shards]
    seen.update(ptrs)
    return x

  return jax.tree.map(own, tree)


class SplitTrainer:
  """Runs training steps on ``(graphdef, state)`` with one ``jax.jit`` call per step.

  ``step`` is a task's jitted ``step(graphdef, state, batch, *step_args) -> (state, metrics)``
  with ``state`` donated (default: the classification step); ``step_args`` are its extra
  arguments (e.g. a teacher). ``nnx.jit`` walks the module graph on every call (tens of ms for
  E-SpikeFormer on a CPU); keeping the model and optimizer split avoids that. ``sync()`` writes
  the current state back into the live ``model``/``optimizer`` (for evaluation, EMA and
  checkpoints); the arrays the live objects hold are donated to the next step, so read them
  only right after a ``sync()``.
  """

  def __init__(self, model, optimizer, *, step: Callable[..., Any] | None = None,
               step_args: tuple = ()):
    self.model, self.optimizer = model, optimizer
    self.graphdef, state = nnx.split((model, optimizer))
    self.state = unalias(state)
    self.train_step = classify.jitted_train_step if step is None else step
    self.step_args = tuple(step_args)

  def step(self, batch):
    self.state, metrics = self.train_step(self.graphdef, self.state, batch, *self.step_args)
    return metrics

  def sync(self) -> None:
    nnx.update((self.model, self.optimizer), self.state)
