"""Bad input gets one line naming the problem and the fix, before anything is compiled or
written (the reliability issue's list; docs/reliability.md, "Refused up front")."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from spikejax import convert, main
from spikejax.data import DataError, fashion_mnist as FM
from spikejax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/fashion_mnist.py:runlocal"


def _argv(*extra):
  return ["spikejax.main", CONFIG, "--workdir=/tmp/unused", *extra]


@pytest.mark.parametrize("extra,message", [
    (("--config.nope=1",), "--config.nope=1: the config has no key 'nope'; did you mean 'mode'?"),
    (("--config.optimizer.lrr=0.1",),
     "config.optimizer has no key 'lrr'; did you mean 'optimizer.lr'?"),
    (("--config.spike.time_steps=2", "--config.zzzz.x=1"), "the config has no key 'zzzz'; its "
                                                           "keys: augment, batch_size"),
])
def test_unknown_config_keys_are_named_with_the_closest_key(extra, message):
  assert message in main.check_config_args(_argv(*extra))


def test_config_file_and_argument_errors():
  got = main.check_config_args(["m", "--config=configs/nothere.py", "--workdir=x"])
  assert "no such config file 'configs/nothere.py'" in got and "fashion_mnist.py" in got
  got = main.check_config_args(["m", "--config=configs/fashion_mnist.py:runlocl"])
  assert "unknown config argument 'runlocl' (did you mean 'runlocal'?)" in got
  assert main.check_config_args(_argv("--config.spike.spike_max=8")) is None


def _run_main(*args, env=None):
  full = dict(os.environ, **(env or {}))
  full["XLA_FLAGS"] = os.environ.get("SPIKEJAX_TEST_COMPILE_FLAGS", "")   # one device
  return subprocess.run([sys.executable, "-m", "spikejax.main", *args], cwd=REPO, env=full,
                        capture_output=True, text=True, timeout=300)


def _lines(text):
  """Output lines other than XLA's backend start-up log."""
  return [x for x in text.splitlines() if x.strip() and "xla_bridge" not in x]


@pytest.mark.parametrize("args,message", [
    ((CONFIG, "--workdir=/tmp/unused", "--config.nope=1"), "config error: --config.nope=1"),
    (("--config=configs/nothere.py", "--workdir=/tmp/unused"), "no such config file"),
    ((CONFIG, "--workdir=/tmp/unused", "--config.batch_size=abc"),
     "flag --config.batch_size=abc: invalid literal for int()"),
])
def test_the_main_job_prints_one_line_and_exits_2(args, message):
  out = _run_main(*args)
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(_lines(out.stderr)) == 1 and message in out.stderr, out.stderr[-2000:]
  assert not os.path.exists("/tmp/unused")


def _read_only_dir(path):
  """``path`` made unwritable (chmod, or for root the immutable attribute), or None."""
  os.makedirs(path)
  os.chmod(path, 0o555)
  if not os.access(path, os.W_OK) or os.geteuid() != 0:
    return path
  subprocess.run(["chattr", "+i", path], capture_output=True)
  try:
    open(os.path.join(path, "probe"), "w").close()
  except OSError:
    return path
  os.remove(os.path.join(path, "probe"))
  return None


def test_read_only_workdir_is_refused_before_building_anything(tmp_path):
  from test_train import tiny_config
  wd = _read_only_dir(str(tmp_path / "ro"))
  if wd is None:
    pytest.skip("cannot make a directory read-only here (root without chattr)")
  try:
    with pytest.raises(trainer.ConfigError, match=r"--workdir=.*/ro is not writable .*pass a "
                                                  r"directory you can write to"):
      trainer.train_and_evaluate(tiny_config(), wd)
  finally:
    subprocess.run(["chattr", "-i", wd], capture_output=True)
    os.chmod(wd, 0o755)
  assert os.listdir(wd) == []


@pytest.mark.parametrize("over,match", [
    ({"image_size": 16}, r"image_size=16 is smaller than fashion_mnist's 28 px images, which "
                         r"this data set zero-pads .*use image_size >= 28"),
    ({"image_size": 28, "model.strides": (2, 2, 2, 2, 2)},
     r"image_size=28 is smaller than espikeformer_t's total stride 32 .*image_size >= 32"),
    # the family's own config checks come first (no model is built)
    ({"image_size": 32, "model.strides": (2, 2, 2, 2, 4)},
     r"bad model config: strides must be 5 values in \{1, 2\}"),
])
def test_image_size_the_data_or_model_cannot_take(over, match):
  from test_train import tiny_config
  with pytest.raises(trainer.ConfigError, match=match):
    trainer.validate(tiny_config(**over), 8)


def _fmnist_dir_with_one_bad_file(path, bad):
  os.makedirs(path)
  for name in FM.FILE_NAMES:
    with (open(os.path.join(path, name), "wb") if name == bad else
          gzip.open(os.path.join(path, name), "wb")) as f:
      f.write(b"this is not gzip data" if name == bad else b"\0" * 100)
  return path


def test_a_non_gzip_fashion_mnist_file_is_named(tmp_path):
  bad = FM.FILE_NAMES[0]       # the first one read
  src = _fmnist_dir_with_one_bad_file(str(tmp_path / "src"), bad)
  with pytest.raises(DataError, match=f"{src}/{bad} is not a readable gzip archive .*"
                                      "apt-get update && apt-get install -y"):
    FM.verify_source_files(src)
  with pytest.raises(DataError, match=f"{bad} is not a readable gzip archive"):
    FM.read_idx_arrays(src, split="train")


def test_the_main_job_names_a_non_gzip_data_file(tmp_path):
  """The whole path: no prepared data set, the source files bad -> one line, exit 2."""
  pytest.importorskip("tensorflow", reason="building fashion_mnist needs TensorFlow")
  bad = "train-images-idx3-ubyte.gz"
  src = _fmnist_dir_with_one_bad_file(str(tmp_path / "src"), bad)
  out = _run_main(CONFIG, f"--workdir={tmp_path / 'wd'}",
                  env={"FASHION_MNIST_DIR": src, "TFDS_DATA_DIR": str(tmp_path / "tfds"),
                       "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [x for x in out.stderr.splitlines() if x.startswith("data error")]
  assert len(errors) == 1 and f"{bad} is not a readable gzip archive" in errors[0], \
      out.stderr[-3000:]
  assert "Traceback" not in out.stderr


def test_convert_refuses_garbage_files_in_one_line(tmp_path, capsys):
  for name, message in [("g.npz", "is not a .npz archive (not a zip file)"),
                        ("missing.npz", "does not exist")]:
    path = tmp_path / name
    if name == "g.npz":
      path.write_bytes(b"garbage")
    assert convert.cli([str(path), "--model", "espikeformer_t", "--out",
                         str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
  np.savez(tmp_path / "obj.npz", w=np.array([{"a": 1}], dtype=object))
  assert convert.cli([str(tmp_path / "obj.npz"), "--model", "espikeformer_t", "--out",
                       str(tmp_path / "out")]) == 2
  assert "object arrays are refused" in capsys.readouterr().err
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "x").write_text("kept")
  assert convert.cli([str(tmp_path / "obj.npz"), "--model", "espikeformer_t", "--out",
                       str(tmp_path / "taken")]) == 2
  assert "exists and is not empty" in capsys.readouterr().err
  assert not (tmp_path / "out").exists() and (tmp_path / "taken" / "x").read_text() == "kept"
