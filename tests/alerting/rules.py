"""The alerting rules in deploy/, as the tests use them.

- `scaled_rules(factor)`: the documented transform that makes the production rule file fast
  enough for an integration test: every duration in it (each rule's `for:`, every range
  selector `[5m]`, subquery `[5m:1m]` and `offset 10m` in an expression) is divided by
  `factor`. With the default 60 a minute becomes a second: `for: 10m` → `for: 10s`,
  `rate(x[5m])` → `rate(x[5s])`. Names, labels, thresholds and annotations are untouched, so
  the alerts fire on the same data shapes and render the same text.

deploy/prometheus-rule.yaml (the PrometheusRule manifest) is written from the same file by
`python -m tools.alert_manifest`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from tracer.sinks.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "deploy/prometheus-rules.yaml"
TESTS_DIR = Path(__file__).resolve().parent

# Metrics the rules and the dashboard read that another part of oomtrace is still to export
# (docs/alerting.md, "Dependencies"). None today: the VM overhead gauges are exported.
DEPENDENCIES: frozenset[str] = frozenset()

TIME_SCALE = 60  # the integration test's factor: a minute of production time is a second

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNITS_MS |= {"w": 7 * 86_400_000, "y": 365 * 86_400_000}
_DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
# Where PromQL has durations: range selectors and subqueries in brackets, and offsets.
_RANGE = re.compile(r"\[\s*(" + _DURATION.pattern + r")\s*(?::\s*(" + _DURATION.pattern + r")?\s*)?\]")
_OFFSET = re.compile(r"\boffset\s+(-?)(" + _DURATION.pattern + r")")



def duration_ms(text: str) -> int:
    """A Prometheus duration (`1h30m`, `5m`, `250ms`) in milliseconds."""
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS_MS[unit] for n, unit in _DURATION_PART.findall(text))


def format_duration(ms: int) -> str:
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def _scale(text: str, factor: int) -> str:
    ms = duration_ms(text)
    return format_duration(max(1, ms // factor) if ms else 0)


def scale_expr(expr: str, factor: int) -> str:
    """`expr` with every range, subquery step and offset duration divided by `factor`."""

    def range_(m: re.Match[str]) -> str:
        inner = _scale(m.group(1), factor)
        if m.group(0).find(":") < 0:
            return f"[{inner}]"
        step = m.group(2)
        return f"[{inner}:{_scale(step, factor) if step else ''}]"

    def offset(m: re.Match[str]) -> str:
        return f"offset {m.group(1)}{_scale(m.group(2), factor)}"

    return _OFFSET.sub(offset, _RANGE.sub(range_, expr))


def load(path: Path = RULES_FILE) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a rule file")
    return doc


def rules(doc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    doc = doc if doc is not None else load()
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_names(doc: dict[str, Any] | None = None) -> list[str]:
    return [rule["alert"] for rule in rules(doc) if "alert" in rule]


def scaled_rules(factor: int = TIME_SCALE, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The rule file with every duration divided by `factor` (see the module docstring)."""
    doc = doc if doc is not None else load()
    out: dict[str, Any] = {"groups": []}
    for group in doc["groups"]:
        new_group = dict(group)
        if "interval" in group:
            new_group["interval"] = _scale(group["interval"], factor)
        new_group["rules"] = []
        for rule in group["rules"]:
            new_rule = dict(rule)
            new_rule["expr"] = scale_expr(rule["expr"], factor)
            if "for" in rule:
                new_rule["for"] = _scale(rule["for"], factor)
            new_group["rules"].append(new_rule)
        out["groups"].append(new_group)
    return out


def exported_metric_names() -> set[str]:
    """Every metric name tracer.sinks.metrics.Metrics exports (counters with their _total)."""
    registry = CollectorRegistry()
    Metrics(registry, kernel="test")
    names = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.alerting.rules")
    parser.add_argument(
        "--scaled", type=int, metavar="FACTOR", required=True,
        help="print the rules with every duration divided by FACTOR",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.scaled < 1:
        parser.error("FACTOR must be >= 1")
    sys.stdout.write(yaml.safe_dump(scaled_rules(args.scaled), sort_keys=False, width=1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
