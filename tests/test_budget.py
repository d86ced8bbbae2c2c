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
