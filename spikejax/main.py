"""The main job: ``python -m spikejax.main --config=configs/NAME.py[:ARG] --workdir=DIR``.

Overrides: ``--config.key=value`` (ml_collections config_flags). Resumes automatically from
the newest readable checkpoint in ``DIR/checkpoints``. Multi-host: pass
``--coordinator_address``/``--num_processes``/``--process_id``, or ``--distributed`` where the
cluster provides them (Cloud TPU pods: ``launch/tpu_pod.py``).
"""

from __future__ import annotations

import json
import logging
import os
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
flags.DEFINE_float("peer_timeout_seconds", 60.0, "Multi-host: a process whose heartbeat stops "
                   "for this long counts as lost; the others then exit (code 5) with one line "
                   "naming it and the last complete checkpoint (spikejax/train/watchdog.py).")
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
  from spikejax.data import DataError
  from spikejax.train import paths, trainer, watchdog
  peers = None
  if jax.process_count() > 1:
    peers = watchdog.PeerWatchdog(
        timeout_s=FLAGS.peer_timeout_seconds,
        checkpoint_dir=paths.join(paths.resolve(FLAGS.workdir), "checkpoints")).start()
  try:
    from spikejax.train import budget
    summary = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                         launched_at=budget.process_start_time())
  except trainer.ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)
  except DataError as e:
    print(f"data error: {e}", file=sys.stderr)
    sys.exit(2)
  except trainer.NaNLossError as e:
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(3)
  except trainer.ckpt_lib.UnreadableCheckpointsError as e:
    print(f"checkpoint error: {e}", file=sys.stderr)
    sys.exit(4)
  except BaseException:
    if peers is None or not isinstance(sys.exc_info()[1], Exception):
      raise
    peers.after_failure()       # a collective failed because a process is gone? never returns
  finally:
    if peers is not None:
      peers.finished()
  if jax.process_index() == 0:
    best, metric = summary["best"], summary["best_metric"]
    if best is not None and best.get(metric) is not None:
      print(f"done: best test {metric} {best[metric]:.4f} at step {summary['best_step']} "
            f"({summary['minutes']:.1f} min, stopped by {summary['stopped_by'] or 'schedule'}); "
            f"checkpoint {summary['checkpoint']}")
    else:
      print(f"done: step {summary['step']}; checkpoint {summary['checkpoint']}")
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))


def check_config_args(argv: list[str]) -> str | None:
  """The first problem with the ``--config`` arguments of ``argv`` as one line, or None.

  Checked before absl parses the flags (whose config errors are tracebacks of 45-55 lines):
  the config file exists, its ``get_config(ARG)`` accepts ``ARG``, and every
  ``--config.KEY=VALUE`` names a key the config has (closest key suggested).
  """
  import difflib
  import importlib.util
  spec, overrides = None, []
  args = iter(argv[1:])
  for a in args:
    if a == "--":
      break
    if a.startswith("--config="):
      spec = a[len("--config="):]
    elif a == "--config":
      spec = next(args, None)
    elif a.startswith("--config."):
      key = a[len("--config."):].split("=", 1)[0]
      overrides.append((key, a))
  if spec is None:
    return None                        # absl reports the missing required flag
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    here = os.path.dirname(path) or "."
    found = sorted(f for f in os.listdir(here) if f.endswith(".py")
                   and f not in ("__init__.py", "common.py")) if os.path.isdir(here) else []
    return (f"--config={spec}: no such config file {path!r}" +
            (f"; {here}/ has {', '.join(found)}" if found else "") +
            " (run from the repository root: --config=configs/NAME.py[:ARG])")
  try:
    module_spec = importlib.util.spec_from_file_location("_spikejax_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception as e:  # a bad ARG is a ValueError naming it; anything else, say what
    return f"--config={spec}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  for key, a in overrides:
    node, walked = config, []
    for part in key.split("."):
      fields = list(node.keys()) if hasattr(node, "keys") else []
      if part not in fields:
        close = difflib.get_close_matches(part, fields, n=1, cutoff=0.5)
        where = "the config" if not walked else "config." + ".".join(walked)
        return (f"{a}: {where} has no key {part!r}; " +
                (f"did you mean {'.'.join(walked + [close[0]])!r}?" if close else
                 f"its keys: {', '.join(sorted(fields))}"))
      node = node[part]
      walked.append(part)
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  problem = check_config_args(argv)
  if problem is None:
    try:
      return FLAGS(argv)
    except Exception as e:              # a value a flag cannot take (type, format)
      problem = " ".join(str(e).split()) or type(e).__name__
  print(f"config error: {problem}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  from spikejax import allocator
  allocator.reexec()
  app.run(main, flags_parser=_parse_flags)
