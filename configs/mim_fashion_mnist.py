"""MIM pretraining (spec §4.2) of a scaled-down LARGE model on Fashion-MNIST, then finetuning.

    python -m spikejax.main --config=configs/mim_fashion_mnist.py:pretrain --workdir=/tmp/mim
    python -m spikejax.main --config=configs/mim_fashion_mnist.py:finetune \
        --config.init_from=/tmp/mim --workdir=/tmp/mim_ft
    python -m spikejax.main --config=configs/mim_fashion_mnist.py:scratch --workdir=/tmp/scratch

Arguments (``:a,b``): one stage (default ``pretrain``; also as ``stage=finetune``):
``pretrain`` (``spikmae_12_512`` scaled down: SparK masking of a 4 x 4 grid of 8-pixel patches,
ratio 0.5, sparse conv pyramid, ViT decoder, normalised-pixel loss), ``finetune``
(``spikformer12_512`` of the same size, initialised from ``init_from``: encoder weights and BN
statistics; layer decay 0.75 as spec §4.3), ``scratch`` (the same finetuning model from random
init); and ``binary`` (vanilla binary spikes instead of SFA integers, for the effective-rank
comparison of paper Fig. 10b), ``runlocal`` (tiny, a few steps). Any other argument is an error.
The encoder is the same in every mode: embed dims (32, 64, 128), 4 blocks, strides (2, 2, 2, 1)
(32 px -> 16, 8, 4, 4: 16 tokens).
"""

import ml_collections

from configs import common

ENCODER = dict(embed_dims=(32, 64, 128), depth=4, strides=(2, 2, 2, 1), rep_conv2=True)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, stage=common.one_of("pretrain", "finetune", "scratch"),
                       binary=False, runlocal=False)
  pretrain = a.stage == "pretrain"
  c = common.trainer_defaults(dataset="fashion_mnist", channels=1,
                              task="mim" if pretrain else "classify")
  c.image_size = 32

  c.model_name = "spikmae_12_512" if pretrain else "spikformer12_512"
  c.model.update(ENCODER)
  if pretrain:
    c.model.mask_ratio = 0.5
    c.model.decoder_dim = 64
    c.model.decoder_depth = 2
    c.model.decoder_heads = 4
    c.model.token_order = "spatial"
  else:
    c.model.kd = False
    c.model.drop_path_rate = 0.1
  # init_from (finetune): the pretraining workdir

  c.mode = "vanilla" if a.binary else "sfa"
  c.spike.rounding = "half_up"          # LARGE neurons (spec §1.1)
  c.spike.window = "open"

  if pretrain:  # the MIM recipe's AdamW (spec §4.2): betas (0.9, 0.95), wd 0.05 on everything
    c.optimizer.lr = 2e-3
    c.optimizer.b2 = 0.95
    c.optimizer.decay_all = True
  else:
    c.optimizer.layer_decay = 0.75 if a.stage == "finetune" else 1.0
  c.num_epochs = 3.0
  # eval_every_steps: extra evaluations (e.g. an effective-rank curve)
  c.keep_checkpoints = 2

  if a.runlocal:
    common.apply_runlocal(c, eval_batch_size=32, max_train_steps=3)
    c.model.embed_dims = (8, 16, 16)
    c.model.depth = 1
    if pretrain:
      c.model.decoder_dim = 16
      c.model.decoder_depth = 1
  return c


def sweep(add):
  """Pretraining with SFA integers and with binary spikes (paper Fig. 10b)."""
  add(**{"mode": "sfa"})
  add(**{"mode": "vanilla", "spike.time_steps": 1})
