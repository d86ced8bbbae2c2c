"""The benchmark command runs and reports its fields (no timing is asserted)."""

import json

from spikejax import bench


def test_bench_json_fields(capsys):
  assert bench.main(["--model", "espikeformer_t", "--resolution", "32", "--batch", "8",
                     "--num-classes", "10", "--train", "--steps", "1", "--warmup", "0",
                     "--json"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ("images_per_s", "step_median_s", "compile_s", "process_peak_rss_bytes",
              "xla_estimate_bytes"):
    assert key in out
  assert out["train"] is True and out["mode"] == "sfa" and out["time_steps"] == 1


def test_bench_compare_modes(capsys):
  assert bench.main(["--model", "espikeformer_t", "--resolution", "16", "--batch", "8",
                     "--num-classes", "10", "--train", "--steps", "1", "--warmup", "0",
                     "--strides", "1,2,2,2,1", "--compare-modes", "--time-steps", "2",
                     "--json"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["sfa"]["time_steps"] == 1 and out["vanilla"]["time_steps"] == 2
  assert out["vanilla"]["mode"] == "vanilla" and out["speedup_sfa_over_vanilla"] > 0
