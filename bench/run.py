"""`make bench`: every oomtrace benchmark on this machine, as JSON and as a Markdown table.

    bench/run.sh                        # everything, several minutes; needs root
    bench/run.sh --quick                # fewer repetitions, for a smoke run
    bench/run.sh --only lead,peers      # a subset: lead, latency, overhead, pipeline, peers

Writes bench/results/<UTC time>-<kernel>.json (and latest.json), rewrites docs/benchmarks.md
from it (unless --no-doc) and prints the summary table. Every figure is measured in the same
run as its baseline; the kernel, the probe tiers, the machine and its load are recorded with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import harness, report

RESULTS = harness.REPO / "bench" / "results"
DOC = harness.REPO / "docs" / "benchmarks.md"
BENCHMARKS = ("lead", "latency", "overhead", "pipeline", "peers")


def _pipeline(quick: bool) -> dict[str, Any]:
    from bench import pipeline
    from bench.workload import MIB, Pool

    seconds = 5.0 if quick else 10.0
    with Pool(100, 16 * MIB) as pool:
        # Real cgroups, so the records resolve to real pod paths and tags.
        ids = [os.stat(p.dir(p.container_path)).st_ino for p in pool]
        harness.say("pipeline: 10,000 oom_kill records/s, core pipeline (no attribution stages)")
        core = pipeline.run(10_000, seconds, ids, attribution=False)
        harness.say("pipeline: 10,000 oom_kill records/s, as `oomtrace run` (attribution stages on)")
        full = pipeline.run(10_000, seconds, ids, attribution=True)
        harness.say("pipeline: 2,000 oom_kill records/s, as `oomtrace run`")
        moderate = pipeline.run(2_000, seconds, ids, attribution=True)
    return {
        "record_bytes": pipeline.RECORD,
        "ring_buffer_bytes": pipeline.RINGBUF_BYTES,
        "charge_failures_per_s": pipeline.CHARGE_FAILURES_PER_S,
        "runs": [core, full, moderate],
    }


def _run_one(name: str, quick: bool) -> dict[str, Any]:
    if name == "lead":
        from bench import lead

        return lead.run(reps=2 if quick else 5)
    if name == "latency":
        from bench import latency

        return latency.run(scale=0.4 if quick else 1.0)
    if name == "overhead":
        from bench import overhead

        return overhead.run(rounds=2 if quick else 8, seconds=3.0 if quick else 4.0)
    if name == "pipeline":
        return _pipeline(quick)
    if name == "peers":
        from bench import peers

        return peers.run(spaced=5 if quick else 10, storm=50)
    raise ValueError(name)


def _preflight() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: needs root (BPF, cgroups, /dev/kmsg)")
    tracing = Path("/sys/kernel/tracing")
    if not (tracing / "events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(tracing)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--from-json", type=Path, help="only render the Markdown from a results file")
    args = parser.parse_args(argv)
    if args.from_json:
        record = json.loads(args.from_json.read_text())
    else:
        chosen = [b.strip() for b in args.only.split(",") if b.strip()]
        unknown = set(chosen) - set(BENCHMARKS)
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        _preflight()
        record = {"machine": harness.machine(), "tiers": harness.probe_tiers(), "quick": args.quick}
        record["benchmarks"] = {}
        for name in chosen:
            started = time.monotonic()
            harness.say(f"--- {name}")
            try:
                record["benchmarks"][name] = _run_one(name, args.quick)
            except Exception as err:  # one broken benchmark must not cost the others their numbers
                traceback.print_exc()
                record["benchmarks"][name] = {"error": f"{type(err).__name__}: {err}"}
            record["benchmarks"][name]["wall_s"] = round(time.monotonic() - started, 1)
        record["startups"] = [{"seconds": round(s, 3), "rss_bytes": r} for s, r in harness.STARTUPS]
        harness.summarize_load(record["machine"])
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = record["machine"]["date"].replace(":", "").replace("-", "")
        out = RESULTS / f"{stamp}-{record['machine']['kernel']}.json"
        out.write_text(json.dumps(record, indent=1) + "\n")
        (RESULTS / "latest.json").write_text(json.dumps(record, indent=1) + "\n")
        harness.say(f"results: {out.relative_to(harness.REPO)}")
    text = report.markdown(record)
    if not args.no_doc:
        DOC.write_text(text)
        report.update_readme(record)
        harness.say(f"table: {DOC.relative_to(harness.REPO)} and README.md")
    print(report.summary_table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
