"""The benchmark command runs and reports its fields (no timing is asserted)."""

import json

import pytest

from spikejax import bench


def test_bench_json_fields(capsys):
  assert bench.main(["--model", "metaspikformer_15m", "--resolution", "32", "--batch", "8",
                     "--num-classes", "10", "--in-channels", "1", "--train", "--steps", "1",
                     "--warmup", "0", "--mode", "vanilla", "--time-steps", "2",
                     "--model-options", '{"embed_dims": [8, 16, 16, 16], "block_depths": [1, 1]}',
                     "--json"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ("images_per_s", "step_median_s", "compile_s", "process_peak_rss_bytes",
              "xla_estimate_bytes"):
    assert key in out
  assert out["train"] is True and out["mode"] == "vanilla" and out["time_steps"] == 2
  assert out["model_options"] == {"embed_dims": [8, 16, 16, 16], "block_depths": [1, 1]}
  assert out["params"] == PARAMS_V2_8_16


# count_params(create_model("metaspikformer_15m", num_classes=10, in_channels=1,
#                           embed_dims=(8, 16, 16, 16), block_depths=(1, 1)))
PARAMS_V2_8_16 = 67_194


@pytest.mark.parametrize("text", ["[8, 16]", "{embed_dims: 8}"])
def test_bench_rejects_bad_model_options(text, capsys):
  with pytest.raises(SystemExit):
    bench.main(["--model-options", text])
  assert "--model-options" in capsys.readouterr().err


def test_bench_compare_modes(capsys):
  assert bench.main(["--model", "espikeformer_t", "--resolution", "16", "--batch", "8",
                     "--num-classes", "10", "--train", "--steps", "1", "--warmup", "0",
                     "--strides", "1,2,2,2,1", "--compare-modes", "--time-steps", "2",
                     "--model-options", '{"embed_dims": [8, 16, 16, 16], "block_depths": [1, 1]}',
                     "--json"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["sfa"]["time_steps"] == 1 and out["vanilla"]["time_steps"] == 2
  assert out["vanilla"]["mode"] == "vanilla" and out["speedup_sfa_over_vanilla"] > 0
