"""Budgeted training: a run length that fits ``config.time_budget_minutes`` on this machine.

With a budget the trainer does not take the run length from ``num_epochs``. It trains the
first ``decide_at`` steps (all inside the linear warm-up, whose learning rate does not depend
on the run length, so they are the same steps whatever is decided), measures

* the steady-state seconds per train step (steps ``decide_at // 2 + 1 .. decide_at``, each end
  waited for, data loading included: the rate the run will see),
* the seconds one evaluation takes (every evaluator pass and the EMA pass: two timed batches
  each after a compiling call, scaled to the pass's batches),
* what the step's compilation cost (the first step's time less a steady one; the planned
  schedule is one more compilation),

and solves for the largest total number of steps whose training, evaluations, compilation and
a reserve end inside the budget counted from the process's start (``process_start_time``). The
whole schedule (warm-up, then the cosine to ``min_lr``) is rebuilt over that many steps. The
decision is logged, written to ``plan.json`` in the workdir (process 0) and agreed across
processes (the slowest process's rates); a resumed run reads it back and keeps the same plan,
so a resume is exact. A deadline (``Plan.deadline``) stops training early, as a time limit does,
if the machine slows down later, leaving time for the final evaluation and save.

Rates drift within a run (measured: the detection and segmentation steps got about 15 % faster
after the first tenth of their runs; the 118-minute Fashion-MNIST run's about 2 % slower, so its
deadline cut the schedule at 97.8 %). So the plan is revised once, at ``Plan.revise_at_step``
(``REVISE_FRACTION`` of the way from the decision to the planned end): the steps of the second
half of that stretch (evaluations left out) and the evaluations made so far give new rates, and
the run length is solved again from the time left. The remainder of the schedule is stretched
or squeezed onto the new length (``optim.stretched``): the learning rate is continuous and the
schedule still ends at its end. The revision is written to ``plan.json`` before the next step
(``Plan.revision``), so a resume from either side of it trains the same schedule. A resumed
process does not revise (the budget counts one uninterrupted command): it keeps the plan as read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

from spikejax.train import paths

PLAN_FILE = "plan.json"
# the rate is measured over at most this many warm-up steps (the second half of them)
MAX_MEASURE_STEPS = 200
MIN_WARMUP_STEPS = 4          # at least 2 timed steps after 2 untimed ones
# the budget keeps back max(RESERVE_MIN_S, RESERVE_FRACTION * budget) for the final save and
# exit, and plans training time RATE_MARGIN slower than measured (rates drift within a run)
RESERVE_MIN_S = 15.0
RESERVE_FRACTION = 0.01
RATE_MARGIN = 0.03
# the plan is revised this fraction of the way from the decision to its planned end, when that
# leaves at least REVISE_MIN_STEPS steps in the measured half
REVISE_FRACTION = 0.3
REVISE_MIN_STEPS = 20


@dataclasses.dataclass
class Plan:
  """A budget decision (the content of ``plan.json``); seconds unless named otherwise."""
  budget_minutes: float
  decided_at_step: int
  measured_steps: int           # the timed steps behind ``step_seconds``
  step_seconds: float           # steady-state wall time per train step (slowest process)
  eval_seconds: float           # one evaluation, all passes
  compile_seconds: float        # the planned step's compilation (estimated: the first one's)
  elapsed_seconds: float        # since the process started, at the decision
  reserve_seconds: float
  steps_per_epoch: int
  total_steps: int              # the planned run length (the schedule's end)
  epochs: float
  evaluations: int              # evaluations after the decision, the final one included
  capped_by: str | None = None  # "max_train_steps" when that config key cut the plan
  launched_at: float = 0.0      # the process start (unix time) the budget counts from
  # the step at which the plan is revised (None: never; plans written before revisions)
  revise_at_step: int | None = None
  # the revision made there (``revise``): the rates it measured and the length it replaced
  revision: dict[str, Any] | None = None

  @property
  def deadline(self) -> float:
    """Unix time after which training stops (then the final evaluation and save)."""
    eval_s = self.revision["eval_seconds"] if self.revision else self.eval_seconds
    return (self.launched_at + 60.0 * self.budget_minutes - self.reserve_seconds - eval_s)

  def schedule(self, make):
    """The learning-rate schedule this plan trains: ``make(total_steps)``, or after a revision
    the first plan's ``make(planned)`` with its remainder stretched onto ``total_steps``."""
    if not self.revision:
      return make(self.total_steps)
    from spikejax.train import optim
    return optim.stretched(make(self.revision["planned_total_steps"]), self.revision["at_step"],
                           self.revision["planned_total_steps"], self.total_steps)

  def describe_revision(self) -> str:
    r = self.revision
    return (f"budget revised at step {r['at_step']}: measured {r['step_seconds'] * 1e3:.1f} ms "
            f"per step over {r['measured_steps']} steps (planned {self.step_seconds * 1e3:.1f}), "
            f"{r['eval_seconds']:.1f} s per evaluation, {r['elapsed_seconds']:.0f} s elapsed; "
            f"{r['planned_total_steps']} -> {self.total_steps} steps ({self.epochs:.2f} "
            f"epochs, {self.evaluations} evaluations after the decision)")

  def describe(self) -> str:
    cap = f", capped by {self.capped_by}" if self.capped_by else ""
    return (f"budget {self.budget_minutes:g} min: measured {self.step_seconds * 1e3:.1f} ms "
            f"per step over {self.measured_steps} steps, {self.eval_seconds:.1f} s per "
            f"evaluation, {self.compile_seconds:.1f} s to compile, {self.elapsed_seconds:.0f} s "
            f"elapsed at step {self.decided_at_step}; planned {self.total_steps} steps "
            f"({self.epochs:.2f} epochs, {self.evaluations} evaluations){cap}")


