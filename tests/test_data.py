"""Input pipelines (spikejax.data): tfds mock data for cifar10/imagenet2012, the real Debian
Fashion-MNIST files for a small local tfds build, and the numpy augmentations."""

import hashlib
import importlib.util
import math
import os

import numpy as np
import pytest

import spikejax.data as D
from spikejax.data import augment as A
from spikejax.data import fashion_mnist as FM
from spikejax.data import transforms as T

tfds = pytest.importorskip("tensorflow_datasets")

HAVE_FMNIST = all(os.path.isfile(os.path.join(FM.DEBIAN_DIR, f)) for f in FM.FILE_NAMES)
HAVE_TF = importlib.util.find_spec("tensorflow") is not None
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST, reason=f"Fashion-MNIST files absent from {FM.DEBIAN_DIR}; install them with "
    f"`{FM.INSTALL_HINT}`")
needs_tf = pytest.mark.skipif(
    not HAVE_TF, reason="building tfds fashion_mnist needs TensorFlow: "
    "pip install tensorflow-cpu==2.21.0")


def mock(n):
  return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def batches_equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def unnormalize(ds, images):
  return np.rint((images * ds.std + ds.mean) * 255.0).astype(np.int64)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
  if not HAVE_FMNIST:
    pytest.skip(f"Fashion-MNIST files absent from {FM.DEBIAN_DIR}; install them with "
                f"`{FM.INSTALL_HINT}`")
  if not HAVE_TF:
    pytest.skip("building tfds fashion_mnist needs TensorFlow: pip install tensorflow-cpu==2.21.0")
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  # First 300 examples of each split only (tfds' max_examples_per_split), to keep the test fast.
  D.prepare_fashion_mnist(data_dir, max_examples_per_split=300)
  return data_dir


def test_fashion_mnist_missing_files_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
    D.prepare_fashion_mnist(str(tmp_path / "tfds"), source_dir=str(tmp_path))


@needs_fmnist
def test_fashion_mnist_mean_std_constants():
  images, labels = FM.read_idx_arrays(split="train")
  assert images.shape == (60000, 28, 28, 1) and np.bincount(labels).tolist() == [6000] * 10
  x = images.astype(np.float64) / 255.0
  assert abs(x.mean() - FM.MEAN) < 1e-6 and abs(x.std() - FM.STD) < 1e-6


def test_fashion_mnist_rejects_other_files(tmp_path):
  import gzip
  for name in FM.FILE_NAMES:  # e.g. MNIST digits under the same names
    with gzip.open(tmp_path / name, "wb") as f:
      f.write(b"\0" * 100)
  with pytest.raises(ValueError, match="does not decompress to the Fashion-MNIST"):
    FM.verify_source_files(str(tmp_path))


@needs_fmnist
@needs_tf
def test_fashion_mnist_local_build_is_tfds_own_dataset(fmnist_dir):
  builder = tfds.builder("fashion_mnist", data_dir=fmnist_dir)  # tfds' registered builder
  assert builder.is_prepared() and str(builder.version) == "3.0.1"
  assert builder.info.features["label"].names[0] == "T-shirt/top"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 300,
                                                                        "test": 300}
  # The prepared examples are exactly the first 300 of each raw idx split.
  for split in ("train", "test"):
    source = tfds.data_source("fashion_mnist", split=split, data_dir=fmnist_dir, download=False)
    got = sorted(hashlib.sha1(ex["image"].tobytes() + bytes([ex["label"]])).hexdigest()
                 for ex in (source[i] for i in range(len(source))))
    images, labels = FM.read_idx_arrays(split=split)
    want = sorted(hashlib.sha1(im.tobytes() + bytes([int(l)])).hexdigest()
                  for im, l in zip(images[:300], labels[:300], strict=True))
    assert got == want
  assert D.prepare_fashion_mnist(fmnist_dir).endswith("3.0.1")  # already prepared: no-op


