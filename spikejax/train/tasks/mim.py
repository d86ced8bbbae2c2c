"""Masked image modelling pretraining (spec §4.2) of a ``spikmae_*`` model.

Train: the model's own loss (normalised-pixel MSE on masked patches) with masks from its
``mask`` rng stream (part of the model state, so a resumed run draws the same masks). Eval:
the reconstruction loss with masks from a fixed key per batch index (the same masks at every
evaluation), and the effective rank (paper Eq. 29, Fig. 10b) of the encoder's tokens for the
whole images. The best evaluation is the lowest reconstruction loss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from spikejax.data.event_pipeline import model_input
from spikejax.models.mim import mim_loss
from spikejax.train import metrics as metrics_lib
import spikejax.train.tasks.base as base


def functional_train_step(graphdef, state, batch):
  """One MIM pretraining step (spec §4.2): the mask comes from the model's own rng stream."""
  model, optimizer = nnx.merge(graphdef, state)

  def loss_fn(m):
    return m(model_input(batch["image"]))[0]

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return nnx.state((model, optimizer)), {"loss": loss, "grad_norm": optax.tree.norm(grads)}


jitted_train_step = jax.jit(functional_train_step, static_argnums=0, donate_argnums=1)


@functools.lru_cache(maxsize=None)
def make_eval_fn(seed: int = 0):
  """The MIM eval function for masks drawn from ``fold_in(key(seed), batch index)``."""

  def eval_fn(model, batch, index):
    x = model_input(batch["image"])
    batch_size = x.shape[-4] if x.ndim == 4 else x.shape[1]
    # effective rank (paper Eq. 29) of the encoder's tokens for the whole (unmasked) images
    tokens = model.forward_encoder(x, jnp.ones((batch_size,) + tuple(model.grid), jnp.float32))
    mask = batch["mask"]
    tokens = jnp.where((mask > 0)[:, None, None], tokens, 0.0)
    # reconstruction of the masked patches, padding rows (mask 0) left out
    key = jax.random.fold_in(jax.random.key(seed), index)
    _, pred, active = model(x, key)
    images = x if x.ndim == 4 else jnp.mean(x, axis=0)
    loss = mim_loss(pred, images, active, model.patch, weights=mask)
    return {"loss_sum": loss * jnp.sum(mask), "count": jnp.sum(mask),
            "erank_sum": metrics_lib.effective_rank(tokens), "rank_batches": jnp.float32(1.0)}

  return eval_fn


class MIM(base.Task):
  name = "mim"
  train_step = staticmethod(jitted_train_step)
  best_metric = "loss"
  higher_is_better = False
  logged = ("loss", "erank")
  row_names = {"loss": "test_loss", "erank": "erank"}
  families = ("spikmae",)

  def model_overrides(self, config, image_shape):
    """A MIM model without ``model.img_size`` is built for the data's ``(H, W)``."""
    if config.model.get("img_size") is None:
      return {"img_size": tuple(image_shape[-3:-1])}
    return {}

  def batch_spec(self, global_batch, num_classes, image_shape):
    del num_classes  # the step reads only the images
    return {"image": jax.ShapeDtypeStruct((global_batch,) + tuple(image_shape), jnp.float32)}

  def eval_fn(self, config):
    return make_eval_fn(int(config.get("seed", 0)))

  def aggregate(self, totals):
    n = max(totals.get("count", 0.0), 1.0)
    return {"loss": totals.get("loss_sum", 0.0) / n,
            "erank": totals.get("erank_sum", 0.0) / max(totals.get("rank_batches", 0.0), 1.0),
            "examples": int(totals.get("count", 0))}

  def describe(self, metrics):
    return (f"test reconstruction loss {metrics['loss']:.4f}, encoder effective rank "
            f"{metrics['erank']:.2f}")


TASK = base.register(MIM())