def measure_steps(warmup_steps: int, max_train_steps: int | None = None) -> int:
  """The step at which the plan is decided: inside the warm-up, at most ``MAX_MEASURE_STEPS``
  (and never past ``max_train_steps``)."""
  n = min(int(warmup_steps), MAX_MEASURE_STEPS)
  if max_train_steps:
    n = min(n, int(max_train_steps))
  return n


def check(budget_minutes, warmup_steps: int | None, schedule: str) -> str | None:
  """Why this budget cannot be planned (one line naming the fix), or None; ``warmup_steps``
  None skips the warm-up check (the config alone, before the data set is known)."""
  if not budget_minutes >= 0:
    return (f"time_budget_minutes={budget_minutes}: must be > 0 (or 0, or unset: num_epochs "
            f"sets the run length).")
  if budget_minutes == 0:
    return None
  if schedule == "constant":
    return ("time_budget_minutes sets the length of the learning-rate schedule, but "
            "optimizer.schedule='constant' has none: unset one of them.")
  if warmup_steps is not None and warmup_steps < MIN_WARMUP_STEPS:
    return (f"time_budget_minutes measures the step rate during the warm-up (whose learning "
            f"rate does not depend on the run length), but warmup_epochs gives "
            f"{warmup_steps} steps; raise warmup_epochs to at least {MIN_WARMUP_STEPS} steps.")
  return None


def evaluation_steps(after: int, total: int, steps_per_epoch: int, eval_every_epochs: int,
                     eval_every_steps: int | None = None) -> int:
  """How many evaluations the trainer runs at steps ``after + 1 .. total`` of a ``total``-step
  run: every ``eval_every_epochs`` epochs, every ``eval_every_steps`` steps, and the last step."""
  def count(every):   # multiples of ``every`` in (after, total]
    return total // every - after // every
  period = steps_per_epoch * eval_every_epochs
  n = count(period)
  at_end = total % period == 0
  if eval_every_steps:
    n += count(eval_every_steps) - count(math.lcm(period, eval_every_steps))
    at_end = at_end or total % eval_every_steps == 0
  return n + (0 if at_end or total <= after else 1)


def solve(*, budget_s: float, elapsed_s: float, decided_at: int, step_s: float, eval_s: float,
          compile_s: float, reserve_s: float, steps_per_epoch: int, eval_every_epochs: int,
          eval_every_steps: int | None = None) -> int:
  """The largest ``total >= decided_at`` with elapsed + compile + (total - decided_at) steps
  (``RATE_MARGIN`` slower than measured) + its evaluations + reserve <= budget; ``decided_at``
  when even no more training does not fit."""
  step_s = step_s * (1.0 + RATE_MARGIN)

  def cost(total):
    evals = evaluation_steps(decided_at, total, steps_per_epoch, eval_every_epochs,
                             eval_every_steps)
    return elapsed_s + compile_s + (total - decided_at) * step_s + evals * eval_s + reserve_s

  lo = decided_at
  hi = decided_at + max(int((budget_s - elapsed_s) / max(step_s, 1e-9)) + 1, 1)
  if cost(lo + 1) > budget_s:
    return lo
  while hi - lo > 1:      # cost is increasing in total: bisect for the last one that fits
    mid = (lo + hi) // 2
    if cost(mid) <= budget_s:
      lo = mid
    else:
      hi = mid
  return lo


