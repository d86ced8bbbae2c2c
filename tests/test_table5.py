"""launch/table5.py (the Table V report of a sweep) and launch/ab_summary.py (A/B medians)."""

import json

import pytest

from configs import table5_fashion_mnist
from launch import sweep, table5


def _hist(*rows):
  return [{"epoch": e, "step": int(e * 100), "train_min": t, "test_accuracy": a,
           "test_accuracy_ema": 0.0} for e, t, a in rows]


def test_equal_time_takes_the_last_evaluation_before_the_fastest_end():
  t, acc = table5.equal_time_accuracies({
      "fast": _hist((1, 1.0, 0.70), (2, 2.0, 0.80)),
      "slow": _hist((0.5, 1.5, 0.60), (1, 3.0, 0.75), (2, 6.0, 0.85)),
      "late": _hist((1, 2.5, 0.90))})
  assert t == 2.0
  assert acc == {"fast": 0.80, "slow": 0.60, "late": None}
  with pytest.raises(ValueError, match="no run has an evaluation"):
    table5.equal_time_accuracies({"a": []})


def test_rows_and_commands_come_from_the_sweep_configs(tmp_path):
  for i, over in enumerate(sweep.collect(table5_fashion_mnist)):
    c = sweep.build_config(table5_fashion_mnist, None, {}, over)
    run = tmp_path / sweep.run_name(i, over)
    run.mkdir()
    (run / "config.json").write_text(c.to_json_best_effort())
    (run / "summary.json").write_text(json.dumps({"history": _hist((2, 1.0 + i, 0.5)),
                                                  "best_accuracy": 0.5}))
  (tmp_path / "unfinished").mkdir()
  rows = table5.rows_of(str(tmp_path))
  assert len(rows) == 4
  keys = [(table5.family(c["model_name"]), c["mode"], c["spike"]["time_steps"])
          for _, c, _ in rows]
  assert [table5.PAPER[k][0] for k in keys] == [
      "Meta-SpikeFormer 1x1", "Meta-SpikeFormer 4x1", "+ SFA training 1x4", "+ E-SpikeFormer 1x4"]
  cmd = table5.bench_command(rows[1][1])
  opts = json.loads(cmd[cmd.index("--model-options") + 1])
  assert opts == {"embed_dims": [24, 48, 96, 128], "block_depths": [2, 1],
                  "strides": [2, 2, 2, 1, 1]}
  assert cmd[cmd.index("--time-steps") + 1] == "4" and cmd[cmd.index("--mode") + 1] == "vanilla"
  assert cmd[cmd.index("--in-channels") + 1] == "1" and "--train" in cmd
  e = table5.energy_command(str(tmp_path / "x"), 1000)
  assert e[e.index("--batches") + 1] == "2" and e[e.index("--batch-size") + 1] == "500"


def test_markdown_table():
  row = {"run": "00_x", "paper_row": "+ SFA training 1x4", "time_steps": 1, "spike_max": 4,
         "acc_equal_epochs": 0.9012, "acc_equal_time": None, "step_s": 0.1234,
         "xla_memory_mb": 12.3, "firing": 0.1, "sops_m": 1.5, "energy_mj": 0.01,
         "params": 1234567, "paper_top1": 77.8, "paper_energy_mj": 7.3}
  lines = table5.markdown([row]).splitlines()
  assert len(lines) == 3 and lines[1].count("---") == lines[0].count("|") - 1
  assert lines[2] == ("| + SFA training 1x4 | 1 x 4 | 90.12% | - | 0.1234 | 12.3 | 0.1000 | "
                      "1.50 | 0.0100 | 1,234,567 | 77.8 / 7.3 |")


def test_a_missing_workdir_is_named(tmp_path):
  with pytest.raises(SystemExit, match="does not exist; run the sweep first"):
    table5.main(["--workdir", str(tmp_path / "nope")])
  with pytest.raises(SystemExit, match="no finished run"):
    table5.main(["--workdir", str(tmp_path)])


def test_ab_summary_medians_and_ratio():
  from launch import ab_summary
  lines = [json.dumps({"round": r, "side": side, "case": "c", "result": {"step_median_s": t}})
           for r, side, t in ((1, "old", 1.0), (1, "new", 0.9), (2, "old", 1.2), (2, "new", 1.5),
                              (3, "old", 1.1), (3, "new", 1.0))]
  (row,) = ab_summary.summarize(lines)
  assert (row["old_s"], row["new_s"], row["new_over_old"], row["rounds"]) == (1.1, 1.0, 0.909, 3)
