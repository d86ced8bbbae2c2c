"""Budgeted training (spikejax/train/budget.py): the plan's arithmetic, and a budgeted run
that trains the whole schedule over its planned steps and keeps its plan on resume, exactly."""

import json
import os
import shutil

import numpy as np
import pytest

from spikejax.train import budget


def _trainer_evaluations(after, total, spe, every_epochs, every_steps=None):
  """The trainer's own rule (trainer.train_and_evaluate), step by step."""
  n = 0
  for step in range(after + 1, total + 1):
    end_of_epoch = step % spe == 0 or step == total
    if (end_of_epoch and (step // spe) % every_epochs == 0 or end_of_epoch and step == total
        or every_steps and step % every_steps == 0):
      n += 1
  return n


@pytest.mark.parametrize("after,total,spe,every,steps", [
    (0, 100, 10, 1, None), (0, 105, 10, 1, None), (3, 105, 10, 2, 25), (40, 40, 10, 1, None),
    (7, 120, 12, 3, 8), (200, 4690, 938, 1, None), (0, 1, 938, 1, None)])
def test_evaluation_count_follows_the_trainer(after, total, spe, every, steps):
  assert budget.evaluation_steps(after, total, spe, every, steps) == \
      _trainer_evaluations(after, total, spe, every, steps)


def test_solve_takes_the_longest_run_that_fits():
  kw = dict(budget_s=1800.0, elapsed_s=60.0, decided_at=200, step_s=0.1, eval_s=10.0,
            compile_s=20.0, reserve_s=18.0, steps_per_epoch=900, eval_every_epochs=1)
  total = budget.solve(**kw)

  def cost(n):
    evals = _trainer_evaluations(200, n, 900, 1)
    return 60 + 20 + (n - 200) * 0.1 * (1 + budget.RATE_MARGIN) + 10 * evals + 18
  assert cost(total) <= 1800 < cost(total + 1)
  assert 15_000 < total < 16_000          # about (1800 - 98) / 0.103 s plus the 200 done
  # a slower machine plans fewer steps over the same budget: the schedule is never cut
  assert budget.solve(**{**kw, "step_s": 0.2}) < total
  # nothing more fits: the run ends at the decision step
  assert budget.solve(**{**kw, "elapsed_s": 1790.0}) == 200


@pytest.mark.parametrize("minutes,warmup,schedule,match", [
    (-1.0, 10, "cosine", "must be > 0"),
    (10.0, 10, "constant", "optimizer.schedule='constant'"),
    (10.0, 2, "cosine", "raise warmup_epochs"),
])
def test_unplannable_budgets_are_named(minutes, warmup, schedule, match):
  assert match in budget.check(minutes, warmup, schedule)
  assert budget.check(10.0, 10, "cosine") is None
  assert budget.check(0.0, 0, "constant") is None       # 0: no budget


def test_plan_file_round_trip_keeps_an_earlier_plan(tmp_path):
  import ml_collections
  c = ml_collections.ConfigDict(dict(time_budget_minutes=5.0, eval_every_epochs=1,
                                     eval_every_steps=None, max_train_steps=None))
  p = budget.make_plan(c, launched_at=1000.0, elapsed_s=30.0, decided_at=50, measured_steps=25,
                       step_s=0.05, eval_s=2.0, compile_s=5.0, steps_per_epoch=100)
  assert p.total_steps > 50 and p.capped_by is None and p.reserve_seconds == 15.0
  assert p.deadline == 1000.0 + 300 - 15 - 2
  budget.write(p, str(tmp_path))
  assert budget.read(str(tmp_path)) == p
  budget.write(p, str(tmp_path))                 # the same plan: nothing kept, nothing new
  assert not os.path.exists(tmp_path / "plan.1.json")
  import dataclasses
  budget.write(dataclasses.replace(p, total_steps=p.total_steps + 1), str(tmp_path))
  assert budget.Plan(**json.loads((tmp_path / "plan.1.json").read_text())) == p  # kept
  assert budget.read(str(tmp_path)).total_steps == p.total_steps + 1
  (tmp_path / "plan.json").write_text("{")
  with pytest.raises(ValueError, match="plan.json is unreadable"):
    budget.read(str(tmp_path))


FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install -y dataset-fashion-mnist")
def test_budgeted_run_trains_its_plan_and_resumes_exactly(tmp_path, monkeypatch):
  from test_train import _params, tiny_config
  from spikejax.train import trainer
  planned = 7
  real_solve = budget.solve
  seen = {}

  def solve(**kw):     # the arithmetic is tested above; the plan here must not depend on speed
    seen.update(kw, fits=real_solve(**kw))
    return planned
  monkeypatch.setattr(budget, "solve", solve)
  spe = 60_000 // 16                          # runlocal batch 16
  over = dict(warmup_epochs=4 / spe, max_train_steps=1000, keep_checkpoints=10)
  a = str(tmp_path / "a")
  s = trainer.train_and_evaluate(tiny_config(time_budget_minutes=30.0, **over), a)
  with open(os.path.join(a, "plan.json")) as f:
    plan = json.load(f)
  assert plan["decided_at_step"] == 4 and plan["total_steps"] == planned == s["step"]
  assert plan["step_seconds"] > 0 and plan["eval_seconds"] > 0 and plan["capped_by"] is None
  assert seen["decided_at"] == 4 and seen["fits"] > planned   # 30 min hold far more steps
  assert s["plan"] == plan and s["stopped_by"] is None
  lrs = [json.loads(line) for line in open(os.path.join(a, "metrics.jsonl"))]
  lr = {r["step"]: r["train/lr"] for r in lrs if "train/lr" in r}
  assert lr[7] == pytest.approx(1e-5)          # the cosine ended at the planned step
  step_a, params_a = _params(a)

  # resumed from step 2, before the decision, with the plan kept: the resumed run builds the
  # planned schedule from the start (a failed swap in the first run would show here too)
  wd = str(tmp_path / "kept")
  shutil.copytree(a, wd)
  for d in os.listdir(os.path.join(wd, "checkpoints")):
    if d.isdigit() and int(d) > 2:
      shutil.rmtree(os.path.join(wd, "checkpoints", d))
  again = trainer.train_and_evaluate(tiny_config(time_budget_minutes=30.0, **over), wd)
  assert again["step"] == planned and again["plan"] == plan
  params_b = _params(wd)[1]
  for k in params_a:
    np.testing.assert_array_equal(np.asarray(params_a[k]), np.asarray(params_b[k]), err_msg=k)


def test_stretched_schedule_is_continuous_and_ends_as_the_original():
  from spikejax.train import optim
  base = optim.warmup_cosine_schedule(3e-3, total_steps=100, warmup_steps=10, min_lr=1e-5)
  for new_total in (80, 130):        # squeezed (a slower machine) and stretched (a faster one)
    f = optim.stretched(base, 30, 100, new_total)
    for t in (0, 5, 10, 29, 30):     # unchanged up to the revision
      assert float(f(t)) == pytest.approx(float(base(t)), rel=1e-6)
    assert float(f(31)) == pytest.approx(float(base(30 + 70 / (new_total - 30))), rel=1e-5)
    assert float(f(new_total)) == pytest.approx(1e-5, rel=1e-4)   # ends where the base ends
    assert float(f(new_total + 5)) == pytest.approx(1e-5, rel=1e-4)
    mid = 30 + (new_total - 30) // 2
    assert float(f(mid)) == pytest.approx(float(base(30 + (mid - 30) * 70 / (new_total - 30))),
                                          rel=1e-5)
    steps = np.asarray([float(f(t)) for t in range(10, new_total + 1)])
    assert np.all(np.diff(steps) <= 1e-9)         # the cosine still only decreases
  with pytest.raises(ValueError, match="at < new_total"):
    optim.stretched(base, 30, 100, 30)


def _config(**over):
  import ml_collections
  return ml_collections.ConfigDict(dict(dict(time_budget_minutes=30.0, eval_every_epochs=1,
                                             eval_every_steps=None, max_train_steps=None),
                                        **over))


def test_revision_solves_again_from_the_time_left():
  c = _config()
  p = budget.make_plan(c, launched_at=0.0, elapsed_s=60.0, decided_at=200, measured_steps=100,
                       step_s=0.1, eval_s=10.0, compile_s=10.0, steps_per_epoch=900)
  assert p.revise_at_step == 200 + round(budget.REVISE_FRACTION * (p.total_steps - 200))
  assert p.revision is None and p.schedule(lambda n: n) == p.total_steps
  at = p.revise_at_step
  # on time: the revision finds about the same length
  on_time = 60 + 10 + (at - 200) * 0.1 + 10 * (at // 900)
  same = budget.revise(p, c, elapsed_s=on_time, measured_steps=2000, step_s=0.1, eval_s=10.0)
  assert abs(same.total_steps - p.total_steps) < 0.01 * p.total_steps
  # 10 % slower steps from here on: fewer steps, still ending inside the budget
  slow = budget.revise(p, c, elapsed_s=on_time, measured_steps=2000, step_s=0.11, eval_s=10.0)
  assert slow.total_steps < p.total_steps
  n = slow.total_steps
  cost = (on_time + 10 + (n - at) * 0.11 * (1 + budget.RATE_MARGIN)
          + 10 * budget.evaluation_steps(at, n, 900, 1) + p.reserve_seconds)
  assert cost <= 1800
  assert slow.revision == dict(at_step=at, planned_total_steps=p.total_steps,
                               measured_steps=2000, step_seconds=0.11, eval_seconds=10.0,
                               elapsed_seconds=round(on_time, 3))
  assert slow.evaluations == budget.evaluation_steps(200, n, 900, 1)
  # faster steps and evaluations: more steps, and a later deadline (one shorter evaluation)
  fast = budget.revise(p, c, elapsed_s=on_time, measured_steps=2000, step_s=0.09, eval_s=8.0)
  assert fast.total_steps > p.total_steps and fast.deadline == p.deadline + 2.0
  # past the budget: one more step, the deadline stops the run
  late = budget.revise(p, c, elapsed_s=1795.0, measured_steps=2000, step_s=0.1, eval_s=10.0)
  assert late.total_steps == at + 1
  assert "revised at step" in fast.describe_revision()
  # short runs and capped runs are not revised
  short = budget.make_plan(_config(time_budget_minutes=0.5), launched_at=0.0, elapsed_s=10.0,
                           decided_at=20, measured_steps=10, step_s=0.1, eval_s=1.0,
                           compile_s=1.0, steps_per_epoch=900)
  assert short.revise_at_step is None
  capped = budget.make_plan(_config(max_train_steps=5000), launched_at=0.0, elapsed_s=60.0,
                            decided_at=200, measured_steps=100, step_s=0.1, eval_s=10.0,
                            compile_s=10.0, steps_per_epoch=900)
  assert capped.capped_by == "max_train_steps" and capped.revise_at_step is None


def test_a_revised_plan_round_trips_and_an_old_plan_is_never_revised(tmp_path):
  c = _config()
  p = budget.make_plan(c, launched_at=0.0, elapsed_s=60.0, decided_at=200, measured_steps=100,
                       step_s=0.1, eval_s=10.0, compile_s=10.0, steps_per_epoch=900)
  r = budget.revise(p, c, elapsed_s=600.0, measured_steps=2000, step_s=0.1, eval_s=10.0)
  budget.write(r, str(tmp_path))
  assert budget.read(str(tmp_path)) == r
  old = {k: v for k, v in json.loads((tmp_path / "plan.json").read_text()).items()
         if k not in ("revise_at_step", "revision")}    # a plan.json written before revisions
  (tmp_path / "plan.json").write_text(json.dumps(old))
  back = budget.read(str(tmp_path))
  assert back.revise_at_step is None and back.revision is None


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install -y dataset-fashion-mnist")
def test_revised_run_trains_the_stretched_schedule_and_resumes_exactly(tmp_path, monkeypatch):
  from test_train import _params, tiny_config
  from spikejax.train import optim, trainer
  first, revised = 20, 14
  calls = []

  def solve(**kw):     # the decision at step 4 plans 20 steps; the revision cuts them to 14
    calls.append(kw["decided_at"])
    return first if kw["decided_at"] == 4 else revised
  monkeypatch.setattr(budget, "solve", solve)
  monkeypatch.setattr(budget, "REVISE_MIN_STEPS", 2)
  spe = 60_000 // 16
  over = dict(warmup_epochs=4 / spe, max_train_steps=1000, keep_checkpoints=10)
  a = str(tmp_path / "a")
  s = trainer.train_and_evaluate(tiny_config(time_budget_minutes=30.0, **over), a)
  at = 4 + round(budget.REVISE_FRACTION * 16)
  assert calls == [4, at]
  plan = json.loads(open(os.path.join(a, "plan.json")).read())
  assert plan["revise_at_step"] == at and plan["total_steps"] == revised == s["step"]
  r = plan["revision"]
  assert r["at_step"] == at and r["planned_total_steps"] == first
  assert r["measured_steps"] == (at - 4) // 2 and r["step_seconds"] > 0
  kept = json.loads(open(os.path.join(a, "plan.1.json")).read())   # the first decision, kept
  assert kept["total_steps"] == first and kept["revision"] is None
  assert s["plan"] == plan and s["stopped_by"] is None
  rows = [json.loads(line) for line in open(os.path.join(a, "metrics.jsonl"))]
  lr = {row["step"]: row["train/lr"] for row in rows if "train/lr" in row}
  base = optim.warmup_cosine_schedule(3e-3, total_steps=first, warmup_steps=4, min_lr=1e-5)
  for step in range(5, at + 1):                 # the first plan's cosine up to the revision
    assert lr[step] == pytest.approx(float(base(step)), rel=1e-5)
  for step in range(at + 1, revised + 1):       # then its remainder squeezed onto 14 steps
    warped = at + (step - at) * (first - at) / (revised - at)
    assert lr[step] == pytest.approx(float(base(warped)), rel=1e-5)
  assert lr[revised] == pytest.approx(1e-5)
  params_a = _params(a)[1]

  # resumed before and after the revision: the same schedule, the same parameters
  for kept_step in (at - 1 - (at - 1) % 2, at + 2 - at % 2):
    wd = str(tmp_path / f"from{kept_step}")
    shutil.copytree(a, wd)
    for d in os.listdir(os.path.join(wd, "checkpoints")):
      if d.isdigit() and int(d) > kept_step:
        shutil.rmtree(os.path.join(wd, "checkpoints", d))
    calls.clear()
    again = trainer.train_and_evaluate(tiny_config(time_budget_minutes=30.0, **over), wd)
    assert calls == [] and again["step"] == revised and again["plan"] == plan
    params_b = _params(wd)[1]
    for k in params_a:
      np.testing.assert_array_equal(np.asarray(params_a[k]), np.asarray(params_b[k]),
                                    err_msg=f"{k} (resumed from {kept_step})")