@needs_fmnist
@needs_tf
def test_fashion_mnist_pipeline(fmnist_dir):
  kw = dict(split="train", batch_size=64, data_dir=fmnist_dir, train=True, process_index=0,
            process_count=1, prefetch=0)
  ds = D.get_dataset("fashion_mnist", seed=1, **kw)
  assert (ds.num_examples, ds.steps_per_epoch, ds.num_classes) == (300, 4, 10)
  assert ds.image_shape == (28, 28, 1)
  b = ds.get_batch(0, 0)
  assert b["image"].shape == (64, 28, 28, 1) and b["image"].dtype == np.float32
  assert b["label"].dtype == np.int32 and b["target"].shape == (64, 10)
  np.testing.assert_allclose(b["target"].sum(-1), 1.0, rtol=1e-6)
  again = D.get_dataset("fashion_mnist", seed=1, **kw)
  for x, y in zip(ds.iter_epoch(1), again.iter_epoch(1), strict=True):
    assert batches_equal(x, y)
  other = D.get_dataset("fashion_mnist", seed=2, **kw)
  assert not np.array_equal(other.get_batch(0, 0)["image"], b["image"])

  ev = D.get_dataset("fashion_mnist", split="test", batch_size=128, data_dir=fmnist_dir,
                     train=False, image_size=32, channels=3, process_index=0, process_count=1)
  batches = list(ev)
  assert len(batches) == ev.steps_per_epoch == 3
  assert [b["mask"].sum() for b in batches] == [128, 128, 44]
  assert batches[-1]["image"].shape == (128, 32, 32, 3)
  # Eval images = the raw pixels, zero-padded 28 -> 32, grey replicated, normalized.
  raw, labels = D.load_split_arrays("fashion_mnist", "test", fmnist_dir)
  x = np.concatenate([b["image"] for b in batches])[:300]
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
  pixels = np.rint((x[..., :1] * FM.STD + FM.MEAN) * 255).astype(np.int64)
  np.testing.assert_array_equal(pixels[:, 2:30, 2:30], raw)
  assert (pixels[:, :2] == 0).all() and (pixels[:, :, 30:] == 0).all()
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:300], labels)


# --------------------------------------------------------------------------- mocked tfds


