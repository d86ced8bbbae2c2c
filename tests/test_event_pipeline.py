"""Emulated event Fashion-MNIST: the emulator, its tfds data set, the frame pipeline, and
training / analysis on T event frames (spec §6, paper §4.1)."""

import gzip
import json
import os

import numpy as np
import pytest

from spikejax.data import emulate
from spikejax.data.fashion_mnist import DEBIAN_DIR

FMNIST_TEST = os.path.join(DEBIAN_DIR, "t10k-images-idx3-ubyte.gz")
try:
  import tensorflow  # noqa: F401  pylint: disable=unused-import
  HAVE_TF = True
except ImportError:
  HAVE_TF = False
needs_data = pytest.mark.skipif(not (HAVE_TF and os.path.exists(FMNIST_TEST)),
                                reason="needs tensorflow-cpu and dataset-fashion-mnist")


def _images(n=6):
  if os.path.exists(FMNIST_TEST):
    raw = gzip.open(FMNIST_TEST).read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:n]
  rng = np.random.default_rng(0)
  return (rng.random((n, 28, 28)) > 0.5).astype(np.uint8) * 255


def test_emulator_streams_are_valid_and_deterministic():
  imgs = _images(6)
  cfg = emulate.EmulatorConfig()
  ev = emulate.emulate_events(imgs, 0, seed=3, config=cfg)
  for e in ev:
    assert len(e["t"]) > 100
    assert np.all(np.diff(e["t"]) >= 0) and e["t"][0] >= 0 and e["t"][-1] < cfg.duration_us
    assert e["x"].min() >= 0 and e["x"].max() < cfg.sensor and e["y"].max() < cfg.sensor
    assert set(np.unique(e["p"])) <= {0, 1}
  # a stream depends only on (image, seed, index), not on the batch it was made in
  again = emulate.emulate_events(imgs[2:4], [2, 3], seed=3, config=cfg)
  for a, b in zip(again, ev[2:4]):
    for k in "txyp":
      np.testing.assert_array_equal(a[k], b[k])
  other = emulate.emulate_events(imgs[2:3], 2, seed=4, config=cfg)[0]
  assert len(other["t"]) != len(ev[2]["t"]) or not np.array_equal(other["t"], ev[2]["t"])


def test_emulator_physics():
  """No motion and no noise: no events. The path returns to its start, so every pixel ends
  where it began and ON and OFF threshold crossings nearly balance."""
  imgs = _images(4)
  still = emulate.EmulatorConfig(amplitude=0.0, jitter=0.0, noise_hz=0.0)
  assert all(len(e["t"]) == 0 for e in emulate.emulate_events(imgs, 0, config=still))
  quiet = emulate.EmulatorConfig(noise_hz=0.0, threshold_sigma=0.0)
  for e in emulate.emulate_events(imgs, 0, config=quiet):
    on, off = int(e["p"].sum()), int((1 - e["p"]).sum())
    assert abs(on - off) <= 0.05 * (on + off)
  # a blank image only gives background noise: rate x pixels x duration
  cfg = emulate.EmulatorConfig(noise_hz=20.0)
  n = [len(e["t"]) for e in emulate.emulate_events(np.zeros((8, 28, 28), np.uint8), 0,
                                                   config=cfg)]
  expected = 20.0 * 34 * 34 * 0.3
  assert abs(np.mean(n) - expected) < 0.15 * expected
  with pytest.raises(ValueError, match="greyscale"):
    emulate.emulate_events(np.zeros((2, 28, 28, 3), np.uint8), 0)


@pytest.fixture(scope="module")
def event_dir(tmp_path_factory):
  if not (HAVE_TF and os.path.exists(FMNIST_TEST)):
    pytest.skip("needs tensorflow-cpu and dataset-fashion-mnist")
  from spikejax.data import event_datasets
  from spikejax.data.fashion_mnist import prepare_fashion_mnist
  d = str(tmp_path_factory.mktemp("tfds_events"))
  prepare_fashion_mnist(d, max_examples_per_split=200)
  event_datasets.prepare_event_fashion_mnist(d, max_examples_per_split=96)
  return d


@needs_data
def test_event_dataset_is_the_emulator_output(event_dir):
  import tensorflow_datasets as tfds
  from spikejax.data import load_split_arrays
  src = tfds.data_source("event_fashion_mnist", split="test", data_dir=event_dir,
                         download=False)
  assert len(src) == 96
  images, labels = load_split_arrays("fashion_mnist", "test", data_dir=event_dir)
  by_label = {}
  for i in range(len(src)):
    rec = src[i]
    by_label.setdefault(int(rec["label"]), []).append(len(rec["events"]["t"]))
  # the stored streams are exactly the emulator's for the first examples of the split
  want = emulate.emulate_events(images[:96], 0)
  lengths = sorted(len(w["t"]) for w in want)
  assert sorted(n for v in by_label.values() for n in v) == lengths
  assert sorted(by_label) == sorted(set(labels[:96].tolist()))


