"""Time ``make demo`` as a new user runs it and record its table (results/demo.json).

Runs ``python -m distilset.demo OUT`` in a fresh process (imports included, as ``make demo`` does after setup),
measures its wall clock, and reads back what the demo recorded: each set's evaluation and its random real twin's
(the same count, net and recipe). The done-when of the first-ten-minutes work: at most 120 s on two quiet cores,
every method ahead of its twin.

    .venv/bin/python benchmarks/demo.py [--out /tmp/distilset-demo]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, ResultFile, command_line

from distilset.evaluate import load_evaluations
from distilset.synset import SyntheticSet

OUT = RESULTS / "demo.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/distilset-demo", help="where the demo writes its sets")
    args = p.parse_args()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distilset.demo", args.out], check=True)
    wall = time.perf_counter() - start
    from distilset.demo import RUNS

    table = []
    for name, method, _ in RUNS:
        own, twin = (
            load_evaluations(Path(args.out) / method)[-1],
            load_evaluations(Path(args.out) / f"{method}-random-real")[-1],
        )
        syn = SyntheticSet.load(Path(args.out) / method)
        table.append({"set": name, "method": method, "images": len(syn), "recipe": own["settings"]["recipe_text"],
                      "net": own["net"], "repeats": own["repeats"],
                      "distilled": {"mean": own["accuracy_mean"], "std": own["accuracy_std"]},
                      "random_real": {"mean": twin["accuracy_mean"], "std": twin["accuracy_std"]}})  # fmt: skip
    results = ResultFile(OUT, {"what": "make demo, wall clock of a fresh process"})
    results.data["rows"] = []
    results.add({"command": command_line(), "demo_command": f"{sys.executable} -m distilset.demo {args.out}",
                 "wall_s": round(wall, 1), "budget_s": 120, "table": table})  # fmt: skip
    print(f"make demo: {wall:.1f} s; wrote {OUT}")


if __name__ == "__main__":
    main()
