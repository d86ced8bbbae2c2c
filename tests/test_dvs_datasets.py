"""spikejax.data.dvs_datasets: cifar10_dvs / har_dvs tfds builders on tiny mock releases, and
the HAR-DVS clip transform (spec section 6.1)."""

import pathlib

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from spikejax.data import dvs_datasets as D  # noqa: E402
from spikejax.data import events  # noqa: E402
from spikejax.data import transforms  # noqa: E402

try:
  import tensorflow  # noqa: F401  pylint: disable=unused-import
  HAVE_TF = True
except ImportError:
  HAVE_TF = False

needs_tf = pytest.mark.skipif(not HAVE_TF, reason="building tfds data sets needs TensorFlow: "
                                                   "pip install tensorflow-cpu")

# File numbers 0, 1, 2, 10: natural order puts 10 last (string order would put it second).
CIFAR_NUMBERS = (0, 1, 2, 10)


def _stream(rng, n):
  t = 5_000_000 + np.sort(rng.integers(0, 1_300_000, n))
  return events.EventStream.from_arrays(t, rng.integers(0, 128, n), rng.integers(0, 128, n),
                                        rng.integers(0, 2, n), sensor_size=(128, 128))


def _cifar_release(root: pathlib.Path, classes=D.CIFAR10_DVS_CLASSES):
  rng = np.random.default_rng(0)
  streams = {}
  for name in classes:
    (root / name).mkdir(parents=True)
    for k in CIFAR_NUMBERS:
      s = _stream(rng, int(rng.integers(1, 60)))
      fname = f"cifar10_{name}_{k}.aedat"
      events.write_aedat2(root / name / fname, s)
      streams[f"{name}/{fname}"] = s
  return streams


def _prepare(builder, manual_dir):
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


def _text(v):
  return v.decode() if isinstance(v, bytes) else str(v)


@pytest.fixture(scope="module")
def cifar_build(tmp_path_factory):
  if not HAVE_TF:
    pytest.skip("building tfds data sets needs TensorFlow")
  root = tmp_path_factory.mktemp("cifar10dvs")
  streams = _cifar_release(root / "manual")
  builder = D.Cifar10Dvs(data_dir=str(root / "tfds"), config=D.cifar10_dvs_config(0.75))
  _prepare(builder, root / "manual")
  return builder, streams


@needs_tf
def test_cifar10_dvs_events_round_trip_and_split(cifar_build):
  builder, streams = cifar_build
  assert builder.info.metadata["sensor_size"] == [128, 128]
  assert builder.info.features["label"].names == list(D.CIFAR10_DVS_CLASSES)
  seen = {}
  for split, numbers in (("train", CIFAR_NUMBERS[:3]), ("test", CIFAR_NUMBERS[3:])):
    source = builder.as_data_source(split)
    assert len(source) == 10 * len(numbers) == builder.info.splits[split].num_examples
    files = set()
    for i in range(len(source)):
      ex = source[i]
      key = _text(ex["file"])
      files.add(key)
      name = key.split("/")[0]
      assert int(ex["label"]) == D.CIFAR10_DVS_CLASSES.index(name)
      s = streams[key]
      ev = ex["events"]
      assert ev["t"].dtype == np.int32 and ev["x"].dtype == np.uint16
      np.testing.assert_array_equal(ev["t"], s.t - s.t[0])
      np.testing.assert_array_equal(ev["x"], s.x)
      np.testing.assert_array_equal(ev["y"], s.y)
      np.testing.assert_array_equal(ev["p"], s.p)
      seen[key] = split
    assert files == {f"{c}/cifar10_{c}_{k}.aedat" for c in D.CIFAR10_DVS_CLASSES
                     for k in numbers}
  assert set(seen) == set(streams)
  # A non-default fraction is read back from its directory.
  restored = tfds.builder_from_directory(builder.data_dir)
  assert len(restored.as_data_source("test")) == 10
  assert restored.info.metadata["train_fraction"] == 0.75


def test_cifar10_dvs_configs():
  default = D.cifar10_dvs_config()
  assert default is D.Cifar10Dvs.BUILDER_CONFIGS[0] and default.train_fraction == 0.9
  assert default.name == "split0p9"
  assert D.cifar10_dvs_config(0.75).name == "split0p75"
  with pytest.raises(ValueError, match="train_fraction"):
    D.Cifar10DvsConfig(train_fraction=1.0)
  names = [f"cifar10_dog_{k}.aedat" for k in (10, 2, 0, 999, 100, 1)]
  assert sorted(names, key=D.natural_sort_key) == [
      f"cifar10_dog_{k}.aedat" for k in (0, 1, 2, 10, 100, 999)]


