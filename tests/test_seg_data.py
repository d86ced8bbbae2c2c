"""Segmentation data: the tfds Fashion-MNIST scenes set, the pipeline, mmseg's ADE20K transforms
(addendum B.3) on the in-memory ``scene_parse150_mock`` set."""

import os

import numpy as np
import pytest

import spikejax.data as data
from spikejax.data import scenes
from spikejax.data import seg_augment as SA

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST),
                                  reason="apt-get install -y dataset-fashion-mnist")


@pytest.fixture(scope="module")
def tiny_dir():
  """The ``tiny`` scenes set in the default tfds dir (built once, under a lock)."""
  from spikejax.data.seg_datasets import prepare_fashion_mnist_scenes
  import tensorflow_datasets as tfds
  if not tfds.builder("fashion_mnist_scenes/tiny").is_prepared():
    prepare_fashion_mnist_scenes(None, config="tiny")
  return None


@needs_fmnist
def test_scenes_set_is_make_scene_per_index(tiny_dir):
  """Every stored scene is make_scene(seed=split seed, index=key) on that split's garments
  (tfds orders the records by its fixed shuffle of the keys): all 64 test scenes of the tiny
  set are found, and their class maps, instances and boxes agree with the generator's."""
  import hashlib
  from spikejax.data.event_datasets import fashion_mnist_arrays
  from spikejax.data.seg_datasets import SPLIT_SEED
  from spikejax.data.seg_pipeline import decode_label
  spec = data.get_spec("fashion_mnist_scenes_tiny")
  src = spec.builder(spec, "test", data_dir=tiny_dir, download=True)
  assert len(src) == 64
  garments, labels = fashion_mnist_arrays("test", None)
  want = {}
  for i in range(64):
    sc = scenes.make_scene(garments[..., 0], labels, seed=SPLIT_SEED["test"], index=i)
    want[hashlib.sha1(sc.image.tobytes() + sc.semantic.tobytes()).hexdigest()] = sc
  found = set()
  for rec in src.read(range(64)):
    image = data.sources.decode_image(rec["image"], 1)
    semantic = decode_label(rec["segmentation"])
    key = hashlib.sha1(image.tobytes() + semantic.tobytes()).hexdigest()
    assert key in want, "a stored scene that make_scene does not give"
    found.add(key)
    sc = want[key]
    inst = decode_label(rec["instances"])
    for k in range(4):
      np.testing.assert_array_equal(inst == k + 1, sc.masks[k])
    np.testing.assert_array_equal(np.asarray(rec["boxes"]), sc.boxes)
    np.testing.assert_array_equal(np.asarray(rec["classes"]), sc.classes)
  assert len(found) == 64


@needs_fmnist
def test_scenes_batches_train_and_eval(tiny_dir):
  train = data.get_dataset("fashion_mnist_scenes_tiny", split="train", batch_size=8, train=True,
                           image_size=64, augment={"flip": True}, seed=3)
  b = train.get_batch(0, 1)
  assert b["image"].shape == (8, 64, 64, 1) and b["label"].shape == (8, 64, 64)
  assert b["label"].dtype == np.int32 and set(np.unique(b["label"])) <= set(range(11))
  again = data.get_dataset("fashion_mnist_scenes_tiny", split="train", batch_size=8,
                           train=True, image_size=64, augment={"flip": True}, seed=3)
  for k in b:
    np.testing.assert_array_equal(b[k], again.get_batch(0, 1)[k])   # deterministic
  ev = data.get_dataset("fashion_mnist_scenes_tiny", split="test", batch_size=48, train=False,
                        image_size=64)
  assert len(ev) == 2
  last = ev.get_batch(0, 1)
  # eval: images at 64 px, labels at the stored 96 px (the logits are resized to them)
  assert last["image"].shape == (48, 64, 64, 1) and last["label"].shape == (48, 96, 96)
  assert last["mask"].sum() == 16 and np.all(last["label"][16:] == 255)
  with pytest.raises(ValueError, match="unknown segmentation augment option"):
    data.get_dataset("fashion_mnist_scenes_tiny", split="train", batch_size=8, train=True,
                     augment={"flipp": True})


def test_reduce_zero_label_and_keep_ratio():
  lab = np.array([[0, 1, 150, 255]], np.uint8)
  np.testing.assert_array_equal(SA.reduce_zero_label(lab), [[255, 0, 149, 255]])
  # mmcv rescale_size(keep_ratio): long side <= 2048, short side <= 512
  assert SA.keep_ratio_size(512, 683, (2048, 512)) == (512, 683)
  assert SA.keep_ratio_size(375, 500, (2048, 512)) == (512, 683)
  assert SA.keep_ratio_size(300, 1800, (2048, 512)) == (341, 2048)


