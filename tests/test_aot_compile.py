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
    (FINETUNE, ["--per_chip_batch=1", "--mesh_fsdp=4"], {"data": 2, "fsdp": 4}, 1, "classify"),
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
