"""Runs one command on every worker of a Cloud TPU VM pod slice (``gcloud ... ssh --worker=all``).

    python -m launch.tpu_pod --tpu=my-v5e-32 --zone=us-west4-a [--project=P] --setup --dry_run \\
        -- python -m spikejax.main --distributed --config=configs/imagenet_espikeformer.py:m \\
           --workdir=gs://bucket/runs/m

Every worker runs the same command in ``--repo_dir`` (JAX makes one process per host; with
``--distributed`` the main job calls ``jax.distributed.initialize()``, which finds the pod's
coordinator by itself). ``--setup`` first copies this checkout to every worker
(``gcloud ... scp --recurse``) and runs ``launch/setup.sh`` there; ``--env KEY=VALUE`` exports
variables; ``--dry_run`` prints the ``gcloud`` commands instead of running them. Workdirs of
multi-host runs must be on storage every worker sees (``gs://...``). A ``--config=PATH[:ARG]``
in the command is built first from ``--source`` (where PATH exists there), so a misspelt
config argument fails here and not on every worker.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gcloud(verb: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", verb]


def _where(args) -> list[str]:
  out = [f"--zone={args.zone}", "--worker=all"]
  if args.project:
    out.append(f"--project={args.project}")
  return out


def config_spec(command: list[str]) -> str | None:
  """The ``PATH[:ARG]`` of ``--config=...`` (or ``--config ...``) in ``command``, if any."""
  for i, word in enumerate(command):
    if word.startswith("--config="):
      return word.split("=", 1)[1]
    if word == "--config" and i + 1 < len(command):
      return command[i + 1]
  return None


def check_config(command: list[str], source: str) -> None:
  """Builds the command's config from the local checkout ``source``; ``SystemExit`` naming the
  error if that fails. Skipped when the command names no config file found under ``source``."""
  spec = config_spec(command)
  if not spec:
    return
  path, sep, arg = spec.partition(":")
  local = path if os.path.isabs(path) else os.path.join(source, path)
  if not os.path.isfile(local):
    return
  from launch import import_config_file
  mod, arg = import_config_file(local + sep + arg, "tpu_pod_config")
  try:
    mod.get_config(arg)
  except (ValueError, TypeError) as e:
    raise SystemExit(f"--config={spec}: {e}") from None


def build_commands(args) -> list[list[str]]:
  """The gcloud invocations, in order (``--setup``: copy + install, then the command)."""
  if not args.command:
    raise SystemExit("no command to run: put it after `--`, e.g. -- python -m spikejax.main ...")
  for kv in args.env:
    if "=" not in kv or not kv.split("=", 1)[0].isidentifier():
      raise SystemExit(f"--env expects KEY=VALUE, got {kv!r}")
  check_config(args.command, args.source)
  repo = args.repo_dir
  cmds = []
  if args.setup:
    cmds.append(_gcloud("scp") + ["--recurse", args.source, f"{args.tpu}:{repo}"]
                + _where(args))
    cmds.append(_gcloud("ssh") + [args.tpu] + _where(args) + [
        "--command", f"cd {shlex.quote(repo)} && bash launch/setup.sh"])
  exports = "".join(f"export {k}={shlex.quote(v)} && "
                    for k, v in (kv.split("=", 1) for kv in args.env))
  remote = (f"cd {shlex.quote(repo)} && {exports}. .venv/bin/activate && "
            + shlex.join(args.command))
  cmds.append(_gcloud("ssh") + [args.tpu] + _where(args) + ["--command", remote])
  return cmds


def parse(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  command = []
  if "--" in argv:
    i = argv.index("--")
    argv, command = argv[:i], argv[i + 1:]
  p = argparse.ArgumentParser(prog="python -m launch.tpu_pod", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tpu", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default=None)
  p.add_argument("--repo_dir", default="spikejax", help="checkout on the workers (relative to ~)")
  p.add_argument("--source", default=REPO, help="local checkout copied by --setup")
  p.add_argument("--setup", action="store_true", help="copy the checkout and run setup.sh")
  p.add_argument("--env", action="append", default=[], help="KEY=VALUE exported first")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  args = p.parse_args(argv)
  args.command = command
  return args


def main(argv=None) -> int:
  args = parse(argv)
  cmds = build_commands(args)
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
      rc = subprocess.run(cmd, check=False).returncode
      if rc:
        print(f"failed with exit code {rc}: {shlex.join(cmd)}", file=sys.stderr)
        return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