@needs_tf
def test_cifar10_dvs_missing_dirs(tmp_path):
  builder = D.Cifar10Dvs(data_dir=str(tmp_path / "tfds"))
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist.*<class>"):
    _prepare(builder, missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=f"{empty} is empty"):
    _prepare(builder, empty)
  partial = tmp_path / "partial"
  for name in D.CIFAR10_DVS_CLASSES[:-1]:
    (partial / name).mkdir(parents=True)
    (partial / name / "cifar10_x_0.aedat").write_bytes(events.AEDAT2_MAGIC + b"\r\n")
  with pytest.raises(FileNotFoundError, match=f"{partial / 'truck'} does not exist"):
    _prepare(builder, partial)
  (partial / "truck").mkdir()
  with pytest.raises(FileNotFoundError, match="truck holds no .aedat"):
    _prepare(builder, partial)


# --------------------------------------------------------------------------- HAR-DVS

FRAME_NAMES = ("img_1.png", "img_2.png", "img_3.jpg", "img_10.png", "img_11.png")  # natural


def _har_release(root: pathlib.Path):
  rng = np.random.default_rng(1)
  videos = {}
  specs = [("walk/dvSave-a", 3, "train"), ("run/dvSave-b", 17, "train"),
           ("jump/dvSave-c", 299, "test")]
  lists = {"train": [], "test": []}
  for video, label, split in specs:
    folder = root / "rawframes" / video
    folder.mkdir(parents=True)
    frames = []
    for name in FRAME_NAMES:
      img = rng.integers(0, 256, (6, 9), dtype=np.uint8)
      if name.endswith(".jpg"):  # a colour JPEG: stored as PIL's grey conversion
        Image.fromarray(np.stack([img, img // 2, 255 - img], -1)).save(folder / name)
        with Image.open(folder / name) as im:
          img = np.asarray(im.convert("L"))
      else:
        Image.fromarray(img).save(folder / name)
      frames.append(img)
    (folder / "notes.txt").write_text("not a frame")
    videos[video] = (np.stack(frames)[..., None], label)
    lists[split].append(f"{video} {len(frames)} {label}")
  for split, lines in lists.items():
    (root / f"{split}_label.txt").write_text("\n".join(lines) + "\n")
  return videos


@pytest.fixture(scope="module")
def har_build(tmp_path_factory):
  if not HAVE_TF:
    pytest.skip("building tfds data sets needs TensorFlow")
  root = tmp_path_factory.mktemp("hardvs")
  videos = _har_release(root / "manual")
  builder = D.HarDvs(data_dir=str(root / "tfds"))
  _prepare(builder, root / "manual")
  return builder, videos


@needs_tf
def test_har_dvs_round_trip(har_build):
  builder, videos = har_build
  assert set(builder.info.splits) == {"train", "test"}  # no val_label.txt
  assert builder.info.metadata["sensor_size"] == [346, 260]
  assert builder.info.features["label"].num_classes == 300
  got = {}
  for split in ("train", "test"):
    source = builder.as_data_source(split)
    for i in range(len(source)):
      ex = source[i]
      got[_text(ex["video"])] = (split, ex)
  assert {v: s for v, (s, _) in got.items()} == {
      "walk/dvSave-a": "train", "run/dvSave-b": "train", "jump/dvSave-c": "test"}
  for video, (frames, label) in videos.items():
    ex = got[video][1]
    assert int(ex["label"]) == label
    out = np.asarray(ex["frames"])
    assert out.dtype == np.uint8 and out.shape == frames.shape
    np.testing.assert_array_equal(out, frames)  # natural frame order, exact pixels


def test_har_dvs_list_parsing(tmp_path):
  path = tmp_path / "train_label.txt"
  path.write_text("a/b 12 0\n\nsome dir/with space 3 299\n")
  assert D.parse_hardvs_list(path) == [("a/b", 0), ("some dir/with space", 299)]
  path.write_text("a/b 12 300\n")
  with pytest.raises(ValueError, match=r"train_label.txt:1: label 300"):
    D.parse_hardvs_list(path)
  path.write_text("a/b\n")
  with pytest.raises(ValueError, match=r":1: expected"):
    D.parse_hardvs_list(path)
  (tmp_path / "rawframes" / "x" / "v").mkdir(parents=True)
  assert D.resolve_hardvs_video(tmp_path, "x/v") == tmp_path / "rawframes" / "x" / "v"
  assert D.resolve_hardvs_video(tmp_path, "/elsewhere/rawframes/x/v") == \
      tmp_path / "rawframes" / "x" / "v"
  assert D.resolve_hardvs_video(tmp_path, "x/w") is None


@needs_tf
def test_har_dvs_missing_files(tmp_path):
  builder = D.HarDvs(data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'} does not exist"):
    _prepare(builder, tmp_path / "nowhere")
  manual = tmp_path / "manual"
  (manual / "rawframes" / "v1").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="train_label.txt does not exist"):
    _prepare(builder, manual)
  (manual / "train_label.txt").write_text("v1 0 1\nv2 0 2\n")
  (manual / "test_label.txt").write_text("v1 0 1\n")
  with pytest.raises(FileNotFoundError, match=r"1 video folder\(s\).*'v2'"):
    _prepare(builder, manual)


# --------------------------------------------------------------------------- hardvs_clip


def _ref(frames, resize, size):
  """Per-frame reference: resize -> crop -> channels (no flip)."""
  out = []
  for f in frames:
    img = transforms.center_crop(transforms.resize_shorter_side(f, resize, "bicubic"), size)
    out.append(events.hardvs_frame_channels(img[..., 0]))
  return np.stack(out)


def _match_start(clip, ref, allow_flip):
  """The start j with clip[k] == ref[j + k] (or its mirror image when allowed), and the flags."""
  t = len(clip)
  for j in range(len(ref) - t + 1):
    flips = []
    for k in range(t):
      if np.array_equal(clip[k], ref[j + k]):
        flips.append(False)
      elif allow_flip and np.array_equal(clip[k], ref[j + k][:, ::-1]):
        flips.append(True)
      else:
        break
    else:
      return j, flips
  raise AssertionError("clip is not a run of consecutive reference frames")


@pytest.fixture(scope="module")
def video():
  rng = np.random.default_rng(3)
  return rng.integers(0, 256, (12, 26, 34, 1), dtype=np.uint8)  # DAVIS-like 4:3 aspect


def test_hardvs_clip_eval(video):
  ref = _ref(video, 16, 14)
  starts = set()
  for seed in range(12):
    clip = D.hardvs_clip(video, 5, train=False, rng=seed, size=14, resize=16)
    assert clip.shape == (5, 14, 14, 2) and clip.dtype == np.float32
    assert set(np.unique(clip)) <= {0.0, 1.0}
    j, _ = _match_start(clip, ref, allow_flip=False)
    assert 0 <= j <= 12 - 5
    starts.add(j)
    np.testing.assert_array_equal(
        clip, D.hardvs_clip(video, 5, train=False, rng=np.random.default_rng(seed), size=14,
                            resize=16))  # determinism for a fixed rng
  assert len(starts) > 1  # random at test time too (official)
  for seed in range(3):
    clip = D.hardvs_clip(video, 5, train=False, rng=seed, size=14, resize=16,
                         eval_start="center")
    np.testing.assert_array_equal(clip, ref[3:8])  # (12 - 5) // 2 = 3
  # Sequence of [H, W] frames works as well.
  np.testing.assert_array_equal(
      D.hardvs_clip([f[..., 0] for f in video], 5, train=False, rng=0, size=14, resize=16),
      D.hardvs_clip(video, 5, train=False, rng=0, size=14, resize=16))


def test_hardvs_clip_train_flips_per_frame(video):
  ref = _ref(video, 16, 14)
  mixed = False
  for seed in range(6):
    clip = D.hardvs_clip(video, 8, train=True, rng=seed, size=14, resize=16)
    _, flips = _match_start(clip, ref, allow_flip=True)
    mixed |= 0 < sum(flips) < len(flips)
    np.testing.assert_array_equal(
        clip, D.hardvs_clip(video, 8, train=True, rng=seed, size=14, resize=16))
  assert mixed  # flips are drawn independently per frame


def test_hardvs_clip_padding_and_thresholds():
  # Constant frames: 20/255 < 0.12 -> ch0; 128/255 -> ch1; 230/255 > 0.78 -> 0.3 -> neither;
  # 50/255 ~ 0.196 -> neither.
  values = np.array([20, 128, 230], np.uint8)
  frames = np.broadcast_to(values[:, None, None, None], (3, 26, 34, 1))
  for start in ("random", "center"):
    clip = D.hardvs_clip(frames, 5, train=False, rng=0, size=14, resize=16, eval_start=start)
    assert clip.shape == (5, 14, 14, 2)
    expected = np.array([[1, 0], [0, 1], [0, 0], [0, 0], [0, 0]], np.float32)
    np.testing.assert_array_equal(clip, np.broadcast_to(expected[:, None, None, :], clip.shape))
  zero = D.hardvs_clip(np.zeros((0, 26, 34, 1), np.uint8), 4, train=True, rng=0, size=14,
                       resize=16)
  np.testing.assert_array_equal(zero, np.zeros((4, 14, 14, 2), np.float32))
  with pytest.raises(ValueError, match="eval_start"):
    D.hardvs_clip(frames, 2, train=False, rng=0, eval_start="middle")


def test_hardvs_clip_default_size():
  frames = np.random.default_rng(0).integers(0, 256, (9, 260, 346, 1), dtype=np.uint8)
  clip = D.hardvs_clip(frames, 8, train=True, rng=0)
  assert clip.shape == (8, 224, 224, 2) and clip.dtype == np.float32
  ref = _ref(frames, 256, 224)
  _match_start(clip, ref, allow_flip=True)


@needs_tf
def test_har_dvs_through_the_input_pipeline(har_build):
  """get_dataset('har_dvs'): the official clip (T consecutive frames, 2 binary channels) as
  batch-major [B, T, H, W, 2] batches, deterministic per (seed, epoch, step)."""
  from spikejax.data import get_dataset
  builder, _ = har_build
  kw = dict(data_dir=str(builder.data_dir_root), process_index=0, process_count=1,
            frames=dict(time_steps=3), image_size=8)
  ds = get_dataset("har_dvs", split="train", batch_size=2, train=True, seed=0, **kw)
  b = ds.get_batch(0, 0)
  assert b["image"].shape == (2, 3, 8, 8, 2) and set(np.unique(b["image"])) <= {0.0, 1.0}
  assert sorted(b["label"].tolist()) == [3, 17]
  np.testing.assert_array_equal(b["image"], ds.get_batch(0, 0)["image"])
  ev = get_dataset("har_dvs", split="test", batch_size=2, train=False, **kw)
  (batch,) = list(ev)
  assert batch["mask"].tolist() == [1.0, 0.0] and batch["label"][0] == 299


@needs_tf
def test_har_dvs_recipe_runlocal(tmp_path):
  """configs/har_dvs.py (the official DVS recipe, spec §6.3) for two steps on a mock release
  of 16 + 8 videos; the full config is the official one."""
  from configs import har_dvs
  from spikejax.train import trainer
  full = har_dvs.get_config()
  assert full.model_name == "espikeformer_dvs" and full.spike.time_steps == 8
  assert abs(full.optimizer.lr - 4e-5 * 72 / 256) < 1e-15 and full.ema_decay == 0.999
  rng = np.random.default_rng(0)
  manual = tmp_path / "manual"
  for split in ("train", "test"):
    lines = []
    for i in range(16 if split == "train" else 8):
      video = f"{split}/v{i}"
      (manual / "rawframes" / video).mkdir(parents=True)
      for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 26), dtype=np.uint8)).save(
            manual / "rawframes" / video / f"img_{k}.png")
      lines.append(f"{video} 3 {i % 4}")
    (manual / f"{split}_label.txt").write_text("\n".join(lines) + "\n")
  D.prepare_har_dvs(str(manual), str(tmp_path / "tfds"))
  c = har_dvs.get_config("runlocal,if_soft")
  c.data_dir = str(tmp_path / "tfds")
  s = trainer.train_and_evaluate(c, str(tmp_path / "wd"))
  assert s["step"] == 2, {k: v for k, v in s.items() if k != "history"}
  assert "eval/accuracy_ema" in (tmp_path / "wd" / "metrics.jsonl").read_text()
