"""``scripts/bench``: run the workloads, print the table, write bench/results.md."""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

WORKLOADS = ("convert", "send", "receive", "render", "e2e")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("workload", nargs="?", default="all", choices=(*WORKLOADS, "all"))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per tool")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    chosen = WORKLOADS if args.workload == "all" else (args.workload,)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="dicom-node-bench-"))
    for name in chosen:
        module = importlib.import_module(name)
        print(f"## {name}", flush=True)
        got = module.run(work / name, args.repeats)
        common.print_rows(got)
        rows += got
    header = (
        f"# dicom-node benchmarks\n\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"- machine: {common.machine()}\n"
        f"- versions: {common.versions()}\n"
        f"- command: `scripts/bench {args.workload} --repeats {args.repeats}`\n\n"
        "Ratios are ours/peer from the same run (higher is better for us); runs interleaved.\n\n"
    )
    text = header + common.table(rows)
    out = common.REPO / "bench" / "results.md"
    if args.workload != "all" and out.exists():
        out = common.REPO / "bench" / f"results-{args.workload}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(f"\nwritten to {out}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
