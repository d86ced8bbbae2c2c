"""configs/: the shared parser and defaults (configs/common.py) and every experiment file."""

import importlib
import itertools

import pytest

from configs import common

# Every config file with the arguments it accepts: groups of mutually exclusive bare words
# (at most one word of a group), and the accepted combinations are their product.
FILES = {
    "event_fashion_mnist": [("independent", "if_soft", "if_hard", "lif_soft", "lif_hard"),
                            ("vanilla",), ("runlocal",)],
    "fashion_mnist": [("base",), ("vanilla",), ("long",), ("t1", "t4"), ("runlocal",)],
    "har_dvs": [("independent", "if_soft", "if_hard", "lif_soft", "lif_hard"), ("runlocal",)],
    "imagenet_espikeformer": [("t", "s", "m", "l"), ("d8",), ("runlocal",)],
    "imagenet_large": [("finetune", "distill"), ("runlocal",)],
    "imagenet_metaspikformer": [("stage1", "stage2", "sfa"), ("15m", "31m", "55m"),
                                ("runlocal",)],
    "imagenet_mim": [("512", "768"), ("official_order",), ("runlocal",)],
    "mim_fashion_mnist": [("pretrain", "finetune", "scratch"), ("binary",), ("runlocal",)],
    "table5_fashion_mnist": [("e_sfa", "v2_t1", "v2_t4", "v2_sfa"), ("runlocal",)],
    "seg_fashion_mnist_scenes": [("v2",), ("layer_scale",), ("runlocal",)],
    "ade20k_semfpn": [("m", "l", "v2"), ("runlocal",)],
    "det_fashion_mnist_scenes": [("v2",), ("runlocal",)],
    "coco_maskrcnn": [("l", "m", "v2_15m", "v2_55m"), ("runlocal",)],
}

