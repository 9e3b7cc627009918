"""deploy/prometheus-rules.yaml in a real Prometheus (Debian's package) scraping the real tracer.

One scenario, run once for the module, in phases:

1. a process in a pod-shaped cgroup (64 MiB limit) reads a file three times that size over and
   over: the kernel keeps reclaiming the cgroup's page cache at its limit, and nothing dies.
   The pre-OOM alert must fire for that pod, and no OOM alert for it may even be pending;
2. an allocator in the same cgroup grows past the limit and is OOM-killed: the OOM-kill alert
   must fire for that pod;
3. an OOM in a second cgroup that no pod list names: the OOM-kill alert fires without pod
   labels, and the tracer pod's own labels do not leak onto it;
4. every PromQL query of deploy/grafana-dashboard.json runs against the same Prometheus;
5. the tracer stops: the tracer-down alert must fire, naming the tracer's pod.

The rules are loaded at 1/60 time scale (tests/alerting/rules.py: a minute becomes a second,
for `for:` and every range and offset), with 1 s scrape and evaluation intervals. The scrape
target carries the labels a PodMonitor would give the tracer's own pod (namespace, pod) and
keeps the tracer's labels (honor_labels: true), as docs/alerting.md asks.

Pod names come from the tracer's Kubernetes enrichment (`--kube apiserver`) against
tests/fake_kube.py, a local server speaking the API server's documented PodList and watch
shapes (no API server can run here); it knows the first cgroup as pod alerts-test/reader-0.
pod_uid stays out of the metric labels by design: the alerts name namespace/pod (and vm,
empty here), and the tracer's events for the same cgroup carry the pod_uid. Other OOMs on this
machine while the test runs carry other labels, so every assertion selects this pod's series.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.alerting import dashboard as grafana
from tests.alerting.prometheus import PrometheusServer
from tests.alerting.rules import TIME_SCALE, scaled_rules
from tests.fake_kube import kubeconfig, pod, running
from tests.kernel.conftest import Tracer
from tracer.cli.sandbox import PodSandbox

MIB = 1 << 20
LIMIT_BYTES = 64 * MIB
FILE_BYTES = 3 * LIMIT_BYTES
PRE_OOM_ALERT = "OomtraceNearOomReclaim"
NODE = "node-1"
# What the (fake) API server says about the first cgroup's pod.
POD = {"namespace": "alerts-test", "pod": "reader-0"}
CONTAINER = "app"
OOM_ALERTS = ("OomtraceOomKill", "OomtraceVmOomKill", "OomtraceMemcgOom")
# The target labels prometheus-operator's PodMonitor gives every series of the tracer's pod.
TRACER_POD = {"namespace": "oomtrace", "pod": "oomtrace-x7k2p"}
# Grafana's interval variables for a Prometheus that holds about a minute of 1 s samples.
# The namespace and pod variables select the test's pod, as a user would in Grafana.
DASHBOARD_VALUES = {
    "__rate_interval": "5s",
    "__interval": "2s",
    "__range": "5m",
    "job": "oomtrace",
    "namespace": POD["namespace"],
    "pod": POD["pod"],
    "vm": grafana.ALL,
    "kind": ".+",
}

# Runs in the cgroup: reads the file again and again through the page cache, in 1 MiB reads
# into one buffer, so its own anonymous memory stays a few MiB and only page cache grows.
READER = r"""
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"oomtrace-reader", 0, 0, 0)
buf = bytearray(1 << 20)
while True:
    with open(sys.argv[1], "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
"""


@dataclass
class Scenario:
    """What the module's one run observed; each test asserts on part of it."""

    tracer: Tracer
    instance: str
    pod_uid: str = ""
    container_path: str = ""
    alert_log: list[tuple[str, float, list[dict[str, Any]]]] = field(default_factory=list)
    rule_errors: set[str] = field(default_factory=set)
    pre_oom: dict[str, Any] | None = None
    reader_alive_at_pre_oom: bool = False
    cgroup_oom_kills_at_pre_oom: int = -1
    victim_pid: int = 0
    oom_kill: dict[str, Any] | None = None
    unnamed_victim_pid: int = 0
    unnamed_oom_kill: dict[str, Any] | None = None
    # Metric names of this tracer's series that carry the tracer pod's own pod label.
    tracer_pod_labelled: set[str] = field(default_factory=set)
    dashboard: dict[str, list[dict[str, Any]] | str] = field(default_factory=dict)
    oom_timeline_max: float = 0.0
    tracer_exit: int | None = None
    scrape_health: dict[str, float] = field(default_factory=dict)
    down: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def alerts_in(self, phase: str) -> list[dict[str, Any]]:
        return [a for p, _t, alerts in self.alert_log if p == phase for a in alerts]

    def events_of(self, kind: str, container_path: str) -> list[dict[str, Any]]:
        key = "memcg" if kind == "near_oom" else "task_memcg"
        return [e for e in self.tracer.events if e["event"] == kind and e[key] == container_path]

    def last_alerts(self) -> str:
        return repr(self.alert_log[-1][2]) if self.alert_log else "no alert snapshot"


def _fs_type(path: Path) -> str:
    """The type of the filesystem `path` is on (longest mount point prefix in /proc/mounts)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        mount, fs = line.split()[1:3]
        if str(path).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
            best, kind = mount, fs
    return kind


def _page_cache_file(directory: Path) -> Path:
    """A file on disk larger than the limit, evicted from the page cache after writing, so the
    reader charges every page it reads to its own cgroup."""
    path = directory / "reclaim-me.bin"
    fs = _fs_type(path)
    assert fs not in ("tmpfs", "ramfs", ""), (
        f"{directory} is on {fs or '?'}: reads would charge no page cache"
    )
    chunk = os.urandom(MIB)
    with path.open("wb") as f:
        for _ in range(FILE_BYTES // MIB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def _spawn_reader(pod: PodSandbox, path: Path) -> subprocess.Popen[bytes]:
    procs = [pod.dir(pod.container_path, root) / "cgroup.procs" for root in pod.roots]

    def enter() -> None:  # moved in before it reads anything
        for p in procs:
            p.write_text(str(os.getpid()))

    process = subprocess.Popen([sys.executable, "-c", READER, str(path)], preexec_fn=enter)
    pod.processes.append(process)  # PodSandbox.destroy() kills it
    return process


def _cgroup_oom_kills(pod: PodSandbox) -> int:
    """The kernel's own count of OOM kills in the container cgroup (v1 memory.oom_control,
    v2 memory.events)."""
    directory = pod.dir(pod.container_path)
    name = "memory.oom_control" if pod.v1 else "memory.events"
    for line in (directory / name).read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    raise AssertionError(f"no oom_kill line in {directory / name}")


def _wait_alert(
    prom: PrometheusServer, s: Scenario, phase: str, name: str, timeout_s: float, **labels: str | None
) -> dict[str, Any] | None:
    """Polls /api/v1/alerts until `name` fires with `labels` (None: label absent); every
    snapshot goes into s.alert_log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alerts = prom.alerts()
        s.alert_log.append((phase, time.monotonic(), alerts))
        for rule in prom.rules():
            if rule.get("health") == "err":
                s.rule_errors.add(f"{rule['name']}: {rule.get('lastError')}")
        for alert in alerts:
            have = alert["labels"]
            if (
                have.get("alertname") == name
                and alert["state"] == "firing"
                and all(have.get(k) == v for k, v in labels.items())
            ):
                return alert
        time.sleep(0.25)
    return None


