"""``scripts/bench``: run the workloads, print the table, write bench/results.md."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

WORKLOADS = ("convert", "send", "receive", "render", "e2e")


HEADER = (
    "# dicom-node benchmarks\n\n"
    "Produced by `scripts/bench`: each workload runs ours and the peers interleaved "
    "(A B A B ...) in one run, on 127.0.0.1. Ratios are ours/peer from the same run "
    "(higher is better for us). Each timed run starts after `sync`, so no run pays for "
    "the writeback of the one before. Re-running one workload replaces only its "
    "section.\n\n"
)


def section(name: str, rows: list[dict], raw: Path, repeats: int | None = None) -> str:
    """One workload's part of results.md."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(raw.stat().st_mtime))
    how = f"`scripts/bench {name} --repeats {repeats}`" if repeats else f"`scripts/bench {name}`"
    return f"## {name}\n\n- {when}, {how}; raw rows in `bench/{raw.name}`\n\n" + common.table(rows)


def merge(path: Path, sections: dict[str, str]) -> str:
    """bench/results.md with the given workload sections replaced (others kept)."""
    old: dict[str, str] = {}
    if path.exists():
        current = None
        for line in path.read_text().splitlines(keepends=True):
            if line.startswith("## "):
                current = line[3:].strip()
                old[current] = ""
            if current is not None:
                old[current] += line
    old.update(sections)
    ordered = [w for w in WORKLOADS if w in old]
    body = "\n".join(old[w].rstrip("\n") + "\n" for w in ordered)
    return HEADER + f"- machine: {common.machine()}\n- versions: {common.versions()}\n\n" + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("workload", nargs="?", default="all", choices=(*WORKLOADS, "all"))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per tool")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="only re-render bench/results.md from the last raw-*.json of each workload",
    )
    args = parser.parse_args(argv)
    chosen = WORKLOADS if args.workload == "all" else (args.workload,)
    sections: dict[str, str] = {}
    if args.table_only:
        for name in chosen:
            raw = common.REPO / "bench" / f"raw-{name}.json"
            if raw.exists():
                sections[name] = section(name, json.loads(raw.read_text()), raw)
        out = common.REPO / "bench" / "results.md"
        out.write_text(merge(out, sections))
        return 0
    work = Path(tempfile.mkdtemp(prefix="dicom-node-bench-"))
    for name in chosen:
        module = importlib.import_module(name)
        print(f"## {name}", flush=True)
        got = module.run(work / name, args.repeats)
        common.print_rows(got)
        raw = common.REPO / "bench" / f"raw-{name}.json"
        raw.parent.mkdir(exist_ok=True)
        raw.write_text(json.dumps(got, indent=1, default=str))
        sections[name] = section(name, got, raw, args.repeats)
    out = common.REPO / "bench" / "results.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(merge(out, sections))
    print(f"\nwritten to {out}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
