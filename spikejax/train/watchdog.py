"""A lost process of a multi-process run stops the others with one clear line.

When one process of a ``jax.distributed`` job dies (SIGKILL, out of memory, a lost host), the
others block in the next collective until the collective library gives up (Gloo on CPU: about
90 s, then an error deep inside a step) or the coordination service's own heartbeat check
aborts them. ``PeerWatchdog`` is a daemon thread in every process that bumps its own counter in
the coordination service's key-value store every ``interval_s`` and watches the others'. A
counter that has not moved for ``timeout_s`` (measured on this process's own clock, so clocks of
other hosts do not matter), or a coordinator that no longer answers, ends this process at once
(``os._exit(EXIT_PEER_LOST)``) after one line naming the lost process and the last complete
checkpoint to resume from. A process that finishes normally says so first (``finished``), so
the others do not count it as lost while they finish.

Checkpoints are never cut: orbax writes a step into a temporary directory and renames it when
complete, so the step directories left are whole; an interrupted save leaves only its temporary
directory, which the next run ignores.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from spikejax.train import paths

EXIT_PEER_LOST = 5
_BEAT = "spikejax/watchdog/beat/"
_DONE = "spikejax/watchdog/done/"


def last_complete_checkpoint(checkpoint_dir: str | None) -> str | None:
  """The newest whole step directory under ``checkpoint_dir``, or None. Locally orbax renames
  a step's directory to its bare number only once it is complete; a bucket has no rename, so
  there the step is whole once its ``commit_success.txt`` is written."""
  if not checkpoint_dir:
    return None
  remote = paths.is_remote(checkpoint_dir)

  def whole(step_dir):
    return paths.exists(paths.join(step_dir, "commit_success.txt")) if remote \
        else paths.isdir(step_dir)

  steps = sorted((int(d) for d in paths.listdir(checkpoint_dir) if d.isdigit()), reverse=True)
  for step in steps:
    if whole(paths.join(checkpoint_dir, str(step))):
      return paths.join(checkpoint_dir, str(step))
  return None


class PeerWatchdog:
  """See the module docstring. ``client``: the ``jax.distributed`` client (default: the one
  ``jax.distributed.initialize`` made); ``exit``: what ends the process (tests replace it)."""

  def __init__(self, *, timeout_s: float, checkpoint_dir: str | None = None,
               interval_s: float | None = None, client=None, process_id: int | None = None,
               num_processes: int | None = None, exit=os._exit):
    if not timeout_s > 0:
      raise ValueError(f"peer timeout must be > 0 seconds, got {timeout_s}")
    if client is None:
      import jax
      from jax._src import distributed
      client = distributed.global_state.client
      process_id, num_processes = jax.process_index(), jax.process_count()
    self.client, self.pid, self.n = client, process_id, num_processes
    self.timeout_s = float(timeout_s)
    self.interval_s = float(interval_s or min(5.0, self.timeout_s / 4))
    self.checkpoint_dir = checkpoint_dir
    self._exit = exit
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="spikejax-peer-watchdog", daemon=True)

  def start(self) -> "PeerWatchdog":
    self._thread.start()
    return self

  def finished(self) -> None:
    """This process ends normally: tell the others, stop watching."""
    self._stop.set()
    self._thread.join(timeout=self.interval_s + 5)
    try:
      self.client.key_value_set(f"{_DONE}{self.pid}", "1", allow_overwrite=True)
    except Exception:  # the coordinator is gone too: nobody left to tell
      pass

  def after_failure(self) -> None:
    """Called with an exception in flight that is not one of the job's own clear errors: in a
    multi-process run that is most often a collective that failed because another process is
    gone (Gloo: "Connection reset by peer"). Prints the traceback, then waits up to one
    timeout for the watchdog to name a lost process (exit ``EXIT_PEER_LOST``); otherwise
    exits 1. Never returns, and skips ``jax.distributed``'s shutdown barrier, which would wait
    for the lost process and then abort."""
    import traceback
    traceback.print_exc()
    sys.stderr.flush()
    self._thread.join(timeout=self.timeout_s + 2 * self.interval_s)
    print(f"error: process {self.pid} failed (traceback above) and no other process was "
          f"lost within {self.timeout_s:.0f} s.", file=sys.stderr, flush=True)
    self._exit(1)

  def _lost(self, what: str) -> None:
    ckpt = last_complete_checkpoint(self.checkpoint_dir)
    print(f"error: {what}; it was killed, crashed or is cut off, so process {self.pid} stops "
          f"too (exit {EXIT_PEER_LOST}). The last complete checkpoint is "
          f"{ckpt or 'none (no step was saved yet)'}; rerun every process with the same "
          f"command to resume from it.", file=sys.stderr, flush=True)
    self._exit(EXIT_PEER_LOST)

  def check(self, entries: dict[str, str], seen: dict[int, tuple[str | None, float]],
            done: set[int], now: float) -> str | None:
    """One look at the others' counters: the lost one as words, or None. ``seen`` holds each
    peer's last counter and when it last changed (updated in place)."""
    for p in range(self.n):
      if p == self.pid or p in done:
        continue
      value = entries.get(f"{_BEAT}{p}")
      if p not in seen or seen[p][0] != value:
        seen[p] = (value, now)
      elif now - seen[p][1] > self.timeout_s:
        return (f"process {p} of {self.n} sent no heartbeat for {now - seen[p][1]:.0f} s "
                f"(limit {self.timeout_s:.0f} s)")
    return None

  def _run(self) -> None:
    beat, seen = 0, {}
    while not self._stop.wait(self.interval_s):
      beat += 1
      try:
        self.client.key_value_set(f"{_BEAT}{self.pid}", str(beat), allow_overwrite=True)
        entries = dict(self.client.key_value_dir_get(_BEAT))
        done = {int(k[len(_DONE):]) for k, _ in self.client.key_value_dir_get(_DONE)}
      except Exception as e:
        if self._stop.is_set():
          return
        self._lost(f"the coordinator (process 0) does not answer "
                   f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
        return
      lost = self.check(entries, seen, done, time.monotonic())
      if lost and not self._stop.is_set():
        self._lost(lost)
        return
