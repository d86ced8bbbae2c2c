"""launch/aot_compile.py: the trainer's train step compiled ahead of time, per-chip memory."""

import importlib.util
import json

import pytest

from launch import aot_compile

from conftest import REPO

MIM = f"{REPO}/configs/imagenet_mim.py:768,runlocal"
FINETUNE = f"{REPO}/configs/imagenet_large.py:finetune,runlocal"
MEMORY = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "generated_code_bytes",
          "total_bytes")


def run(capsys, *args):
  rc = aot_compile.main(list(args))
  out, err = capsys.readouterr()
  return rc, out, err


@pytest.mark.parametrize("config,extra,mesh,per_chip,task", [
    (MIM, [], {"data": 4, "fsdp": 2}, 2, "mim"),   # the config's batch (16) and mesh.fsdp (2)
    (FINETUNE, ["--per_chip_batch=1", "--mesh_fsdp=4", "--ann_twin"], {"data": 2, "fsdp": 4}, 1,
     "classify"),
])
def test_compiles_the_train_step_on_cpu_devices(capsys, config, extra, mesh, per_chip, task):
  rc, out, _ = run(capsys, f"--config={config}", "--topology=cpu:8", "--json", *extra)
  assert rc == 0
  r = json.loads(out)
  assert r["task"] == task and r["chips"] == 8 and r["hosts"] == 1 and r["mesh"] == mesh
  assert r["per_chip_batch"] == per_chip and r["global_batch"] == 8 * per_chip
  assert r["image_shape"] == [64, 64, 3] and r["params"] > 0
  m = r["memory"]
  assert all(isinstance(m[k], int) for k in MEMORY)
  assert m["argument_bytes"] > 0 and m["output_bytes"] > 0 and m["temp_bytes"] > 0
  assert m["alias_bytes"] > 0  # the donated state reuses its buffers
  assert m["total_bytes"] == (m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"]
                              + m["temp_bytes"] + m["generated_code_bytes"]) > 0
  # the finetuning config keeps an EMA copy of the variables (1/4 of them per chip: fsdp=4)
  assert (m["ema_bytes"] > 0) == (task == "classify")
  assert r["hbm_bytes"] is None and r["fits"] is None  # CPU devices: no HBM to fit
  assert r["compile_s"] >= 0 and r["lower_s"] >= 0
  # XLA's cost analysis of the executable; no roofline without a chip's peaks
  c = r["cost"]
  assert c["flops"] > 0 and c["bytes_accessed"] > 0
  assert c["intensity"] == pytest.approx(c["flops"] / c["bytes_accessed"])
  assert r["roofline"] is None
  # the HBM-placed share from the optimised HLO (CPU: one memory space, so all of it), and the
  # parser's own total within 10 % of XLA's
  assert c["hbm_bytes"] == c["model_bytes"] > 0
  assert c["model_bytes"] == pytest.approx(c["bytes_accessed"], rel=0.1)
  if "--ann_twin" in extra:
    # the ANN twin: the same parameters, ReLU in place of every SFA neuron
    t = r["ann_twin"]
    assert t["params"] == r["params"] and t["cost"]["flops"] > 0 and t["memory"]["total_bytes"] > 0
    assert r["vs_ann"]["flops_ratio"] == pytest.approx(c["flops"] / t["cost"]["flops"])
    assert r["vs_ann"]["bytes_ratio"] == pytest.approx(c["bytes_accessed"]
                                                       / t["cost"]["bytes_accessed"])
    # the quantiser (clip, round) is elementwise work the ReLU twin does not do
    assert c["flops"] > t["cost"]["flops"]
  else:
    assert "ann_twin" not in r and "vs_ann" not in r


def test_roofline_arithmetic():
  v5e = aot_compile.GENERATIONS["v5e"]
  assert v5e.ridge == pytest.approx(197e12 / 819e9)
  # 12 TFLOP over 139 GB on v5e: memory-bound (86 FLOP/byte < ridge ~241)
  r = aot_compile.roofline({"flops": 12e12, "bytes_accessed": 139e9}, "v5e")
  assert r["bound"] == "memory"
  assert r["compute_s"] == pytest.approx(12e12 / 197e12)
  assert r["memory_s"] == r["step_s"] == pytest.approx(139e9 / 819e9)
  assert r["mfu"] == pytest.approx((12e12 / 197e12) / (139e9 / 819e9))
  # above the ridge: compute-bound, MFU 1
  r = aot_compile.roofline({"flops": 30e12, "bytes_accessed": 50e9}, "v5e")
  assert r["bound"] == "compute" and r["mfu"] == 1.0 and r["step_s"] == r["compute_s"]
  assert aot_compile.roofline({"flops": 1.0, "bytes_accessed": 1.0}, "cpu") is None
  assert aot_compile.roofline(None, "v5e") is None
  lines = aot_compile._cost_lines({"cost": {"flops": 12e12, "bytes_accessed": 139e9,
                                            "intensity": 12e12 / 139e9},
                                   "roofline": aot_compile.roofline(
                                       {"flops": 12e12, "bytes_accessed": 139e9}, "v5e")})
  assert "12.0 TFLOP, 139.0 GB accessed" in lines[0] and "86.3 FLOP per byte" in lines[0]
  assert "memory-bound" in lines[1] and "MFU <= 36 %" in lines[1]
  cost = {"flops": 12e12, "bytes_accessed": 139e9, "hbm_bytes": 51e9}
  r = aot_compile.roofline(cost, "v5e")
  assert r["bound"] == "memory" and r["bound_hbm"] == "memory"
  assert r["memory_s_hbm"] == pytest.approx(51e9 / 819e9)
  assert r["mfu_hbm"] == pytest.approx((12e12 / 197e12) / (51e9 / 819e9))
  r = aot_compile.roofline({**cost, "hbm_bytes": 40e9}, "v5e")
  assert r["bound_hbm"] == "compute" and r["mfu_hbm"] == 1.0


