"""Summary of ``launch/ab_bench.sh`` output: per case, the median step time of each side over
the rounds and the ratio new / old.

    bash launch/ab_bench.sh 20afcb0 2 > ab.jsonl && python -m launch.ab_summary ab.jsonl
"""

from __future__ import annotations

import collections
import json
import statistics
import sys


def summarize(lines) -> list[dict]:
  times = collections.defaultdict(lambda: collections.defaultdict(list))
  for line in lines:
    if line.strip():
      rec = json.loads(line)
      times[rec["case"]][rec["side"]].append(rec["result"]["step_median_s"])
  out = []
  for case, sides in times.items():
    old, new = statistics.median(sides["old"]), statistics.median(sides["new"])
    out.append({"case": case, "old_s": old, "new_s": new, "new_over_old": round(new / old, 3),
                "rounds": len(sides["new"])})
  return out


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  with open(argv[0]) as f:
    rows = summarize(f)
  for r in rows:
    print(f"{r['case']:<75} old {r['old_s']:.4f} s  new {r['new_s']:.4f} s  "
          f"new/old {r['new_over_old']:.3f}  ({r['rounds']} rounds)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
