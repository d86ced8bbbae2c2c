"""The segmentation configs end to end in smoke mode: Fashion-MNIST scenes (resume, backbone
from a classification workdir, the analysis tools on the workdir) and ADE20K's recipe on the
in-memory mock set."""

import json
import os

import numpy as np
import pytest

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST),
                                  reason="apt-get install -y dataset-fashion-mnist")


def _scenes(**over):
  from configs import seg_fashion_mnist_scenes
  c = seg_fashion_mnist_scenes.get_config("runlocal")
  c.progress_bar = False
  for k, v in over.items():
    c[k] = v
  return c


@needs_fmnist
def test_scenes_runlocal_resume_and_analysis(tmp_path, capsys):
  from spikejax.analysis import energy, spike_driven
  from spikejax.train import trainer
  full = str(tmp_path / "full")
  s = trainer.train_and_evaluate(_scenes(max_train_steps=4), full)
  assert s["task"] == "segment" and s["step"] == 4 and s["best_metric"] == "miou"
  seg = json.load(open(os.path.join(full, "segmentation.json")))
  assert len(seg["per_class_iou"]) == 11 and np.asarray(seg["confusion"]).shape == (11, 11)
  assert np.asarray(seg["confusion"]).sum() == 32 * 96 * 96     # labels at the stored 96 px
  assert 0 <= seg["miou"] <= 1 and seg["examples"] == 32
  # stopped after 2 steps, then resumed: the same final weights and metrics
  part = str(tmp_path / "part")
  trainer.train_and_evaluate(_scenes(max_train_steps=4, stop_after_steps=2), part)
  r = trainer.train_and_evaluate(_scenes(max_train_steps=4), part)
  assert r["step"] == 4
  np.testing.assert_allclose(r["best"]["loss"], s["best"]["loss"], rtol=1e-5)
  capsys.readouterr()
  assert energy.main(["--checkpoint", full, "--batches", "1", "--batch-size", "8",
                      "--json"]) == 0
  rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rep["snn_energy_mj"] > 0 and rep["image_shape"] == [1, 64, 64, 1]
  assert rep["firing"]["accuracy"] is None and rep["firing"]["images"] == 8
  assert energy.main(["--checkpoint", full, "--batches", "1", "--batch-size", "8",
                      "--resolution", "512", "--json"]) == 0
  big = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert big["image_shape"] == [1, 512, 512, 1] and big["sops"] > 30 * rep["sops"]
  assert spike_driven.main(["--checkpoint", full, "--batches", "1", "--batch-size", "4",
                            "--rounding", "half_up", "--float64", "--json"]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res["mismatched_activations"] == 0 and res["max_abs_logit_diff"] <= 1e-9


@needs_fmnist
def test_scenes_backbone_from_a_classification_workdir(tmp_path, caplog):
  """``init_from`` a classification run of the same backbone: the backbone loads by name."""
  from configs import common
  from spikejax.train import trainer
  cls = common.trainer_defaults(dataset="fashion_mnist", channels=1)
  common.apply_runlocal(cls, image_size=32)
  cls.model_name = "espikeformer_m"
  cls.model.embed_dims = (8, 16, 16, 16)
  cls.model.block_depths = (1, 1)
  cls.model.layer_scale = None
  cls_dir = str(tmp_path / "cls")
  trainer.train_and_evaluate(cls, cls_dir)
  caplog.set_level("INFO", logger="spikejax")
  trainer.train_and_evaluate(_scenes(init_from=cls_dir), str(tmp_path / "seg"))
  line = [r.getMessage() for r in caplog.records if "initialised from" in r.getMessage()][0]
  dropped = line.split("dropped ")[1].split(";")[0]
  assert set(dropped.split(", ")) == {"backbone/head/bias", "backbone/head/kernel"}, line
  assert "neck/" in line or "decode_head/" in line


def test_ade20k_runlocal_on_mock_data(tmp_path):
  from configs import ade20k_semfpn
  from spikejax.train import trainer
  c = ade20k_semfpn.get_config("runlocal")
  c.progress_bar = False
  s = trainer.train_and_evaluate(c, str(tmp_path / "ade"))
  assert s["step"] == 2
  seg = json.load(open(tmp_path / "ade" / "segmentation.json"))
  conf = np.asarray(seg["confusion"])
  assert conf.shape == (150, 150)
  # the 4 validation images of the mock set (one batch of 8, 4 padding rows) on the 128 x 128
  # canvas: the labelled pixels only
  assert 0 < conf.sum() < 4 * 128 * 128
  assert seg["examples"] == 4


@pytest.mark.parametrize("name,arg", [("seg_fashion_mnist_scenes", a) for a in
                                      ("", "v2", "layer_scale", "runlocal", "v2,runlocal")] +
                         [("ade20k_semfpn", a) for a in ("m", "l", "v2", "runlocal")])
def test_every_segmentation_config_builds_its_model(name, arg):
  """Each config argument gives a model the registry builds (shapes only)."""
  import importlib
  from flax import nnx
  from spikejax.data import get_spec
  from spikejax.models import from_config
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  n = get_spec(c.dataset).num_classes
  model = nnx.eval_shape(lambda: from_config.create_from_config(c, num_classes=n,
                                                                rngs=nnx.Rngs(0)))
  assert model.config.num_classes == n
  assert (model.backbone.config.embed_dims == tuple(c.model.embed_dims)
          if "embed_dims" in c.model else True)