@needs_data
def test_event_frames_pipeline(event_dir):
  from spikejax.data import get_dataset, model_input
  kw = dict(data_dir=event_dir, process_count=1, process_index=0)
  ds = get_dataset("event_fashion_mnist", split="train", batch_size=16, train=True, seed=1,
                   frames=dict(time_steps=4), augment={"crop": "pad", "padding": 2,
                                                       "flip": True}, **kw)
  b = ds.get_batch(0, 0)
  assert b["image"].shape == (16, 4, 34, 34, 2) and b["image"].dtype == np.float32
  assert b["target"].shape == (16, 10)
  np.testing.assert_array_equal(b["image"], ds.get_batch(0, 0)["image"])
  assert not np.array_equal(b["image"], ds.get_batch(1, 0)["image"])  # reshuffled epoch
  assert model_input(b["image"]).shape == (4, 16, 34, 34, 2)
  # eval: equal-count binary frames resized to 16 px, padded last batch with a mask
  ev = get_dataset("event_fashion_mnist", split="test", batch_size=40, train=False,
                   frames=dict(time_steps=2, split_by="count", mode="binary"),
                   image_size=16, **kw)
  batches = list(ev)
  assert len(batches) == 3 and batches[-1]["mask"].sum() == 16
  x = batches[0]["image"]
  assert x.shape == (40, 2, 16, 16, 2) and set(np.unique(x)) <= {0.0, 1.0}
  # equal-count bins hold (nearly) the same number of events in each frame
  counts = get_dataset("event_fashion_mnist", split="test", batch_size=8, train=False,
                       frames=dict(time_steps=2, split_by="count"), **kw).get_batch(0, 0)
  per_frame = counts["image"].sum(axis=(2, 3, 4))
  assert np.all(np.abs(per_frame[:, 0] - per_frame[:, 1]) <= 1)
  # two processes read disjoint halves
  halves = [get_dataset("event_fashion_mnist", split="test", batch_size=48, train=False,
                        data_dir=event_dir, process_count=2, process_index=p,
                        frames=dict(time_steps=1)) for p in (0, 1)]
  assert halves[0].shard == (0, 48) and halves[1].shard == (48, 96)
  with pytest.raises(ValueError, match="split_by"):
    get_dataset("event_fashion_mnist", split="test", batch_size=8, train=False,
                frames=dict(split_by="random"), **kw)
  with pytest.raises(ValueError, match="frames= applies to event data"):
    get_dataset("fashion_mnist", split="test", batch_size=8, train=False, frames={}, **kw)
  with pytest.raises(ValueError, match="not randaugment|randaugment"):
    get_dataset("event_fashion_mnist", split="train", batch_size=8, train=True,
                augment={"randaugment": "rand-m9-mstd0.5-inc1"}, **kw)


@needs_data
def test_flip_and_shift_are_the_same_for_all_frames(event_dir):
  from spikejax.data import get_dataset
  kw = dict(split="train", batch_size=32, data_dir=event_dir, process_count=1,
            process_index=0, train=True, seed=5, frames=dict(time_steps=3))
  plain = get_dataset("event_fashion_mnist", augment="none", **kw).get_batch(0, 0)["image"]
  flipped = get_dataset("event_fashion_mnist", augment={"crop": "none", "flip": True},
                        **kw).get_batch(0, 0)["image"]
  same = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
  mirrored = [np.array_equal(f, p[:, :, ::-1]) for f, p in zip(flipped, plain)]
  assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)


@needs_data
@pytest.mark.parametrize("arg", ["if_soft", "vanilla"])
def test_train_on_event_frames_with_temporal_modes(event_dir, tmp_path, arg):
  """The main job on T = 4 event frames (runlocal): SFA with the membrane carried across
  frames, and the vanilla baseline; firing statistics per real timestep."""
  from configs import event_fashion_mnist
  from spikejax.train import trainer
  config = event_fashion_mnist.get_config(f"runlocal,{arg}")
  config.data_dir = event_dir
  config.progress_bar = False
  s = trainer.train_and_evaluate(config, str(tmp_path / "wd"))
  assert s["step"] == 3 and 0.0 <= s["best_accuracy"] <= 1.0
  firing = json.loads((tmp_path / "wd" / "firing.json").read_text())
  layer = next(iter(firing["layers"].values()))
  assert np.asarray(layer["nsfr"]).shape[0] == 4  # one row per real timestep
  from spikejax.train import checkpoints
  model, _ = checkpoints.load_trained(str(tmp_path / "wd"))
  assert model.spike.temporal == ("lif_hard" if arg == "vanilla" else "if_soft")
  assert model.spike.time_steps == 4


def test_config_checks_frames_against_time_steps():
  import ml_collections
  from configs import event_fashion_mnist
  from spikejax.train import trainer
  c = event_fashion_mnist.get_config("runlocal")
  c.frames.time_steps = 8
  assert c.spike.time_steps == 8  # the model's T follows the frames (a reference)
  c.frames = ml_collections.ConfigDict({"time_steps": 2})  # a config without the reference
  with pytest.raises(trainer.ConfigError, match="frames.time_steps=2"):
    trainer.validate(c, 8)
  with pytest.raises(ValueError, match="unknown config argument"):
    event_fashion_mnist.get_config("lif")