def make_plan(config, *, launched_at: float, elapsed_s: float, decided_at: int,
              measured_steps: int, step_s: float, eval_s: float, compile_s: float,
              steps_per_epoch: int) -> Plan:
  """The plan for ``config`` from these measurements (see ``solve``); ``elapsed_s``: seconds
  since ``launched_at`` at the decision."""
  budget_s = 60.0 * float(config.time_budget_minutes)
  elapsed = float(elapsed_s)
  reserve = max(RESERVE_MIN_S, RESERVE_FRACTION * budget_s)
  every_steps = config.get("eval_every_steps")
  total = solve(budget_s=budget_s, elapsed_s=elapsed, decided_at=decided_at, step_s=step_s,
                eval_s=eval_s, compile_s=compile_s, reserve_s=reserve,
                steps_per_epoch=steps_per_epoch, eval_every_epochs=config.eval_every_epochs,
                eval_every_steps=every_steps)
  capped = None
  if config.get("max_train_steps") and total > config.max_train_steps:
    total, capped = int(config.max_train_steps), "max_train_steps"
  evals = evaluation_steps(decided_at, total, steps_per_epoch, config.eval_every_epochs,
                           every_steps)
  revise_at = decided_at + int(round(REVISE_FRACTION * (total - decided_at)))
  if capped or (revise_at - decided_at) // 2 < REVISE_MIN_STEPS:
    revise_at = None      # too short to measure again (or the length is not the budget's)
  return Plan(budget_minutes=float(config.time_budget_minutes), decided_at_step=decided_at,
              measured_steps=measured_steps, step_seconds=step_s, eval_seconds=eval_s,
              compile_seconds=compile_s, elapsed_seconds=round(elapsed, 3),
              reserve_seconds=reserve, steps_per_epoch=steps_per_epoch, total_steps=total,
              epochs=round(total / steps_per_epoch, 4), evaluations=evals, capped_by=capped,
              launched_at=launched_at, revise_at_step=revise_at)


def revise(plan: Plan, config, *, elapsed_s: float, measured_steps: int, step_s: float,
           eval_s: float) -> Plan:
  """``plan`` revised at its ``revise_at_step`` from rates measured since the decision: the
  largest run that fits the time left (``solve`` from that step, one more compilation), at
  least one more step (the deadline still stops a run that no longer fits)."""
  at = int(plan.revise_at_step)
  every_steps = config.get("eval_every_steps")
  total = solve(budget_s=60.0 * plan.budget_minutes, elapsed_s=float(elapsed_s), decided_at=at,
                step_s=step_s, eval_s=eval_s, compile_s=plan.compile_seconds,
                reserve_s=plan.reserve_seconds, steps_per_epoch=plan.steps_per_epoch,
                eval_every_epochs=config.eval_every_epochs, eval_every_steps=every_steps)
  capped = plan.capped_by
  if config.get("max_train_steps") and total > config.max_train_steps:
    total, capped = int(config.max_train_steps), "max_train_steps"
  total = max(total, at + 1)
  revision = dict(at_step=at, planned_total_steps=plan.total_steps,
                  measured_steps=int(measured_steps), step_seconds=float(step_s),
                  eval_seconds=float(eval_s), elapsed_seconds=round(float(elapsed_s), 3))
  return dataclasses.replace(
      plan, total_steps=total, epochs=round(total / plan.steps_per_epoch, 4),
      evaluations=evaluation_steps(plan.decided_at_step, total, plan.steps_per_epoch,
                                   config.eval_every_epochs, every_steps),
      capped_by=capped, revision=revision)


def write(plan: Plan, workdir: str) -> None:
  """``plan.json`` (atomically); an earlier different one is kept as ``plan.<n>.json``."""
  paths.write_keeping_old(paths.join(workdir, PLAN_FILE),
                          json.dumps(dataclasses.asdict(plan), indent=2))


def read(workdir: str) -> Plan | None:
  """The saved plan of ``workdir`` or None; a damaged file is an error naming it (a resume
  without its plan would train another schedule)."""
  path = paths.join(workdir, PLAN_FILE)
  if not paths.exists(path):
    return None
  try:
    return Plan(**json.loads(paths.read_text(path)))
  except (OSError, ValueError, TypeError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); the checkpoints there "
                     f"were trained to its plan: restore the file or use a new --workdir.")


def process_start_time() -> float:
  """When this process started (unix time, from ``/proc``; the re-exec under tcmalloc keeps
  the process), or now where ``/proc`` has no answer."""
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])          # field 22 of stat(5): starttime, after pid and comm
    with open("/proc/stat") as f:
      btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return btime + start_ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return time.time()


def agree(values: list[float]) -> list[float]:
  """The element-wise maximum of ``values`` over the processes (the slowest one's rates), so
  every process plans the same run; ``values`` itself in a single process."""
  import jax
  if jax.process_count() == 1:
    return list(values)
  import numpy as np
  from jax.experimental import multihost_utils
  got = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.float64)))
  return [float(v) for v in got.reshape(-1, len(values)).max(axis=0)]


def broadcast_total(total: int) -> int:
  """Process 0's ``total`` on every process (a resumed plan read from process 0's workdir)."""
  import jax
  if jax.process_count() == 1:
    return int(total)
  import numpy as np
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int64(total)))


def as_dict(plan: Plan) -> dict[str, Any]:
  return dataclasses.asdict(plan)