# Values of each file's default config (``get_config()``) as they were before configs/common.py.
PINNED = {
    "event_fashion_mnist": {
        "dataset": "event_fashion_mnist", "model_name": "espikeformer_t", "channels": 2,
        "image_size": None, "batch_size": 64, "eval_batch_size": 500, "optimizer.lr": 3e-3,
        "optimizer.eps": 1e-8, "min_lr": 1e-5, "warmup_epochs": 0.1, "num_epochs": 1.0,
        "checkpoint_every_steps": 500, "seed": 0, "dtype": "float32", "spike.norm": 1.0,
        "spike.temporal": "independent", "spike.time_steps": 4, "frames.time_steps": 4,
        "firing_stats": True, "time_limit_minutes": None, "model.embed_dims": (24, 48, 96, 128)},
    "fashion_mnist": {
        "dataset": "fashion_mnist", "model_name": "spikformer12_512", "image_size": 32,
        "channels": 1, "augment": "flip", "eval_flip": True, "batch_size": 64,
        "eval_batch_size": 500,
        "optimizer.name": "adamw", "optimizer.lr": 3e-3, "optimizer.b2": 0.999,
        "optimizer.weight_decay": 0.05, "min_lr": 1e-5, "warmup_epochs": 0.5,
        "num_epochs": 12.5, "time_limit_minutes": None, "time_budget_minutes": 29.0,
        "spike.rounding": "half_up",
        "spike.window": "open", "spike.time_steps": 1, "spike.spike_max": 4, "mode": "sfa",
        "model.depth": 4, "model.drop_path_rate": 0.1, "firing_stats": True,
        "log_every_steps": 50, "keep_checkpoints": 3, "max_train_steps": None},
    "har_dvs": {
        "dataset": "har_dvs", "model_name": "espikeformer_dvs", "seed": 42, "image_size": 224,
        "batch_size": 72, "eval_batch_size": 72, "optimizer.lr": 4e-5 * 72 / 256,
        "optimizer.weight_decay": 1e-2, "warmup_epochs": 10.0, "min_lr": 1e-6,
        "num_epochs": 100.0, "ema_decay": 0.999, "dtype": "bfloat16", "spike.time_steps": 8,
        "augment.label_smoothing": 0.1, "augment.flip": False, "firing_stats": False,
        "checkpoint_every_steps": 2000},
    "imagenet_espikeformer": {
        "dataset": "imagenet2012", "eval_split": "validation", "model_name": "espikeformer_s",
        "channels": None, "batch_size": 2048, "eval_batch_size": 1000, "optimizer.name": "lamb",
        "optimizer.lr": 6e-4 * 2048 / 256, "optimizer.eps": 1e-6, "warmup_epochs": 5.0,
        "min_lr": 1e-6, "num_epochs": 200.0, "dtype": "bfloat16", "log_every_steps": 100,
        "checkpoint_every_steps": 2000, "augment.randaugment": "rand-m9-mstd0.5-inc1",
        "augment.reprob": 0.25, "spike.rounding": "half_even", "model.strides": (2, 2, 2, 2, 1)},
    "imagenet_large": {
        "task": "classify", "model_name": "spikformer12_768", "batch_size": 1024,
        "optimizer.lr": 6e-4 * 1024 / 256, "optimizer.layer_decay": 0.75,
        "warmup_epochs": 10.0, "num_epochs": 150.0, "ema_decay": 0.99996, "mesh.fsdp": 4,
        "augment.mixup": 0.8, "augment.cutmix": 1.0, "model.embed_dims": (192, 384, 768),
        "model.kd": False, "distill.alpha": 0.5, "distill.teacher": None, "init_from": None},
    "imagenet_metaspikformer": {   # addendum A.6, stage 1
        "dataset": "imagenet2012", "model_name": "metaspikformer_55m", "mode": "vanilla",
        "batch_size": 1024, "optimizer.name": "lamb", "optimizer.lr": 6e-4 * 1024 / 256,
        "optimizer.layer_decay": 1.0, "warmup_epochs": 10.0, "min_lr": 1e-6,
        "num_epochs": 200.0, "spike.time_steps": 1, "model.kd": False, "crop_pct": 224 / 256,
        "augment.randaugment": "rand-m9-mstd0.5-inc1", "augment.reprob": 0.25,
        "augment.label_smoothing": 0.1, "augment.mixup": 0.0, "optimizer.weight_decay": 0.05},
    "imagenet_mim": {
        "task": "mim", "model_name": "spikmae_12_512", "batch_size": 2048,
        "eval_batch_size": 1024, "optimizer.lr": 1.5e-4 * 2048 / 256, "optimizer.b2": 0.95,
        "optimizer.eps": 1e-4, "optimizer.decay_all": True, "optimizer.grad_clip_norm": 0.0,
        "warmup_epochs": 20.0, "min_lr": 5e-6, "eval_every_epochs": 10, "mesh.fsdp": 4,
        "model.token_order": "spatial", "augment.scale": (0.2, 1.0), "spike.window": "open"},
    "mim_fashion_mnist": {
        "task": "mim", "model_name": "spikmae_12_512", "optimizer.lr": 2e-3,
        "optimizer.b2": 0.95, "optimizer.decay_all": True, "optimizer.layer_decay": 1.0,
        "num_epochs": 3.0, "keep_checkpoints": 2, "eval_every_steps": None,
        "firing_stats": False, "model.decoder_dim": 64, "model.rep_conv2": True,
        "spike.rounding": "half_up"},
    "table5_fashion_mnist": {      # the E-SpikeFormer + SFA row; the widths every row shares
        "dataset": "fashion_mnist", "model_name": "espikeformer_t", "mode": "sfa",
        "image_size": 32, "channels": 1, "batch_size": 64, "seed": 0, "num_epochs": 1.0,
        "spike.time_steps": 1, "spike.spike_max": 4, "spike.rounding": "half_even",
        "model.embed_dims": (24, 48, 96, 128), "model.block_depths": (2, 1),
        "model.strides": (2, 2, 2, 1, 1), "eval_every_steps": 235, "firing_stats": True},
    "seg_fashion_mnist_scenes": {
        "task": "segment", "dataset": "fashion_mnist_scenes", "model_name":
        "semfpn_espikeformer_m", "image_size": 64, "channels": 1, "batch_size": 16,
        "optimizer.lr": 2e-3, "optimizer.weight_decay": 0.005, "optimizer.decay_all": True,
        "optimizer.schedule": "warmup_poly", "optimizer.lr_mult.decode_head": 2.0,
        "min_lr": 0.0, "time_budget_minutes": 29.0, "model.embed_dims": (32, 64, 128, 192),
        "model.block_depths": (2, 1), "model.neck_channels": 32, "model.layer_scale": None,
        "spike.spike_max": 4, "spike.rounding": "half_even", "augment.flip": True,
        "firing_stats": False},
    "ade20k_semfpn": {   # addendum B.3
        "task": "segment", "dataset": "scene_parse150", "eval_split": "validation",
        "model_name": "semfpn_espikeformer_m", "image_size": 512, "batch_size": 16,
        "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.005, "optimizer.decay_all": True,
        "optimizer.b2": 0.999, "optimizer.schedule": "warmup_poly",
        "optimizer.poly_power": 1.0, "optimizer.lr_mult.decode_head": 2.0, "min_lr": 0.0,
        "num_epochs": 160_000 / 1263, "warmup_epochs": 1_500 / 1263,
        "eval_every_steps": 2_500, "augment.reduce_zero_label": True,
        "augment.train_scale": (2048, 512), "augment.ratio_range": (0.5, 2.0),
        "augment.crop_size": 512, "augment.cat_max_ratio": 0.75, "augment.photometric": True,
        "augment.eval_scale": (2048, 512), "spike.rounding": "half_even"},
    "det_fashion_mnist_scenes": {
        "task": "detect", "dataset": "fashion_mnist_scenes_det", "model_name":
        "maskrcnn_espikeformer_m", "image_size": 96, "channels": 1, "batch_size": 16,
        "optimizer.lr": 1e-3, "optimizer.weight_decay": 0.05, "optimizer.decay_all": True,
        "optimizer.schedule": "warmup_multistep", "time_budget_minutes": 44.0,
        "model.embed_dims": (32, 64, 128, 192), "model.block_depths": (2, 1),
        "model.fpn_channels": 32, "model.fc_channels": 256, "model.mask_convs": 2,
        "detection.train.rcnn_num": 64, "detection.test.max_per_img": 20,
        "spike.rounding": "half_even", "augment.flip": True, "eval_every_steps": None},
    "coco_maskrcnn": {   # addendum B.2, traps 4-5
        "task": "detect", "dataset": "coco", "eval_split": "validation",
        "model_name": "maskrcnn_espikeformer_l", "batch_size": 8, "optimizer.name": "adamw",
        "optimizer.lr": 2e-4, "optimizer.weight_decay": 0.05, "optimizer.decay_all": True,
        "optimizer.b1": 0.9, "optimizer.b2": 0.999, "optimizer.eps": 1e-8,
        "optimizer.schedule": "warmup_multistep", "optimizer.milestones": (8 / 12, 11 / 12),
        "optimizer.gamma": 0.1, "optimizer.warmup_start_factor": 1e-3, "num_epochs": 12.0,
        "warmup_epochs": 1_000 / 14_785, "eval_every_epochs": 1, "spike.rounding": "half_even",
        "dtype": "float32"},
}


