"""Run a sentiment-dist command in this process and record its peak memory: one JSON file per rank.

    horovodrun -np 2 python benchmarks/rank_probe.py OUT_DIR sentiment_dist.train <overrides...>

writes `OUT_DIR/rank<R>.json` with the rank (HOROVOD_RANK, or TF_CONFIG's task index, or 0)
and `peak_rss_gb`: the process's high-water resident set (`ru_maxrss`), which counts the pages
of a memory-mapped store the rank touched as well as its own allocations.
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import sys


def rank() -> int:
    if "HOROVOD_RANK" in os.environ:
        return int(os.environ["HOROVOD_RANK"])
    if os.environ.get("TF_CONFIG"):
        return int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    return 0


def main() -> None:
    out, module, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.argv = [module, *overrides]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.makedirs(out, exist_ok=True)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with open(os.path.join(out, f"rank{rank()}.json"), "w", encoding="utf-8") as handle:
            json.dump({"rank": rank(), "peak_rss_gb": peak_kb / 2**20, "exit_code": code}, handle)
    sys.exit(code)


if __name__ == "__main__":
    main()
