"""Classification with knowledge distillation (spec §4.1, §4.3 "distill"): a model with a
distillation head learns ``(1 - alpha) * CE(head, target) + alpha * CE(head_kd, argmax of the
teacher)``.

Selected by ``config.distill.teacher`` (a training workdir or a model directory) with
``task = classify`` (or ``task = distill``); ``config.distill.alpha`` (default 0.5). The
teacher runs in eval mode inside the same jitted step, replicated on every device.
"""

from __future__ import annotations


import jax

from spikejax.models.from_config import ConfigError
from spikejax.train import checkpoints as ckpt_lib
from spikejax.train import paths
import spikejax.train.tasks.base as base
from spikejax.train.tasks.classify import Classify, functional_train_step

# the classification step with the teacher's graphdef (3) and alpha (5) static
jitted_train_step = jax.jit(functional_train_step, static_argnums=(0, 3, 5), donate_argnums=1)


def _alpha(config) -> float:
  distill = config.get("distill")
  return float(distill.get("alpha", 0.5)) if distill else 0.5


class Distill(Classify):
  name = "distill"
  train_step = staticmethod(jitted_train_step)

  def for_config(self, config) -> base.Task:
    return self

  def validate(self, config, family):
    distill = config.get("distill")
    teacher = distill.get("teacher") if distill else None
    if not teacher:
      raise ConfigError("task 'distill' needs distill.teacher: a training workdir or a model "
                        "directory.")
    if not paths.exists(teacher):
      raise ConfigError(f"distill.teacher={teacher!r} does not exist: give a training workdir "
                        f"or a model directory.")
    from spikejax.models import get_variant
    del family
    options = get_variant(config.model_name).config   # families with a head_kd option
    if "kd" not in options or not config.model.get("kd", options["kd"]):
      raise ConfigError(f"distillation needs a model with a distillation head (model.kd=True "
                        f"on a spikformer* or metaspikformer* model); {config.model_name!r} "
                        f"has none.")
    if not 0.0 <= distill.get("alpha", 0.5) <= 1.0:
      raise ConfigError(f"distill.alpha must be in [0, 1], got {distill.get('alpha')}.")

  def step_args(self, config, mesh):
    """``(teacher graphdef, teacher state, alpha)``: the teacher loaded in eval mode and
    replicated over ``mesh``."""
    from flax import nnx
    teacher, _ = ckpt_lib.load_trained(config.distill.teacher)
    if mesh is not None:
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      nnx.update(teacher, jax.device_put(nnx.state(teacher), replicated))
    teacher.eval()
    return (*nnx.split(teacher), _alpha(config))

  def abstract_step_args(self, config, mesh):
    raise ConfigError("the distillation step with a teacher is not supported ahead of time; "
                      "unset distill.teacher to compile the step with the distillation head "
                      "alone.")


TASK = base.register(Distill())
