# Sourced by launch/ab_bench.sh and launch/ab_programs.sh (run from the repository root with
# REV set): the Python to use (PY, absolute), the earlier revision checked out in a throwaway
# worktree (OLD, removed on exit), the working tree (NEW) and the four A/B cases (CASES).
PY=${PYTHON:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")   # absolute; a venv link stays a link
OLD=$(mktemp -d)
trap 'git worktree remove --force "$OLD" >/dev/null 2>&1 || rm -rf "$OLD"' EXIT
git worktree add --detach -q "$OLD" "$REV"
NEW=$(pwd)
CASES=("--model espikeformer_s --resolution 224 --batch 8 --train"
       "--model espikeformer_s --resolution 224 --batch 8"
       "--model espikeformer_t --resolution 32 --batch 64 --num-classes 10 --train"
       "--model espikeformer_t --resolution 32 --batch 64 --num-classes 10")
