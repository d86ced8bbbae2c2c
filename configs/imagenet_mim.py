"""MIM pretraining of the LARGE models on ImageNet (spec §4.2; official main_pretrain.py with
Train_Large.md), for TPU pods.

    python -m spikejax.main --config=configs/imagenet_mim.py:512 --workdir=gs://.../mim_83m
    python -m spikejax.main --config=configs/imagenet_mim.py:768 --workdir=...
    python -m spikejax.main --config=configs/imagenet_mim.py:512,runlocal --workdir=/tmp/x

Arguments: ``512`` (``spikmae_12_512``, the 83M encoder; the default) or ``768``
(``spikmae_12_768``, 173.8M with the decoder; also as ``size=768``), ``official_order``
(reproduce the official decoder's token permutation, spec §8 trap 8), ``runlocal`` (a tiny
model for two steps, e.g. under tfds mock data). Any other argument is an error.

Recipe: T = 1, D = 4 (LARGE neurons: round half up, open window); mask ratio 0.5 (what the
official code uses); global batch 2048 (256 x 8); AdamW betas (0.9, 0.95), eps 1e-4, weight
decay 0.05 on every tensor; lr = 1.5e-4 x 2048 / 256 = 1.2e-3; 200 epochs, 20 warmup epochs,
per-iteration cosine to 5e-6; no gradient clipping; RandomResizedCrop 224 (scale 0.2-1) + flip.
Sharding: ``mesh.fsdp`` shards parameters and optimizer state (``launch/aot_compile.py`` says
what fits which TPU slice).
"""

import ml_collections

from configs import common

MODELS = {"512": "spikmae_12_512", "768": "spikmae_12_768"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, size=common.one_of(*MODELS), official_order=False, runlocal=False)
  c = common.trainer_defaults(
      task="mim", dataset="imagenet2012", eval_split="validation",
      augment=ml_collections.ConfigDict(dict(
          crop="rrc", scale=(0.2, 1.0), flip=True, randaugment="", reprob=0.0, mixup=0.0,
          cutmix=0.0, label_smoothing=0.0)))
  c.image_size = 224
  c.batch_size = 2048
  c.eval_batch_size = 1024

  c.model_name = MODELS[a.size]
  c.model.mask_ratio = 0.5
  c.model.token_order = "official" if a.official_order else "spatial"
  # per-block rematerialisation (SpikformerConfig.remat): 'dots' keeps only conv/matmul outputs
  # (-42 % step memory, +21 % bytes accessed for the finetuning step, docs/scaling.md)
  c.model.remat = "none"

  c.spike.rounding = "half_up"
  c.spike.window = "open"

  c.optimizer.lr = 1.5e-4 * c.batch_size / 256
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-4
  c.optimizer.decay_all = True          # the official code decays every parameter
  c.optimizer.grad_clip_norm = 0.0      # none
  c.warmup_epochs = 20.0
  c.min_lr = 5e-6
  c.num_epochs = 200.0

  c.dtype = "bfloat16"
  c.mesh.fsdp = 4
  c.log_every_steps = 100
  c.eval_every_epochs = 10
  c.checkpoint_every_steps = 2000

  if a.runlocal:
    common.apply_runlocal(c, image_size=64)
    c.model.embed_dims = (8, 16, 16)
    c.model.depth = 1
    c.model.decoder_dim = 16
    c.model.decoder_depth = 1
    c.mesh.fsdp = 2
  return c


def sweep(add):
  """Both encoders, and the official decoder token order against the spatial one."""
  for size in MODELS.values():
    add(**{"model_name": size})
  add(**{"model_name": MODELS["512"], "model.token_order": "official"})