def test_cifar10_sharding_covers_split_disjointly():
  n, P = 50, 2
  with mock(n):
    full, labels = D.load_split_arrays("cifar10", "train", "/unused")
    seen = []
    for p in range(P):
      ev = D.get_dataset("cifar10", split="train", batch_size=8, train=False, data_dir="/unused",
                         process_index=p, process_count=P)
      assert ev.num_examples == n and ev.steps_per_epoch == math.ceil(25 / 4)
      batches = list(ev)
      assert len(batches) == ev.steps_per_epoch
      mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
      x = np.concatenate([b["image"] for b in batches])[mask]
      start, end = ev.shard
      np.testing.assert_array_equal(unnormalize(ev, x), full[start:end])
      np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask],
                                    labels[start:end])
      seen.append(np.arange(start, end))
      tr = D.get_dataset("cifar10", split="train", batch_size=8, train=True, seed=3,
                         augment="none", data_dir="/unused", process_index=p, process_count=P,
                         prefetch=0)
      assert tr.steps_per_epoch == (n // P) // 4
      used = np.concatenate([tr.batch_indices(0, s)[0] for s in range(tr.steps_per_epoch)])
      assert len(set(used.tolist())) == len(used) and used.max() < tr.num_local_examples
      b = tr.get_batch(0, 1)
      np.testing.assert_array_equal(unnormalize(tr, b["image"]),
                                    full[start + tr.batch_indices(0, 1)[0]])
      np.testing.assert_array_equal(b["target"], np.eye(10, dtype=np.float32)[b["label"]])
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(np.concatenate(seen).tolist()) == list(range(n))


def test_cifar10_train_determinism_and_resume():
  with mock(40):
    kw = dict(split="train", batch_size=8, train=True, data_dir="/unused", process_index=1,
              process_count=2, augment=dict(crop="pad", padding=4, flip=True, reprob=0.25,
                                            mixup=0.8, cutmix=1.0, label_smoothing=0.1))
    a = D.get_dataset("cifar10", seed=7, **kw)
    b = D.get_dataset("cifar10", seed=7, prefetch=0, **kw)
    it_a, it_b = iter(a), iter(b)
    first = [next(it_a) for _ in range(2 * a.steps_per_epoch + 1)]
    for x in first:
      assert batches_equal(x, next(it_b))
      assert x["image"].shape == (4, 32, 32, 3) and x["target"].shape == (4, 10)
      np.testing.assert_allclose(x["target"].sum(-1), 1.0, rtol=1e-5)
    resumed = next(iter(a.iterate(start_step=a.steps_per_epoch + 2)))
    assert batches_equal(resumed, first[a.steps_per_epoch + 2])
    # epochs are reshuffled
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    assert not batches_equal(D.get_dataset("cifar10", seed=8, **kw).get_batch(0, 0), first[0])


def test_flip_augmentation_mirrors_some_images_and_changes_nothing_else():
  with mock(16):
    full, _ = D.load_split_arrays("cifar10", "train", "/unused")
    tr = D.get_dataset("cifar10", split="train", batch_size=16, train=True, seed=0,
                       augment="flip", data_dir="/unused", process_index=0, process_count=1,
                       prefetch=0)
    assert tr.augment == A.AugmentConfig(crop="none", flip=True)
    b = tr.get_batch(0, 0)
    src = full[tr.batch_indices(0, 0)[0]]
    got = unnormalize(tr, b["image"])
    same = [np.array_equal(g, s) for g, s in zip(got, src, strict=True)]
    mirrored = [np.array_equal(g, s[:, ::-1]) for g, s in zip(got, src, strict=True)]
    assert all(a or m for a, m in zip(same, mirrored, strict=True))
    assert any(m and not a for a, m in zip(same, mirrored, strict=True)) and any(same)
    np.testing.assert_array_equal(b["target"], np.eye(10, dtype=np.float32)[b["label"]])
  with pytest.raises(ValueError, match="augment must be 'default', 'none', 'flip'.*'mirror'"):
    A.augment_config("mirror", A.AugmentConfig())


def test_cifar10_randaugment_path_is_deterministic():
  with mock(16):
    kw = dict(split="train", batch_size=8, train=True, data_dir="/unused", process_index=0,
              process_count=1, prefetch=0, augment=dict(randaugment="rand-m9-mstd0.5-inc1"))
    x = D.get_dataset("cifar10", seed=0, num_workers=1, **kw).get_batch(1, 1)
    y = D.get_dataset("cifar10", seed=0, num_workers=3, **kw).get_batch(1, 1)
    assert batches_equal(x, y)


def test_imagenet2012_train_and_eval():
  with mock(12):
    kw = dict(batch_size=4, data_dir="/unused", image_size=32, process_index=0, process_count=1)
    tr = D.get_dataset("imagenet2012", split="train", train=True, seed=0, **kw)  # DeiT preset
    assert tr.augment.crop == "rrc" and tr.augment.randaugment == "rand-m9-mstd0.5-inc1"
    assert tr.num_classes == 1000 and tr.steps_per_epoch == 3
    b = next(iter(tr))
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and (b["label"] < 1000).all()
    assert b["target"].shape == (4, 1000)
    np.testing.assert_allclose(b["target"].sum(-1), 1.0, rtol=1e-5)
    tr1 = D.get_dataset("imagenet2012", split="train", train=True, seed=0, num_workers=1,
                        prefetch=0, **kw)
    assert batches_equal(tr1.get_batch(0, 0), b)

    ev = D.get_dataset("imagenet2012", split="validation", train=False, batch_size=10,
                       data_dir="/unused", image_size=16, process_index=1, process_count=2)
    batches = list(ev)
    assert (ev.local_batch_size, ev.num_local_examples, ev.steps_per_epoch) == (5, 6, 2)
    assert [b["mask"].sum() for b in batches] == [5, 1]
    assert all(b["image"].shape == (5, 16, 16, 3) for b in batches)
    assert (batches[1]["image"][1:] == 0).all() and (batches[1]["label"][1:] == 0).all()


def test_unprepared_dataset_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared"):
    D.get_dataset("cifar10", split="train", batch_size=8, data_dir=str(tmp_path), train=True,
                  download=False, process_index=0, process_count=1)


def test_bad_arguments():
  with pytest.raises(ValueError, match="divisible"):
    D.get_dataset("cifar10", split="train", batch_size=5, train=True, process_index=0,
                  process_count=2)
  with pytest.raises(ValueError, match="unsupported"):
    D.get_dataset("mnist", split="train", batch_size=4, train=True, process_index=0,
                  process_count=1)


# --------------------------------------------------------------------------- augmentations


def test_random_crop_with_padding_and_flip():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  out = A.random_crop_with_padding(x, np.random.default_rng(1), padding=2)
  assert out.shape == x.shape and out.dtype == np.uint8
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(16):
    assert any(np.array_equal(out[i], padded[i, dy:dy + 8, dx:dx + 8])
               for dy in range(5) for dx in range(5))
  np.testing.assert_array_equal(out, A.random_crop_with_padding(x, np.random.default_rng(1), 2))
  f = A.random_flip(x, np.random.default_rng(2))
  flipped = [np.array_equal(f[i], x[i, :, ::-1]) for i in range(16)]
  assert all(fl or np.array_equal(f[i], x[i]) for i, fl in enumerate(flipped))
  assert 0 < sum(flipped) < 16


def test_random_resized_crop():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = A.random_resized_crop_box(rng, 60, 90)
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90 and h > 0 and w > 0
  # impossible scale -> central fallback crop clamped to the ratio range
  assert A.random_resized_crop_box(rng, 10, 100, scale=(5.0, 6.0)) == (0, 43, 10, 13)
  img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  out = A.random_resized_crop(img, np.random.default_rng(3), 24)
  assert out.shape == (24, 24, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, A.random_resized_crop(img, np.random.default_rng(3), 24))


def test_rand_augment():
  cfg = A.RandAugmentConfig.parse("rand-m9-mstd0.5-inc1")
  assert (cfg.num_ops, cfg.magnitude, cfg.magnitude_std, cfg.increasing, cfg.prob) == (
      2, 9.0, 0.5, True, 0.5)
  assert A.RandAugmentConfig.parse("rand-n3-m7").increasing is False
  with pytest.raises(ValueError):
    A.RandAugmentConfig.parse("rand-x1")
  rng = np.random.default_rng(0)
  for shape in [(32, 32, 3), (28, 28, 1)]:
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    outs = [A.rand_augment(img, np.random.default_rng(s)) for s in range(40)]
    assert all(o.shape == shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, img) for o in outs) > 20
    np.testing.assert_array_equal(outs[5], A.rand_augment(img, np.random.default_rng(5)))
  # every op runs on RGB and greyscale images
  for ops in A._OPS.values():  # pylint: disable=protected-access
    for _, op in ops:
      for mode in ("RGB", "L"):
        im = T.to_pil(rng.integers(0, 256, (8, 8, 3 if mode == "RGB" else 1), np.uint8))
        fill = (1, 2, 3) if mode == "RGB" else 2
        assert op(im, 0.9, rng, fill, T.pil_interpolation("bicubic")).size == (8, 8)


