"""The detection configs end to end in smoke mode: Fashion-MNIST scenes (detections, COCO
metrics, an exact resume, the energy tool on the workdir) and COCO's recipe on the in-memory
mock set."""

import json
import os

import numpy as np
import pytest

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST),
                                  reason="apt-get install -y dataset-fashion-mnist")


def _scenes(**over):
  from configs import det_fashion_mnist_scenes
  c = det_fashion_mnist_scenes.get_config("runlocal")
  c.progress_bar = False
  for k, v in over.items():
    c[k] = v
  return c


@needs_fmnist
def test_scenes_runlocal_resume_and_analysis(tmp_path, capsys):
  from spikejax.analysis import energy
  from spikejax.train import trainer
  full = str(tmp_path / "full")
  s = trainer.train_and_evaluate(_scenes(max_train_steps=4), full)
  assert s["task"] == "detect" and s["step"] == 4 and s["best_metric"] == "bbox_map_50"
  det = json.load(open(os.path.join(full, "detection.json")))
  assert det["examples"] == 32 and det["step"] == 4
  for k in ("bbox_map_50", "bbox_map", "segm_map_50", "segm_map"):
    assert 0 <= det[k] <= 1, (k, det[k])
  assert set(det["bbox_per_class_ap_50"]) == {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                              "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                                              "Ankle boot"} or len(det["bbox_per_class_ap_50"]) == 10
  rows = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
  train = [r for r in rows if "train/loss" in r]
  assert train and all(k in train[-1] for k in ("train/rpn_cls", "train/rcnn_cls", "train/mask"))
  # stopped after 2 steps, then resumed: the same samples (keys from the step), the same result
  part = str(tmp_path / "part")
  trainer.train_and_evaluate(_scenes(max_train_steps=4, stop_after_steps=2), part)
  r = trainer.train_and_evaluate(_scenes(max_train_steps=4), part)
  assert r["step"] == 4
  last = lambda d: [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))
                    if "train/loss" in l][-1]["train/loss"]
  np.testing.assert_allclose(last(part), last(full), rtol=1e-5)
  capsys.readouterr()
  assert energy.main(["--checkpoint", full, "--batches", "1", "--batch-size", "8",
                      "--json"]) == 0
  rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  macs = {r["layer"] for r in rep["layers"] if r["op"] == "MAC"}
  assert {"bbox_roi_align", "mask_roi_align", "bbox_head.fc_cls", "bbox_head.fc_reg"} <= macs
  assert rep["snn_energy_mj"] > 0 and rep["image_shape"] == [1, 96, 96, 1]
  # spike-driven == integer for the detector: tests/test_spike_driven_families.py


def test_coco_runlocal_on_mock_data(tmp_path):
  from configs import coco_maskrcnn
  from spikejax.train import trainer
  c = coco_maskrcnn.get_config("runlocal")
  c.progress_bar = False
  s = trainer.train_and_evaluate(c, str(tmp_path / "coco"))
  assert s["step"] == 1 and s["task"] == "detect"   # one epoch: 8 mock images, batch 8
  det = json.load(open(tmp_path / "coco" / "detection.json"))
  assert det["examples"] == 4          # the mock validation split, padding rows left out


@pytest.mark.parametrize("name,arg", [("det_fashion_mnist_scenes", a) for a in
                                      ("", "v2", "runlocal")] +
                         [("coco_maskrcnn", a) for a in ("l", "m", "v2_15m", "v2_55m",
                                                         "runlocal")])
def test_every_detection_config_builds_its_model(name, arg):
  """Each config argument gives a model the registry builds (shapes only) and passes the
  trainer's checks."""
  import importlib
  from flax import nnx
  from spikejax.data import get_spec
  from spikejax.models import from_config
  from spikejax.train import state
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  n = get_spec(c.dataset).num_classes
  model = nnx.eval_shape(lambda: from_config.create_from_config(c, num_classes=n,
                                                                rngs=nnx.Rngs(0)))
  assert model.config.num_classes == n
  state.validate(c, 1)


def test_bad_detection_settings_are_one_clear_line():
  from configs import det_fashion_mnist_scenes
  from spikejax.models.from_config import ConfigError
  from spikejax.train import state
  c = det_fashion_mnist_scenes.get_config("runlocal")
  c.detection.train.rpn_nums = 3
  with pytest.raises(ConfigError, match=r"config.detection.train: unknown key\(s\) \['rpn_nums'\]"):
    state.validate(c, 1)
  c = det_fashion_mnist_scenes.get_config("runlocal")
  c.detection.test.max_per_img = 0
  with pytest.raises(ConfigError, match="max_per_img must be an integer >= 1"):
    state.validate(c, 1)
  c = det_fashion_mnist_scenes.get_config("runlocal")
  c.dataset = "fashion_mnist_scenes_tiny"          # the segmentation view of the same scenes
  with pytest.raises(ConfigError, match="needs a detection data set"):
    state.validate(c, 1)
