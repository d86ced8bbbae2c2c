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