def test_random_erasing_touches_one_rectangle():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((32, 20, 24, 3)).astype(np.float32)
  x_copy = x.copy()
  out = A.random_erasing(x, np.random.default_rng(1), probability=1.0)
  np.testing.assert_array_equal(x, x_copy)  # input untouched
  for i in range(32):
    changed = (out[i] != x[i]).any(-1)
    ys, xs = np.nonzero(changed)
    assert len(ys) > 0
    box = changed[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert box.all() and box.size == changed.sum()  # exactly one filled rectangle
    assert box.size <= 20 * 24 / 3 + 20 + 24
  assert np.array_equal(A.random_erasing(x, rng, probability=0.0), x)
  hits = sum((A.random_erasing(x[:1], np.random.default_rng(s)) != x[:1]).any()
             for s in range(400))
  assert 60 < hits < 140  # p = 0.25


def test_mixup_cutmix_targets():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 16, 16, 3)).astype(np.float32)
  labels = rng.integers(0, 10, 8)
  for seed in range(20):
    out, t, lam = A.mixup_cutmix(x, labels, np.random.default_rng(seed), 10)
    assert out.shape == x.shape and t.shape == (8, 10) and 0.0 <= lam <= 1.0
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-5)
  out, t, lam = A.mixup_cutmix(x, labels, np.random.default_rng(0), 10, mixup_alpha=1.0,
                               cutmix_alpha=0.0, label_smoothing=0.0)
  np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
  expected = lam * np.eye(10)[labels] + (1 - lam) * np.eye(10)[labels[::-1]]
  np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-6)
  out, t, lam = A.mixup_cutmix(x, labels, np.random.default_rng(1), 10, mixup_alpha=0.0,
                               cutmix_alpha=1.0, label_smoothing=0.0)
  from_partner = (out == x[::-1]).all(-1) & (out != x).any(-1)
  kept = (out == x).all(-1).mean(axis=(1, 2))
  assert from_partner.any()
  np.testing.assert_allclose(kept[0], lam, rtol=1e-6)  # lam corrected to the kept area
  _, t, lam = A.mixup_cutmix(x, labels, np.random.default_rng(0), 10, prob=0.0,
                             label_smoothing=0.1)
  assert lam == 1.0
  np.testing.assert_allclose(t, A.smooth_labels(labels, 10, 0.1))