def module(name):
  return importlib.import_module(f"configs.{name}")


def flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, prefix + k + "."))
    else:
      out[prefix + k] = v
  return out


def accepted(name):
  """Every accepted combination of bare words of ``name`` (no word of a group, or one)."""
  groups = [(None,) + g for g in FILES[name]]
  return [",".join(w for w in combo if w) for combo in itertools.product(*groups)]


@pytest.mark.parametrize("name", sorted(FILES))
def test_default_arg_keeps_the_pinned_values(name):
  d = flat(module(name).get_config().to_dict())
  assert {k: d[k] for k in PINNED[name]} == PINNED[name]
  assert flat(module(name).get_config("").to_dict()) == d   # "" is the default too
  assert module(name).get_config().get("evals") is None


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_accepted_arg_builds_a_valid_config(name):
  from spikejax.train import trainer
  keys = set(flat(common.trainer_defaults().to_dict()))
  for arg in accepted(name):
    c = module(name).get_config(arg)
    have = flat(c.to_dict())
    missing = [k for k in keys if k not in have and not any(h.startswith(k + ".") for h in have)]
    assert not missing, (arg, missing)                       # every trainer key is there
    assert c.dataset and c.model_name, arg
    trainer.validate(c, 4)
    if "runlocal" in arg.split(","):
      assert c.max_train_steps <= 3 and c.dtype == "float32" and c.num_epochs == 1.0, arg


@pytest.mark.parametrize("name", sorted(FILES))
def test_unknown_and_conflicting_args_are_errors(name):
  mod = module(name)
  with pytest.raises(ValueError, match=r"unknown config argument 'runlocl' \(did you mean "
                                       r"'runlocal'\?\); accepted: .*runlocal"):
    mod.get_config("runlocl")
  with pytest.raises(ValueError, match="unknown config argument 'nope'"):
    mod.get_config("runlocal,nope")
  with pytest.raises(ValueError, match="unknown config argument 'nope'"):
    mod.get_config("nope=1")
  exclusive = [g for g in FILES[name] if len(g) > 1]
  if exclusive:
    with pytest.raises(ValueError, match="given twice"):
      mod.get_config(",".join(exclusive[0][:2]))


