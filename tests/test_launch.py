"""launch/tpu_pod.py: the gcloud commands it runs on every worker of a TPU VM pod."""

import shlex

import pytest

from launch import tpu_pod


def test_dry_run_prints_the_command_for_every_worker(capsys):
  rc = tpu_pod.main(["--tpu=pod-1", "--zone=us-west4-a", "--project=proj", "--dry_run",
                     "--env", "TFDS_DATA_DIR=gs://b/tfds", "--",
                     "python", "-m", "spikejax.main", "--distributed",
                     "--config=configs/imagenet_espikeformer.py:m", "--workdir=gs://b/run 1"])
  assert rc == 0
  (line,) = capsys.readouterr().out.strip().splitlines()
  cmd = shlex.split(line)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1"]
  assert "--worker=all" in cmd and "--zone=us-west4-a" in cmd and "--project=proj" in cmd
  remote = cmd[cmd.index("--command") + 1]
  assert remote.startswith("cd spikejax && export TFDS_DATA_DIR=gs://b/tfds && "
                           ". .venv/bin/activate && python -m spikejax.main --distributed")
  assert shlex.split(remote)[-1] == "--workdir=gs://b/run 1"  # quoting survives the shell


def test_setup_copies_and_installs_first(capsys):
  assert tpu_pod.main(["--tpu=t", "--zone=z", "--setup", "--source=/src/repo", "--dry_run",
                       "--", "python", "-V"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3
  assert shlex.split(lines[0])[4:7] == ["scp", "--recurse", "/src/repo"]
  assert "bash launch/setup.sh" in lines[1] and lines[2].endswith("python -V'")


def test_bad_arguments_are_named():
  with pytest.raises(SystemExit, match="no command"):
    tpu_pod.main(["--tpu=t", "--zone=z", "--dry_run"])
  with pytest.raises(SystemExit, match="KEY=VALUE"):
    tpu_pod.main(["--tpu=t", "--zone=z", "--env", "oops", "--dry_run", "--", "ls"])


def test_ab_programs_compares_the_computation_not_its_names(tmp_path, capsys):
  """launch/ab_programs.py: the same module under another name, other argument paths and
  debug locations is the same program; one changed op is not."""
  import json
  from launch import ab_programs
  body = ('module @jit_{name} attributes {{mhlo.num_partitions = 1 : i32}} {{\n'
          '  func.func public @main(%arg0: tensor<2xf32> {{jax.arg_info = "{arg}"}}) -> '
          'tensor<2xf32> {{\n    %0 = stablehlo.{op} %arg0, %arg0 : tensor<2xf32> loc({loc})\n'
          '    return %0 : tensor<2xf32>\n  }}\n}}\n')
  sides = {"old": dict(name="_step", arg="state['a']", op="add", loc='"x.py":1:2'),
           "new": dict(name="step", arg="state['b']", op="add", loc='"y.py":3:4'),
           "other": dict(name="step", arg="state['b']", op="multiply", loc='"y.py":3:4')}
  for side, kw in sides.items():
    (tmp_path / side).mkdir()
    (tmp_path / side / "jax_ir0000_small.mlir").write_text("module @tiny {}\n")
    (tmp_path / side / "jax_ir0001_step.mlir").write_text(body.format(**kw))
  ab_programs.main([str(tmp_path / "old"), str(tmp_path / "new")])
  ab_programs.main([str(tmp_path / "old"), str(tmp_path / "other")])
  same, changed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  assert same["same_program"] and same["old"]["module"] == "jax_ir0001_step.mlir"
  assert same["old"]["modules_lowered"] == 2 and not changed["same_program"]