def test_smooth_labels():
  t = A.smooth_labels(np.array([0, 3]), 4, 0.1)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(t[0], [0.925, 0.025, 0.025, 0.025], rtol=1e-6)
  np.testing.assert_array_equal(A.smooth_labels(np.array([2]), 3, 0.0), [[0, 0, 1]])


def test_eval_transforms():
  img = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
  assert T.resize_shorter_side(img, 232).shape == (232, 309, 3)
  assert T.resize_center_crop(img, 224).shape == (224, 224, 3)
  assert T.resize_center_crop(img[:, :100], 224, crop_pct=0.875).shape == (224, 224, 3)
  x = np.full((2, 28, 28, 1), 7, np.uint8)
  p = T.pad_to_size(x, 32)
  assert p.shape == (2, 32, 32, 1) and p[:, 2:30, 2:30].min() == 7 and p.sum() == 7 * 2 * 784
  assert T.to_channels(p, 3).shape == (2, 32, 32, 3)
  n = T.normalize(np.array([[[[0, 255]]]], np.uint8).reshape(1, 1, 1, 2), (0.5, 0.5), (0.5, 0.25))
  np.testing.assert_allclose(n.ravel(), [-1.0, 2.0], rtol=1e-6)


class _PngSource:
  """A tfds-like source of PNG records that counts its reads and names its inputs."""

  def __init__(self, n=6, version="1"):
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, (n, 5, 4, 1), dtype=np.uint8)
    self.version, self.reads = version, 0
    self.metadata, self.location = {}, "<test>"

  def __len__(self):
    return len(self.images)

  def read(self, indices):
    self.reads += 1
    return [{"image": _png(self.images[i]), "label": int(i)} for i in indices]

  def fingerprint(self):
    return {"name": "png_test", "version": self.version}


def _png(image):
  import io
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buf, format="PNG")
  return buf.getvalue()


def test_decoded_arrays_disk_cache(tmp_path, monkeypatch, caplog):
  """A second process reads the decoded arrays from disk, not the records; a corrupt or stale
  file is decoded again (with a warning), never trusted; an empty SPIKEJAX_CACHE_DIR is off."""
  from spikejax.data import sources as S
  monkeypatch.setenv("SPIKEJAX_CACHE_DIR", str(tmp_path))
  src = _PngSource()
  images, labels = S.load_arrays(src, 1)
  np.testing.assert_array_equal(images, src.images)
  np.testing.assert_array_equal(labels, np.arange(6))
  assert src.reads == 1
  (path,) = (tmp_path / "arrays").glob("*.npz")
  again = _PngSource()                            # a new process: no in-memory cache
  np.testing.assert_array_equal(S.load_arrays(again, 1)[0], src.images)
  assert again.reads == 0
  # one flipped byte in the stored images: detected by the digest, decoded again
  with np.load(path) as z:
    items = {k: z[k] for k in z.files}
  items["images"] = items["images"].copy()
  items["images"][0, 0, 0, 0] ^= 1
  np.savez(path, **items)
  caplog.set_level("WARNING")
  third = _PngSource()
  np.testing.assert_array_equal(S.load_arrays(third, 1)[0], src.images)
  assert third.reads == 1 and "stale or corrupt" in caplog.text
  path.write_bytes(b"garbage")                    # truncated or overwritten: unreadable
  fourth = _PngSource()
  np.testing.assert_array_equal(S.load_arrays(fourth, 1)[0], src.images)
  assert fourth.reads == 1 and "unreadable" in caplog.text
  newer = _PngSource(version="2")                 # another version of the data: its own file
  S.load_arrays(newer, 1)
  assert newer.reads == 1 and len(list((tmp_path / "arrays").glob("*.npz"))) == 2
  monkeypatch.setenv("SPIKEJAX_CACHE_DIR", "")
  off = _PngSource()
  S.load_arrays(off, 1)
  S.load_arrays(off, 1)
  assert off.reads == 2