@pytest.mark.parametrize("name", [n for n in sorted(FILES) if hasattr(module(n), "sweep")])
def test_sweep_overrides_are_fields_of_the_config(name):
  from launch import sweep
  mod = module(name)
  for over in sweep.collect(mod):
    c = sweep.build_config(mod, None, {}, over)
    assert all(flat(c.to_dict())[k] == v for k, v in over.items())


def test_the_frames_drive_the_model_time_steps():
  for name, arg, t in (("event_fashion_mnist", "runlocal", 4), ("har_dvs", "runlocal", 2)):
    c = module(name).get_config(arg)
    assert c.spike.time_steps == c.frames.time_steps == t
    c.frames.time_steps = 6
    assert c.spike.time_steps == 6


def test_arg_words_select_what_they_name():
  assert module("imagenet_espikeformer").get_config("m,d8").model_name == "espikeformer_m"
  assert module("imagenet_espikeformer").get_config("size=l").model_name == "espikeformer_l"
  assert module("imagenet_espikeformer").get_config("d8").spike.spike_max == 8
  assert module("imagenet_large").get_config("runlocal").model_name == "spikformer12_768"
  assert module("imagenet_large").get_config("distill").model.kd is True
  assert module("imagenet_mim").get_config("768,official_order").model.token_order == "official"
  v = module("event_fashion_mnist").get_config("if_soft,vanilla")
  assert (v.mode, v.spike.temporal) == ("vanilla", "lif_hard")
  assert module("fashion_mnist").get_config("t4").spike.time_steps == 4
  # the mirror (training and test-time) is the default's; the measured variants keep theirs
  fm = {a: module("fashion_mnist").get_config(a) for a in ("long", "base", "vanilla")}
  assert {a: (c.augment, c.eval_flip) for a, c in fm.items()} == {
      "long": ("default", False), "base": ("none", False), "vanilla": ("none", False)}
  assert module("fashion_mnist").get_config("base,runlocal=false").max_train_steps is None
  rows = {r: module("table5_fashion_mnist").get_config(r) for r in ("v2_t1", "v2_t4", "v2_sfa")}
  assert {r: (c.model_name, c.mode, c.spike.time_steps) for r, c in rows.items()} == {
      "v2_t1": ("metaspikformer_15m", "vanilla", 1), "v2_t4": ("metaspikformer_15m", "vanilla", 4),
      "v2_sfa": ("metaspikformer_15m", "sfa", 1)}
  assert all(c.model.embed_dims == (24, 48, 96, 128) for c in rows.values())
  ft = module("mim_fashion_mnist").get_config("finetune,binary")
  assert (ft.task, ft.mode, ft.optimizer.layer_decay) == ("classify", "vanilla", 0.75)


def test_parse_arg():
  spec = dict(size=common.one_of("s", "m", default="m"), runlocal=False, res=224, lr=0.1,
              name="x")
  a = common.parse_arg(None, **spec)
  assert a.to_dict() == {"size": "m", "runlocal": False, "res": 224, "lr": 0.1, "name": "x"}
  a = common.parse_arg(" s, runlocal,,res=64,lr=1e-3,name=y ", **spec)
  assert a.to_dict() == {"size": "s", "runlocal": True, "res": 64, "lr": 1e-3, "name": "y"}
  assert common.parse_arg("size=s,s,runlocal,runlocal=yes", **spec).size == "s"  # repeats agree
  assert common.parse_arg("runlocal=0", **spec).runlocal is False
  with pytest.raises(ValueError, match=r"'runlocl' \(did you mean 'runlocal'\?\); accepted: "
                                       r"s\|m \(or size=\.\.\.; default m\); runlocal; "
                                       r"res=<int> \(default 224\)"):
    common.parse_arg("runlocl", **spec)
  with pytest.raises(ValueError, match=r"'rez' in 'rez=3' \(did you mean 'res'\?\)"):
    common.parse_arg("rez=3", **spec)
  with pytest.raises(ValueError, match=r"size='l' is not one of \['s', 'm'\]"):
    common.parse_arg("size=l", **spec)
  with pytest.raises(ValueError, match="res='big': expected int"):
    common.parse_arg("res=big", **spec)
  with pytest.raises(ValueError, match="runlocal='maybe': expected true or false"):
    common.parse_arg("runlocal=maybe", **spec)
  with pytest.raises(ValueError, match=r"'size' given twice \('s' and 'm'\)"):
    common.parse_arg("s,m", **spec)
  with pytest.raises(ValueError, match="unknown config argument 'x'; accepted: none"):
    common.parse_arg("x")
  with pytest.raises(ValueError, match="names two config arguments"):
    common.parse_arg("", a=common.one_of("x", "y"), b=common.one_of("y", "z"))
  with pytest.raises(ValueError, match="names two config arguments"):
    common.parse_arg("", a=common.one_of("x", "b"), b=False)
  with pytest.raises(TypeError):
    common.parse_arg("", a=None)
  with pytest.raises(ValueError, match="not one of"):
    common.one_of("a", "b", default="c")


