"""The main job: ``python -m spikejax.main --config=configs/NAME.py[:ARG] --workdir=DIR``.

Overrides: ``--config.key=value`` (ml_collections config_flags). Resumes automatically from
the newest readable checkpoint in ``DIR/checkpoints``. Multi-host: pass
``--coordinator_address``/``--num_processes``/``--process_id``, or ``--distributed`` where the
cluster provides them (Cloud TPU pods: ``launch/tpu_pod.py``).
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:ARG]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port.")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with the settings "
                  "the cluster provides (Cloud TPU pods, SLURM); see launch/tpu_pod.py.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)
  from spikejax.train import trainer
  try:
    summary = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except trainer.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  except trainer.NaNLossError as e:
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(3)
  except trainer.ckpt_lib.UnreadableCheckpointsError as e:
    print(f"checkpoint error: {e}", file=sys.stderr)
    sys.exit(4)
  if jax.process_index() == 0:
    best, metric = summary["best"], summary["best_metric"]
    if best is not None and best.get(metric) is not None:
      print(f"done: best test {metric} {best[metric]:.4f} at step {summary['best_step']} "
            f"({summary['minutes']:.1f} min, stopped by {summary['stopped_by'] or 'schedule'}); "
            f"checkpoint {summary['checkpoint']}")
    else:
      print(f"done: step {summary['step']}; checkpoint {summary['checkpoint']}")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))


if __name__ == "__main__":
  from spikejax import allocator
  allocator.reexec()
  app.run(main)
