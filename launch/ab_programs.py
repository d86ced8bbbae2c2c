"""Compares the largest StableHLO module of two JAX dump directories (launch/ab_programs.sh):
the timed step's program. Debug locations, argument/result path names and the module's name
(the jitted function's) are not part of the computation and are left out; one JSON line."""

import argparse
import hashlib
import json
import os
import re


def canonical(text: str) -> str:
  text = re.sub(r'jax\.(arg|result)_info = "[^"]*"', "", text)
  text = re.sub(r"\bloc\([^)]*\)", "", text)
  return re.sub(r"^module @\S+", "module @m", text, flags=re.M)


def largest(directory: str) -> tuple[str, str, int]:
  files = [os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".mlir")]
  path = max(files, key=os.path.getsize)
  with open(path) as f:
    return os.path.basename(path), canonical(f.read()), len(files)


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("old")
  p.add_argument("new")
  p.add_argument("--case", default="")
  a = p.parse_args(argv)
  out = {"case": a.case}
  for side in ("old", "new"):
    name, text, n = largest(getattr(a, side))
    out[side] = {"module": name, "modules_lowered": n, "lines": text.count("\n"),
                 "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}
  out["same_program"] = out["old"]["sha256"] == out["new"]["sha256"]
  print(json.dumps(out))


if __name__ == "__main__":
  main()
