"""launch/gpu_check.py: the prepared GPU check, dry-run on the CPU with tiny settings."""

import json

from launch import gpu_check


def test_dry_run_writes_one_json_and_never_overwrites(tmp_path, capsys):
  out = tmp_path / "check.json"
  args = ["--out", str(out), "--allow-cpu", "--model", "espikeformer_t", "--resolution", "32",
          "--num-classes", "10", "--min-batch", "2", "--max-batch", "3", "--steps", "1",
          "--dtypes", "float32", "--modes", "sfa"]
  assert gpu_check.main(args) == 0
  r = json.loads(out.read_text())
  row = r["spikejax"]["float32/sfa"]
  assert [t["batch"] for t in row["tries"]] == [2] and row["tries"][0]["ok"]   # 4 > max 3
  assert row["best"]["batch"] == 2 and row["best"]["train_images_per_s"] > 0
  assert row["best"]["infer_images_per_s"] > 0
  assert "needs --torch-python" in r["official"]["not_run"]
  assert r["summary"]["float32/sfa"]["batch"] == 2
  assert "bar_2000" not in r["summary"]   # the bar is for espikeformer_m only
  capsys.readouterr()
  before = out.read_text()
  assert gpu_check.main(args) == 2 and "never overwritten" in capsys.readouterr().err
  assert out.read_text() == before


def test_refuses_without_gpu_and_bad_batches(tmp_path, capsys):
  assert gpu_check.main(["--out", str(tmp_path / "a.json")]) == 2
  assert "no GPU" in capsys.readouterr().err
  assert gpu_check.main(["--out", str(tmp_path / "b.json"), "--min-batch", "8",
                         "--max-batch", "4"]) == 2
  assert "--min-batch <= --max-batch" in capsys.readouterr().err
  assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()


def test_largest_batch_stops_at_the_first_failure():
  seen = []

  def try_batch(b):
    seen.append(b)
    return {"ok": b <= 64, **({"oom": True} if b > 64 else {"train_images_per_s": b})}

  r = gpu_check._largest(try_batch, 16, 1024)
  assert seen == [16, 32, 64, 128] and r["best"]["batch"] == 64
  assert r["tries"][-1] == {"batch": 128, "ok": False, "oom": True}
  s = gpu_check.summary({"bfloat16/sfa": {"best": {"batch": 64, "train_images_per_s": 2500.0,
                                                   "infer_images_per_s": 9000.0}}},
                        {"bfloat16/sfa": {"best": {"train_images_per_s": 1000.0,
                                                   "infer_images_per_s": 3000.0}}},
                        "espikeformer_m")
  assert s["bfloat16/sfa"]["vs_official_train"] == 2.5 and s["bfloat16/sfa"]["vs_official_infer"] == 3.0
  assert s["bar_2000"] is True and s["goal_4000"] is False