def test_cost_numbers_reads_dicts_and_lists():
  class Compiled:
    def __init__(self, ca):
      self.ca = ca

    def cost_analysis(self):
      if isinstance(self.ca, Exception):
        raise self.ca
      return self.ca

  ca = {"flops": 8.0, "bytes accessed": 2.0, "transcendentals": 1.0}
  want = {"flops": 8.0, "bytes_accessed": 2.0, "transcendentals": 1.0, "intensity": 4.0}
  assert aot_compile.cost_numbers(Compiled(ca)) == want
  assert aot_compile.cost_numbers(Compiled([ca])) == want  # older jax: one dict per program
  assert aot_compile.cost_numbers(Compiled(NotImplementedError())) is None
  assert aot_compile.cost_numbers(Compiled({})) is None


def test_unknown_topology_lists_examples(capsys):
  for topo in ("v9z:2x2", "tpu", "v4:2x2"):
    rc, out, err = run(capsys, f"--config={MIM}", f"--topology={topo}")
    assert rc == 2 and not out
    assert topo in err and "v5e:4x4" in err and "v4:2x2x1" in err


def test_batch_and_mesh_errors_come_before_compiling(capsys):
  rc, _, err = run(capsys, f"--config={MIM}", "--topology=cpu:3")
  assert rc == 2 and "batch_size=16" in err and "not divisible by the 3 chips" in err
  rc, _, err = run(capsys, f"--config={MIM}", "--topology=cpu:8", "--mesh_fsdp=3")
  assert rc == 2 and "--mesh_fsdp=3 does not divide the 8 chips" in err
  rc, _, err = run(capsys, f"--config={MIM}", "--topology=cpu:8", "--per_chip_batch=0")
  assert rc == 2 and "--per_chip_batch must be >= 1" in err
  rc, _, err = run(capsys, f"--config={MIM}", "--topology=cpu:64")
  assert rc == 2 and "xla_force_host_platform_device_count=64" in err


def test_config_overrides(capsys):
  rc, out, _ = run(capsys, f"--config={FINETUNE}", "--topology=cpu:8", "--per_chip_batch=1",
                   "--mesh_fsdp=4", "--config.model.remat=dots", "--json")
  r = json.loads(out)
  assert rc == 0 and r["config"].endswith("--config.model.remat=dots")
  assert r["memory"]["temp_bytes"] > 0 and r["cost"]["flops"] > 0
  rc, _, err = run(capsys, f"--config={MIM}", "--topology=cpu:8", "--config.model.nope=1")
  assert rc == 2 and "the config has no key 'model.nope'" in err
  rc, _, err = run(capsys, f"--config={FINETUNE}", "--topology=cpu:8", "--config.model.remat=some")
  assert rc == 2 and "remat must be one of" in err
  with pytest.raises(SystemExit):
    aot_compile.parse([f"--config={MIM}", "--topology=cpu:8", "--bogus=1"])


def test_missing_libtpu_names_the_install(capsys, monkeypatch):
  monkeypatch.setattr(aot_compile, "have_libtpu", lambda: False)
  rc, _, err = run(capsys, f"--config={MIM}", "--topology=v5e:2x2")
  assert rc == 2 and "pip install libtpu" in err and "tpu-aot" in err


def test_oom_message_numbers():
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (21.00G) exceeds available HBM (15.75G).")  # libtpu 0.0.42
  assert aot_compile._oom_numbers(msg) == {"used_bytes": 21 * 2**30,
                                           "capacity_bytes": int(15.75 * 2**30)}
  msg = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
         "space hbm. Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G.")
  assert aot_compile._oom_numbers(msg) == {"used_bytes": int(20.5 * 2**30),
                                           "capacity_bytes": int(15.75 * 2**30)}
  assert aot_compile._oom_numbers("RESOURCE_EXHAUSTED: something else") == {}


def test_remat_numbers_from_the_compiler_log():
  log = ("I1130 13:38:24.874906   23134 deepsea_compiler_hlo_passes.cc:5714] XLA::TPU post "
         "optimization rematerialization limit 13.19G = 95% hbm (14.96G) - (arguments (1.75G) - "
         "aliased_output(0B)) - overlays (20.77M)\n"
         "I1130 13:38:24.874929   23134 deepsea_compiler_hlo_passes.cc:5728] XLA::TPU "
         "rematerialization hbm reduction:  21.78G => 14.50G\n")
  assert aot_compile._remat_numbers(log) == {"before_bytes": int(21.78 * 2**30),
                                             "after_bytes": int(14.5 * 2**30),
                                             "limit_bytes": int(13.19 * 2**30)}
  assert aot_compile._remat_numbers("I1130 nothing to see") is None


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -e '.[tpu-aot]')")
def test_compiles_for_a_tpu_topology(capsys):
  rc, out, _ = run(capsys, f"--config={MIM}", "--topology=v5e:2x2", "--json")
  r = json.loads(out)
  assert rc == 0 and r["device_kind"] == "TPU v5 lite" and r["chips"] == 4
  assert r["mesh"] == {"data": 2, "fsdp": 2} and r["per_chip_batch"] == 4
  assert r["hbm_bytes"] == 16 * 2**30 and r["fits"] is True and r["remat"] is None
  assert r["memory"]["generated_code_bytes"] > 0 and r["memory"]["temp_bytes"] > 0
  assert r["cost"]["flops"] > 0 and r["roofline"]["ridge"] == pytest.approx(240.5, abs=0.1)
  assert r["roofline"]["bound"] in ("memory", "compute") and 0 < r["roofline"]["mfu"] <= 1