def _wait_scraped(prom: PrometheusServer, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(r["value"][1] == "1" for r in prom.query('up{job="oomtrace"}')):
            return
        time.sleep(0.25)
    raise AssertionError(f"prometheus never scraped the tracer:\n{prom.log()}")


def _run_dashboard_queries(prom: PrometheusServer, s: Scenario, started: float) -> None:
    for query in grafana.queries(grafana.load()):
        if query.datasource != "prometheus":
            continue
        expr = grafana.substitute(query.expr, DASHBOARD_VALUES)
        try:
            s.dashboard[query.where] = prom.query(expr)
        except AssertionError as err:
            s.dashboard[query.where] = str(err)
    # The OOM timeline over the whole run, one point a second, as Grafana would draw it.
    timeline = next(q for q in grafana.queries(grafana.load()) if q.where.startswith("OOM kills, by pod"))
    expr = grafana.substitute(timeline.expr, {**DASHBOARD_VALUES, "__interval": "1s"})
    series = prom.query_range(expr, started, time.time(), "1s")
    s.oom_timeline_max = max((float(v) for r in series for _t, v in r["values"]), default=0.0)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    workdir = tmp_path_factory.mktemp("prometheus-alerts")
    t0 = time.monotonic()
    data = _page_cache_file(workdir)
    named = PodSandbox(limit_bytes=LIMIT_BYTES)
    unnamed = PodSandbox(limit_bytes=LIMIT_BYTES)
    tracer: Tracer | None = None
    prom: PrometheusServer | None = None
    with running() as api:
        api.add(pod(named.pod_uid, POD["pod"], POD["namespace"], NODE, {CONTAINER: named.container_id}))
        config = kubeconfig(workdir / "kubeconfig", api.url, api.token)
        try:
            tracer = Tracer(
                "--interval", "0.5", "--node-name", NODE, "--kube", "apiserver", "--kubeconfig", str(config)
            )  # fmt: skip
            s = Scenario(tracer=tracer, instance=f"127.0.0.1:{tracer.metrics_port}")
            prom = PrometheusServer(
                workdir / "prometheus", scaled_rules(TIME_SCALE), {s.instance: TRACER_POD}, interval_s=1.0
            )
            named.create()
            unnamed.create()
            _wait_scraped(prom)
            started = time.time()
            s.seconds["setup"] = time.monotonic() - t0
            s.pod_uid, s.container_path = named.pod_uid, named.container_path

            t = time.monotonic()
            reader = _spawn_reader(named, data)
            s.pre_oom = _wait_alert(prom, s, "pre-oom", PRE_OOM_ALERT, 45, **POD)
            s.reader_alive_at_pre_oom = reader.poll() is None
            s.cgroup_oom_kills_at_pre_oom = _cgroup_oom_kills(named)
            s.seconds["pre-oom"] = time.monotonic() - t

            t = time.monotonic()
            allocator = named.spawn("oomtrace-alloc", total_mib=4 * LIMIT_BYTES // MIB)
            if allocator.wait(timeout=60) == -9:
                s.victim_pid = allocator.pid
                s.oom_kill = _wait_alert(prom, s, "oom", "OomtraceOomKill", 30, **POD)
            s.seconds["oom"] = time.monotonic() - t

            t = time.monotonic()
            allocator = unnamed.spawn("oomtrace-alloc", total_mib=4 * LIMIT_BYTES // MIB)
            if allocator.wait(timeout=60) == -9:
                s.unnamed_victim_pid = allocator.pid
                s.unnamed_oom_kill = _wait_alert(
                    prom, s, "unnamed-oom", "OomtraceOomKill", 30, namespace=None, pod=None
                )
            labelled = prom.query(
                f'count by (__name__) ({{instance="{s.instance}", pod="{TRACER_POD["pod"]}"}})'
            )
            s.tracer_pod_labelled = {r["metric"]["__name__"] for r in labelled}
            s.seconds["unnamed-oom"] = time.monotonic() - t

            inst = f'instance="{s.instance}"'
            for name, expr in {
                "min_up": f"min_over_time(up{{{inst}}}[5m])",
                "max_scrape_s": f"max_over_time(scrape_duration_seconds{{{inst}}}[5m])",
            }.items():
                s.scrape_health[name] = float(prom.query(expr)[0]["value"][1])
            t = time.monotonic()
            _run_dashboard_queries(prom, s, started)
            s.seconds["dashboard"] = time.monotonic() - t

            t = time.monotonic()
            named.destroy()
            unnamed.destroy()
            s.tracer_exit = tracer.stop()
            s.down = _wait_alert(prom, s, "down", "OomtraceDown", 30)
            s.seconds["down"] = time.monotonic() - t
            s.seconds["total"] = time.monotonic() - t0
            yield s
        finally:
            named.destroy()
            unnamed.destroy()
            if tracer is not None:
                tracer.stop()
            if prom is not None:
                prom.close()
            data.unlink()  # 192 MiB that pytest would otherwise keep with its last temp dirs


def _about_pod(alert: dict[str, Any]) -> bool:
    return all(alert["labels"].get(k) == v for k, v in POD.items())


def test_a_cgroup_held_at_its_limit_by_page_cache_reclaim_fires_the_pre_oom_alert_and_no_oom_alert(
    scenario: Scenario,
) -> None:
    s = scenario
    assert s.pre_oom is not None, f"{PRE_OOM_ALERT} never fired for {POD}; last alerts: {s.last_alerts()}"
    assert float(s.pre_oom["value"]) > 1  # reclaims per second, the rule's threshold
    # Nothing died: the reader still runs and the kernel counted no OOM kill in its cgroup.
    assert s.reader_alive_at_pre_oom
    assert s.cgroup_oom_kills_at_pre_oom == 0
    oom_alerts = [
        a for a in s.alerts_in("pre-oom") if a["labels"]["alertname"] in OOM_ALERTS and _about_pod(a)
    ]
    assert oom_alerts == [], "an OOM alert for the pod was pending or firing while nothing was OOM-killed"
    # The tracer's near_oom events for that cgroup are what the counters summed.
    near = s.events_of("near_oom", s.container_path)
    assert near and sum(e["reclaim_calls"] or 0 for e in near) > 10


def test_an_oom_kill_in_the_same_cgroup_then_fires_the_oom_kill_alert(scenario: Scenario) -> None:
    s = scenario
    assert s.victim_pid, "the allocator was not OOM-killed"
    assert s.oom_kill is not None, f"OomtraceOomKill never fired for {POD}; last alerts: {s.last_alerts()}"
    assert float(s.oom_kill["value"]) == 1  # one kill, counted from its new series
    [kill] = s.events_of("oom_kill", s.container_path)
    assert (kill["victim_pid"], kill["victim_comm"]) == (s.victim_pid, "oomtrace-alloc")


def test_the_alerts_carry_the_pod_labels_and_render_their_annotations(scenario: Scenario) -> None:
    s = scenario
    assert s.pre_oom is not None and s.oom_kill is not None
    # The tracer's pod labels, not the tracer pod's target labels; container summed away.
    base = {"job": "oomtrace", "instance": s.instance, "severity": "warning", **POD}
    assert s.pre_oom["labels"] == {**base, "alertname": PRE_OOM_ALERT}
    assert s.oom_kill["labels"] == {**base, "alertname": "OomtraceOomKill"}

    who = f"Pod {POD['namespace']}/{POD['pod']} on {s.instance}"
    pre = s.pre_oom["annotations"]
    assert pre["summary"] == f"{who} has been reclaiming at its memory limit for 10 minutes"
    assert pre["description"].startswith(f"{who} hit its memory cgroup limit and made the kernel reclaim ")
    assert "{{" not in pre["description"] and "<no value>" not in pre["description"]
    oom = s.oom_kill["annotations"]
    assert oom["summary"] == f"{who} had a process OOM-killed"
    assert oom["description"].startswith(
        f"The kernel's OOM killer killed a process in pod {POD['namespace']}/{POD['pod']} on {s.instance} "
        "in the last 10 minutes (kills: about 1)."
    )


def test_an_oom_in_a_cgroup_no_pod_list_names_alerts_without_pod_labels_and_no_tracer_pod_label_leaks(
    scenario: Scenario,
) -> None:
    s = scenario
    assert s.unnamed_victim_pid, "the second allocator was not OOM-killed"
    assert s.unnamed_oom_kill is not None, f"no unnamed OomtraceOomKill; last alerts: {s.last_alerts()}"
    # Empty namespace/pod are dropped by Prometheus; with honor_labels the target's
    # namespace=oomtrace, pod=oomtrace-x7k2p must not fill them.
    assert s.unnamed_oom_kill["labels"] == {
        "alertname": "OomtraceOomKill",
        "severity": "warning",
        "job": "oomtrace",
        "instance": s.instance,
    }
    summary = s.unnamed_oom_kill["annotations"]["summary"]
    assert summary == f"A cgroup without a pod name on {s.instance} had a process OOM-killed"
    kill = s.tracer.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == s.unnamed_victim_pid)
    assert kill["pod_uid"] and kill["namespace"] is None and kill["pod"] is None
    # The tracer pod's identity is on the tracer's own series only, never on a per-pod one.
    assert "oomtrace_events_total" in s.tracer_pod_labelled
    assert not {m for m in s.tracer_pod_labelled if m.startswith(("oomtrace_oom_", "oomtrace_near_oom_"))}


def test_the_tracer_events_behind_the_alerts_name_the_pod_by_uid_and_by_name(scenario: Scenario) -> None:
    """pod_uid is deliberately not a metric label (unbounded): the events carry it."""
    s = scenario
    events = s.events_of("near_oom", s.container_path) + s.events_of("oom_kill", s.container_path)
    assert events
    assert {(e["pod_uid"], e["namespace"], e["pod"], e["container"]) for e in events} == {
        (s.pod_uid, POD["namespace"], POD["pod"], CONTAINER)
    }


def test_every_rule_evaluates_without_error_in_the_real_prometheus(scenario: Scenario) -> None:
    assert scenario.alert_log, "no rule was ever evaluated"
    assert scenario.rule_errors == set()


def test_every_dashboard_query_runs_in_the_real_prometheus_and_the_pod_panels_show_the_oom(
    scenario: Scenario,
) -> None:
    s = scenario
    errors = {where: result for where, result in s.dashboard.items() if isinstance(result, str)}
    assert errors == {}
    assert len(s.dashboard) >= 15

    def values(where: str) -> list[float]:
        result = s.dashboard[where]
        assert not isinstance(result, str)
        return [float(r["value"][1]) for r in result]

    # Node-wide: at least the two kills of this test (other tests' OOMs may add to it).
    assert values("OOM kills / A")[0] >= 2
    assert values("Tracers down / A") == [0.0]
    assert values("Events lost / A") == [0.0]
    # Selected pod: its reclaim, and its one kill once on the timeline though its series began at 1.
    assert max(values("Memcg reclaims per second, by pod / A")) > 1
    assert values("Pods near OOM now / A") == [1.0]
    assert s.oom_timeline_max == 1.0
    probes = s.dashboard["Probe tiers / A"]
    assert not isinstance(probes, str)
    assert {(r["metric"]["probe"], r["metric"]["tier"]) for r in probes} >= {("oom_kill", "tracepoint")}


def test_stopping_the_tracer_fires_the_tracer_down_alert_naming_the_tracer_pod(scenario: Scenario) -> None:
    s = scenario
    assert s.tracer_exit == 0, "".join(s.tracer.stderr_lines)
    # Until it stopped, every scrape succeeded: the alert below is the stop's doing.
    assert s.scrape_health["min_up"] == 1, s.scrape_health
    assert not [
        a
        for p in ("pre-oom", "oom", "unnamed-oom")
        for a in s.alerts_in(p)
        if a["labels"]["alertname"] == "OomtraceDown"
    ]
    assert s.down is not None, f"OomtraceDown never fired; last alerts: {s.last_alerts()}"
    assert s.down["labels"] == {
        "alertname": "OomtraceDown",
        "severity": "warning",
        "job": "oomtrace",
        "instance": s.instance,
        **TRACER_POD,
    }
    summary = s.down["annotations"]["summary"]
    assert summary == f"oomtrace on {s.instance} (pod oomtrace/oomtrace-x7k2p) is down"


def test_the_whole_scenario_stays_within_its_ci_budget(scenario: Scenario) -> None:
    """About 35 s on the 2-core development VM (setup 13, pre-OOM 13, OOMs 2, tracer down 7)."""
    assert scenario.seconds["total"] < 90, scenario.seconds