def test_random_crop_avoids_one_class_crops():
  rng = np.random.default_rng(0)
  label = np.zeros((64, 64), np.uint8)
  label[:, 56:] = 1                      # 1/8 of the map is class 1
  image = np.zeros((64, 64, 3), np.uint8)
  ratios = []
  for _ in range(50):
    _, crop = SA.random_crop(image, label, rng, 16, cat_max_ratio=0.75)
    _, counts = np.unique(crop, return_counts=True)
    ratios.append(counts.max() / counts.sum())
  loose = []
  for _ in range(50):
    _, crop = SA.random_crop(image, label, rng, 16, cat_max_ratio=1.0)
    _, counts = np.unique(crop, return_counts=True)
    loose.append(counts.max() / counts.sum())
  assert np.mean(np.array(ratios) < 0.75) > np.mean(np.array(loose) < 0.75)


def test_photometric_distortion_is_seeded_and_bounded():
  img = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
  a = SA.photometric_distortion(img, np.random.default_rng(5))
  b = SA.photometric_distortion(img, np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.uint8 and a.shape == img.shape
  outs = {SA.photometric_distortion(img, np.random.default_rng(s)).tobytes() for s in range(8)}
  assert len(outs) > 4
  hsv = SA._rgb_to_hsv(img.astype(np.float32))
  np.testing.assert_allclose(SA._hsv_to_rgb(hsv), img, atol=1e-3)


def test_ade20k_pipeline_on_mock_data():
  """The official train pipeline (random resize, crop 64 with cat_max_ratio, flip,
  photometric, pad 255) and the eval one (keep-ratio resize, 128 x 128 canvas, label 0
  ignored) on images of four sizes, portrait and landscape."""
  train = data.get_dataset("scene_parse150_mock", split="train", batch_size=4, train=True,
                           seed=1)
  b = train.get_batch(0, 0)
  assert b["image"].shape == (4, 64, 64, 3) and b["label"].shape == (4, 64, 64)
  labs = np.unique(b["label"])
  assert labs.max() == 255 and labs.min() >= 0 and np.all((labs < 150) | (labs == 255))
  ev = data.get_dataset("scene_parse150_mock", split="validation", batch_size=4, train=False)
  e = ev.get_batch(0, 0)
  assert e["image"].shape == (4, 128, 128, 3) and e["label"].shape == (4, 128, 128)
  # the 96 x 128 image (keep ratio to (128, 64)) -> 64 x 85; the rest of the canvas ignored
  assert np.all(e["label"][0, 64:] == 255) and np.all(e["label"][0, :, 85:] == 255)
  assert np.any(e["label"][0, :64, :85] != 255)
  src = data.get_spec("scene_parse150_mock").builder(data.get_spec("scene_parse150_mock"),
                                                     "validation")
  raw = src.read([0])[0]["annotation"]
  resized = SA.resize_pair(np.zeros(raw.shape + (3,), np.uint8), raw, (64, 85))[1]
  np.testing.assert_array_equal(e["label"][0, :64, :85], SA.reduce_zero_label(resized))


def test_padding_is_ignored_and_zero():
  """An image smaller than the crop is padded: label 255 and image 0 (after normalisation)."""
  from spikejax.data.registry import DatasetSpec
  from spikejax.data.sources import RecordSource
  rec = {"image": np.full((40, 50, 3), 200, np.uint8), "annotation": np.full((40, 50), 3, np.uint8)}
  spec = DatasetSpec(name="tiny_pad", kind="segmentation", num_classes=5, input_shape=(64, 64, 3),
                     builder=lambda spec, split, **kw: RecordSource([rec] * 4),
                     mean=(0.5,), std=(0.25,), label_feature="annotation",
                     seg=SA.SegPipelineConfig(crop_size=64, flip=False))
  b = data.get_dataset(spec, split="train", batch_size=2, train=True).get_batch(0, 0)
  assert b["image"].shape == (2, 64, 64, 3)
  np.testing.assert_array_equal(b["label"][:, :40, :50], 3)
  assert np.all(b["label"][:, 40:] == 255) and np.all(b["label"][:, :, 50:] == 255)
  assert np.all(b["image"][:, 40:] == 0.0) and np.all(b["image"][:, :, 50:] == 0.0)
  np.testing.assert_allclose(b["image"][:, :40, :50], (200 / 255 - 0.5) / 0.25, rtol=1e-6)