def test_trainer_defaults_and_runlocal():
  c = common.trainer_defaults(dataset="d", batch_size=8)
  assert (c.dataset, c.batch_size, c.task, c.mode, c.spike.time_steps) == ("d", 8, "classify",
                                                                           "sfa", 1)
  assert c.model.to_dict() == {} and c.max_train_steps is None and c.get("evals") is None
  c.max_train_steps = 5      # typed placeholders take values (and --config.KEY=...)
  with pytest.raises(TypeError):
    c.max_train_steps = "five"
  assert common.trainer_defaults().batch_size == 64    # a fresh config each call
  with pytest.raises(ValueError, match=r"'batchsize' is not a default key \(did you mean "
                                       r"'batch_size'\?\)"):
    common.trainer_defaults(batchsize=8)
  r = common.apply_runlocal(common.trainer_defaults(dtype="bfloat16"), image_size=16)
  assert (r.batch_size, r.max_train_steps, r.dtype, r.image_size, r.progress_bar) == \
      (16, 2, "float32", 16, False)
  with pytest.raises(ValueError, match="'imagesize' is not a key"):
    common.apply_runlocal(r, imagesize=16)


def test_launchers_reject_a_misspelt_config_arg(capsys):
  from launch import sweep, tpu_pod
  with pytest.raises(SystemExit, match="runlocl"):
    sweep.main(["--config=configs/fashion_mnist.py:runlocl", "--workdir=/tmp/x", "--dry_run"])
  with pytest.raises(SystemExit, match="not a field"):
    sweep.main(["--config=configs/fashion_mnist.py", "--workdir=/tmp/x", "--dry_run",
                "--set", "optimizer.lrr=0.1"])
  with pytest.raises(SystemExit, match="batch_size='many'"):
    sweep.main(["--config=configs/fashion_mnist.py", "--workdir=/tmp/x", "--dry_run",
                "--set", "batch_size=many"])
  with pytest.raises(SystemExit, match=r"--config=configs/imagenet_mim.py:769: unknown config "
                                       r"argument '769'"):
    tpu_pod.main(["--tpu=t", "--zone=z", "--dry_run", "--", "python", "-m", "spikejax.main",
                  "--config=configs/imagenet_mim.py:769", "--workdir=gs://b/r"])
  assert tpu_pod.main(["--tpu=t", "--zone=z", "--dry_run", "--", "python", "-m",
                       "spikejax.main", "--config", "configs/imagenet_mim.py:768",
                       "--workdir=gs://b/r"]) == 0
  assert "imagenet_mim.py:768" in capsys.readouterr().out


def test_metaspikformer_recipe_stages():
  mod = module("imagenet_metaspikformer")
  s2 = mod.get_config("stage2,31m")
  assert s2.model_name == "metaspikformer_31m" and s2.model.kd and s2.spike.time_steps == 4
  assert s2.batch_size == 192 and abs(s2.optimizer.lr - 1.5e-5) < 1e-15
  assert s2.num_epochs == 50.0 and s2.warmup_epochs == 5.0 and s2.distill.alpha == 0.5
  sfa = mod.get_config("sfa")
  assert sfa.mode == "sfa" and sfa.spike.time_steps == 1 and sfa.spike.spike_max == 4
  from spikejax.models import from_config
  assert from_config.model_kwargs(sfa)["firing"] == "sfa"
  assert from_config.model_kwargs(mod.get_config())["temporal"] == "lif_hard"
