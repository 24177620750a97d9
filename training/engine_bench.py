"""Training throughput of one recipe under two trainers, side by side: `python -m
training.engine_bench --old-tree DIR --data-root DATA_ROOT`.

Each configuration runs in its own process (the occluder bank is cached per process, so a
shared process would hand the second run the first one's bank), on `--limit` faces for two
epochs; epoch 1 pays for painting the whole occluder bank, epoch 2 is the steady state (a
quarter of the bank repainted), so both are reported. `--old-tree` is a checkout of an older
commit (e.g. `git worktree add /tmp/old c3080bb`): its trainer runs with its own defaults.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "fp32 (the old engine's settings)": dict(precision="fp32", channels_last=False,
                                             occluder_bank=0),
    "bf16": dict(precision="bf16", channels_last=False, occluder_bank=0),
    "bf16 + channels_last": dict(precision="bf16", channels_last=True, occluder_bank=0),
    "bf16 + channels_last + occluder bank 4096": dict(precision="bf16", channels_last=True,
                                                      occluder_bank=4096),
}
SNIPPET = """
import sys, json, pathlib
from training.recipes import get_recipe
from training.trainer import train
kwargs = json.loads(sys.argv[1])
train(kwargs.pop("model"), "ferplus", pathlib.Path(kwargs.pop("root")), kwargs.pop("recipe"),
      "cpu", finalize=False, register=False, progress=False, workers=0, **kwargs)
"""


def run(tree: Path, out: Path, settings: dict) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", "if __name__ == '__main__':\n" + "\n".join(
        "    " + line for line in SNIPPET.strip().splitlines()), json.dumps(
        {**settings, "out_dir": str(out)})], check=True, env=env, cwd=tree,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out / "metrics.csv", newline="") as handle:
        return [float(row["img_per_s"]) for row in csv.DictReader(handle)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.engine_bench", description=__doc__)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--old-tree", type=Path, default=None,
                        help="checkout of the commit to compare against (its own defaults)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--limit", type=int, default=12800)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    base = {"model": args.model, "root": str(args.data_root.resolve()), "recipe": args.recipe,
            "limit": args.limit, "epochs": 2}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.old_tree:
            results["old trainer (" + args.old_tree.name + ")"] = run(
                args.old_tree.resolve(), Path(tmp) / "old", base)
        for i, (name, settings) in enumerate(CONFIGS.items()):
            results[name] = run(here, Path(tmp) / f"c{i}", {**base, **settings})
    reference = next(iter(results.values()))[1]
    print(f"{'trainer / settings':<46} {'epoch 1':>9} {'epoch 2':>9} {'x':>6}")
    for name, (first, second) in results.items():
        print(f"{name:<46} {first:>9.0f} {second:>9.0f} {second / reference:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps({"limit": args.limit, "recipe": args.recipe,
                                         "img_per_s": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
