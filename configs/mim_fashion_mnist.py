"""MIM pretraining (spec §4.2) of a scaled-down LARGE model on Fashion-MNIST, then finetuning.

    python -m spikejax.main --config=configs/mim_fashion_mnist.py:pretrain --workdir=/tmp/mim
    python -m spikejax.main --config=configs/mim_fashion_mnist.py:finetune \
        --config.init_from=/tmp/mim --workdir=/tmp/mim_ft
    python -m spikejax.main --config=configs/mim_fashion_mnist.py:scratch --workdir=/tmp/scratch

Arguments (``:a,b``): ``pretrain`` (``spikmae_12_512`` scaled down: SparK masking of a 4 x 4
grid of 8-pixel patches, ratio 0.5, sparse conv pyramid, ViT decoder, normalised-pixel loss),
``finetune`` (``spikformer12_512`` of the same size, initialised from ``init_from``: encoder
weights and BN statistics; layer decay 0.75 as spec §4.3), ``scratch`` (the same finetuning
model from random init), ``binary`` (vanilla binary spikes instead of SFA integers, for the
effective-rank comparison of paper Fig. 10b), ``runlocal`` (tiny, a few steps).
The encoder is the same in every mode: embed dims (32, 64, 128), 4 blocks, strides (2, 2, 2, 1)
(32 px -> 16, 8, 4, 4: 16 tokens).
"""

import ml_collections
from ml_collections.config_dict import placeholder

ENCODER = dict(embed_dims=(32, 64, 128), depth=4, strides=(2, 2, 2, 1), rep_conv2=True)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = set(filter(None, (arg or "pretrain").split(",")))
  modes = args & {"pretrain", "finetune", "scratch"}
  if len(modes) != 1:
    raise ValueError(f"choose one of pretrain, finetune, scratch; got {sorted(args)}")
  mode = modes.pop()
  pretrain = mode == "pretrain"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "fashion_mnist"
  c.data_dir = placeholder(str)
  c.train_split = "train"
  c.eval_split = "test"
  c.image_size = 32
  c.channels = 1
  c.augment = "none"
  c.batch_size = 64
  c.eval_batch_size = 500

  c.task = "mim" if pretrain else "classify"
  c.model_name = "spikmae_12_512" if pretrain else "spikformer12_512"
  c.model = ml_collections.ConfigDict(dict(ENCODER))
  if pretrain:
    c.model.mask_ratio = 0.5
    c.model.decoder_dim = 64
    c.model.decoder_depth = 2
    c.model.decoder_heads = 4
    c.model.token_order = "spatial"
  else:
    c.model.kd = False
    c.model.drop_path_rate = 0.1
  c.init_from = placeholder(str)        # finetune: the pretraining workdir

  c.mode = "vanilla" if "binary" in args else "sfa"
  c.spike = ml_collections.ConfigDict()
  c.spike.spike_max = 4
  c.spike.time_steps = 1
  c.spike.rounding = "half_up"          # LARGE neurons (spec §1.1)
  c.spike.window = "open"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.b1 = 0.9
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 1.0
  if pretrain:  # the MIM recipe's AdamW (spec §4.2): betas (0.9, 0.95), wd 0.05 on everything
    c.optimizer.lr = 2e-3
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.05
    c.optimizer.decay_all = True
    c.optimizer.layer_decay = 1.0
  else:
    c.optimizer.lr = 3e-3
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 0.05
    c.optimizer.layer_decay = 0.75 if mode == "finetune" else 1.0
  c.warmup_epochs = 0.5
  c.min_lr = 1e-5
  c.num_epochs = 3.0
  c.time_limit_minutes = placeholder(float)
  c.ema_decay = 0.0

  c.dtype = "float32"
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1

  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.eval_every_steps = placeholder(int)   # extra evaluations (e.g. an effective-rank curve)
  c.firing_stats = False
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.progress_bar = True
  c.stop_after_steps = placeholder(int)
  if "runlocal" in args:
    c.batch_size = 16
    c.eval_batch_size = 32
    c.model.embed_dims = (8, 16, 16)
    c.model.depth = 1
    if pretrain:
      c.model.decoder_dim = 16
      c.model.decoder_depth = 1
    c.num_epochs = 1.0
    c.max_train_steps = 3
    c.max_eval_steps = 1
    c.warmup_epochs = 0.0
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.progress_bar = False
  else:
    c.max_train_steps = placeholder(int)
    c.max_eval_steps = placeholder(int)
  return c


def sweep(add):
  """Pretraining with SFA integers and with binary spikes (paper Fig. 10b)."""
  add(**{"mode": "sfa"})
  add(**{"mode": "vanilla", "spike.time_steps": 1})
