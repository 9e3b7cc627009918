import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tracer import __version__
from tracer.http.address import parse_address
from tracer.http.server import MAX_REQUEST_HEAD_BYTES, HttpServer, start_http_server
from tracer.schema import MEMCG_OOM, NEAR_OOM, OOM_KILL, blank_event
from tracer.sinks.metrics import LABELS, Metrics

POD = {"namespace": "shop", "pod": "cart-7d9f", "container": "app", "vm": ""}
NO_POD = dict.fromkeys(LABELS, "")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, kernel="6.1.0-test", clock=lambda: 1700000000.5)


def event(kind: str, **fields: Any) -> dict[str, Any]:
    e = blank_event(kind)
    e.update(victim_pid=4242, trigger_pid=4242, memcg_id=77, oom_memcg_id=77, cgroup="/kubepods/x")
    e.update(fields)
    return e


def near_oom(phase: str, **fields: Any) -> dict[str, Any]:
    return event(NEAR_OOM, phase=phase, **POD, **fields)


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


# --- events ---------------------------------------------------------------------------------


def test_memcg_oom_is_counted_for_its_pod(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.write(event(MEMCG_OOM, **POD))
    metrics.write(event(MEMCG_OOM, **POD))
    assert value(registry, "oomtrace_memcg_ooms_total", POD) == 2
    assert value(registry, "oomtrace_events_total", {"event": MEMCG_OOM}) == 2


def test_oom_kill_is_counted_for_its_pod(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.write(event(OOM_KILL, **POD))
    assert value(registry, "oomtrace_oom_kills_total", POD) == 1
    assert value(registry, "oomtrace_memcg_ooms_total", POD) is None
    assert value(registry, "oomtrace_events_total", {"event": OOM_KILL}) == 1


def test_first_near_oom_counts_a_cgroup_entering_near_oom(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.write(near_oom("first", reclaim_calls=1, charge_failures=None))
    assert value(registry, "oomtrace_near_oom_events_total", POD) == 1
    assert value(registry, "oomtrace_near_oom_reclaims_total", POD) == 1
    # An unknown count is not a zero: the series is not created for it.
    assert value(registry, "oomtrace_near_oom_charge_failures_total", POD) is None
    assert value(registry, "oomtrace_events_total", {"event": NEAR_OOM}) == 1


def test_near_oom_summary_adds_its_interval_counts_without_counting_an_entry(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.write(near_oom("first", reclaim_calls=1, charge_failures=1))
    metrics.write(
        near_oom(
            "summary",
            interval_s=1.0,
            reclaim_calls=40,
            charge_failures=3,
            reclaim_time_ns=1_500_000_000,
            reclaimed_bytes=8 << 20,
        )
    )
    assert value(registry, "oomtrace_near_oom_events_total", POD) == 1
    assert value(registry, "oomtrace_near_oom_reclaims_total", POD) == 41
    assert value(registry, "oomtrace_near_oom_charge_failures_total", POD) == 4
    assert value(registry, "oomtrace_near_oom_reclaim_seconds_total", POD) == pytest.approx(1.5)
    assert value(registry, "oomtrace_near_oom_reclaimed_bytes_total", POD) == 8 << 20
    assert value(registry, "oomtrace_events_total", {"event": NEAR_OOM}) == 2


@pytest.mark.parametrize(
    "tags",
    [
        pytest.param({}, id="no-enrichment-keys"),
        pytest.param(dict.fromkeys(LABELS), id="enrichment-keys-none"),
    ],
)
def test_labels_are_empty_when_enrichment_is_unknown(
    registry: CollectorRegistry, metrics: Metrics, tags: dict[str, Any]
) -> None:
    metrics.write(event(OOM_KILL, **tags))
    assert value(registry, "oomtrace_oom_kills_total", NO_POD) == 1


def test_labels_come_from_enrichment_keys(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.write(
        event(OOM_KILL, namespace="kv", pod="virt-launcher-vm1-abcde", container="compute", vm="vm1")
    )
    labels = {"namespace": "kv", "pod": "virt-launcher-vm1-abcde", "container": "compute", "vm": "vm1"}
    assert value(registry, "oomtrace_oom_kills_total", labels) == 1


def test_event_counters_never_carry_pids_uids_or_cgroup_ids(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.write(event(MEMCG_OOM, **POD))
    metrics.write(event(OOM_KILL, victim_uid=1000, **POD))
    metrics.write(
        near_oom("summary", reclaim_calls=1, charge_failures=1, reclaim_time_ns=1, reclaimed_bytes=1)
    )
    for family in registry.collect():
        if family.name.startswith(("oomtrace_memcg", "oomtrace_oom_kills", "oomtrace_near_oom")):
            for sample in family.samples:
                assert set(sample.labels) == set(LABELS), sample


def test_every_event_kind_and_loss_reason_starts_at_zero(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    for kind in (MEMCG_OOM, OOM_KILL, NEAR_OOM):
        assert value(registry, "oomtrace_events_total", {"event": kind}) == 0
    for reason in ("ringbuf_full", "map_full", "decode_error"):
        assert value(registry, "oomtrace_events_lost_total", {"reason": reason}) == 0


def test_last_event_timestamp_is_the_time_the_event_was_observed(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    assert value(registry, "oomtrace_last_event_timestamp_seconds") == 0
    metrics.write(event(OOM_KILL))
    assert value(registry, "oomtrace_last_event_timestamp_seconds") == 1700000000.5


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"event": "oom_reaper"}, id="unknown-kind"),
        pytest.param(near_oom("middle"), id="unknown-near-oom-phase"),
        pytest.param(near_oom("summary", reclaim_calls=3, reclaimed_bytes=-1), id="negative-count"),
    ],
)
def test_malformed_event_is_rejected_and_counts_nothing(
    registry: CollectorRegistry, metrics: Metrics, bad: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        metrics.write(bad)
    assert value(registry, "oomtrace_last_event_timestamp_seconds") == 0
    assert value(registry, "oomtrace_near_oom_reclaims_total", POD) is None
    assert all(
        value(registry, "oomtrace_events_total", {"event": k}) == 0 for k in (MEMCG_OOM, OOM_KILL, NEAR_OOM)
    )


# --- losses, probes, build ------------------------------------------------------------------


def test_lost_events_are_counted_by_reason(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.lost("ringbuf_full", 3)
    metrics.lost("ringbuf_full", 2)
    metrics.lost("decode_error", 1)
    assert value(registry, "oomtrace_events_lost_total", {"reason": "ringbuf_full"}) == 5
    assert value(registry, "oomtrace_events_lost_total", {"reason": "decode_error"}) == 1
    assert value(registry, "oomtrace_events_lost_total", {"reason": "map_full"}) == 0


def test_unknown_loss_reason_is_rejected(registry: CollectorRegistry, metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="cosmic_ray"):
        metrics.lost("cosmic_ray", 1)
    assert value(registry, "oomtrace_events_lost_total", {"reason": "cosmic_ray"}) is None


def test_negative_loss_count_is_rejected(metrics: Metrics) -> None:
    with pytest.raises(ValueError):
        metrics.lost("map_full", -1)


def probe_series(registry: CollectorRegistry) -> set[tuple[str, str, str]]:
    (family,) = [f for f in registry.collect() if f.name == "oomtrace_probe_info"]
    assert all(s.value == 1 for s in family.samples)
    return {(s.labels["probe"], s.labels["tier"], s.labels["target"]) for s in family.samples}


def test_second_set_probes_replaces_the_first(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.set_probes(
        [
            ("memcg_oom", "fentry", "mem_cgroup_out_of_memory"),
            ("oom_kill", "tracepoint", "oom:mark_victim"),
            ("near_oom", "fentry", "try_to_free_mem_cgroup_pages"),
        ]
    )
    metrics.set_probes(
        [
            ("memcg_oom", "unavailable", "mem_cgroup_out_of_memory"),
            ("oom_kill", "tracepoint", "oom:mark_victim"),
            ("near_oom", "tracepoint", "vmscan:mm_vmscan_memcg_reclaim_begin"),
        ]
    )
    assert probe_series(registry) == {
        ("memcg_oom", "unavailable", "mem_cgroup_out_of_memory"),
        ("oom_kill", "tracepoint", "oom:mark_victim"),
        ("near_oom", "tracepoint", "vmscan:mm_vmscan_memcg_reclaim_begin"),
    }


def test_unknown_probe_tier_is_rejected_and_keeps_the_previous_probes(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_probes([("oom_kill", "tracepoint", "oom:mark_victim")])
    with pytest.raises(ValueError, match="uprobe"):
        metrics.set_probes([("oom_kill", "uprobe", "oom:mark_victim")])
    assert probe_series(registry) == {("oom_kill", "tracepoint", "oom:mark_victim")}


def test_build_info_carries_version_and_kernel(registry: CollectorRegistry, metrics: Metrics) -> None:
    assert value(registry, "oomtrace_build_info", {"version": __version__, "kernel": "6.1.0-test"}) == 1


def test_each_metrics_instance_uses_only_its_own_registry() -> None:
    # Two instances in one process would collide on the global registry.
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first, kernel="a").write(event(OOM_KILL))
    Metrics(second, kernel="b")
    assert value(first, "oomtrace_oom_kills_total", NO_POD) == 1
    assert value(second, "oomtrace_oom_kills_total", NO_POD) is None


# --- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("127.0.0.1:9100", ("127.0.0.1", 9100), id="ipv4"),
        pytest.param("localhost:9100", ("localhost", 9100), id="hostname"),
        pytest.param(":9100", ("", 9100), id="all-interfaces"),
        pytest.param("[::1]:9100", ("::1", 9100), id="ipv6-in-brackets"),
        pytest.param("[::]:0", ("::", 0), id="ipv6-any-ephemeral"),
        pytest.param("0.0.0.0:65535", ("0.0.0.0", 65535), id="highest-port"),
    ],
)
def test_good_address_is_split_into_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("", id="empty"),
        pytest.param("9100", id="port-without-colon"),
        pytest.param("localhost", id="host-without-port"),
        pytest.param("localhost:", id="empty-port"),
        pytest.param(":http", id="port-name"),
        pytest.param(":-1", id="negative-port"),
        pytest.param(":65536", id="port-too-high"),
        pytest.param(":123456", id="port-too-long"),
        pytest.param("::1:9100", id="ipv6-without-brackets"),
        pytest.param("[::1]", id="brackets-without-port"),
        pytest.param("[::1]9100", id="brackets-without-colon"),
        pytest.param("[127.0.0.1]:9100", id="ipv4-in-brackets"),
        pytest.param("[]:9100", id="empty-brackets"),
        pytest.param("my host:9100", id="space-in-host"),
        pytest.param("http://localhost:9100", id="url"),
    ],
)
def test_bad_address_is_a_one_line_value_error(address: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(address)
    assert "\n" not in str(info.value)
    assert repr(address) in str(info.value)


def test_unresolvable_host_is_a_value_error(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="cannot resolve"):
        start_http_server("no-such-host.invalid:0", registry, lambda: (True, "ok"))


# --- HTTP -----------------------------------------------------------------------------------


class Health:
    def __init__(self) -> None:
        self.ok, self.message = True, "probes attached"

    def __call__(self) -> tuple[bool, str]:
        return self.ok, self.message


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def server(registry: CollectorRegistry, metrics: Metrics, health: Health) -> Iterator[HttpServer]:
    with start_http_server("127.0.0.1:0", registry, health) as srv:
        yield srv


def get(srv: HttpServer, path: str, host: str = "127.0.0.1", **headers: str) -> tuple[int, str, str]:
    """(status, content type, body), for error statuses as well."""
    request = urllib.request.Request(f"http://{host}:{srv.port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read().decode()


def raw_request(srv: HttpServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: conn.recv(4096), b""))


def test_metrics_endpoint_serves_prometheus_text(server: HttpServer, metrics: Metrics) -> None:
    metrics.write(event(OOM_KILL, **POD))
    metrics.set_probes([("oom_kill", "tracepoint", "oom:mark_victim")])
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'oomtrace_oom_kills_total{container="app",namespace="shop",pod="cart-7d9f",vm=""} 1.0' in body
    for name in (
        "oomtrace_memcg_ooms_total",
        "oomtrace_near_oom_events_total",
        "oomtrace_near_oom_reclaims_total",
        "oomtrace_near_oom_charge_failures_total",
        "oomtrace_near_oom_reclaim_seconds_total",
        "oomtrace_near_oom_reclaimed_bytes_total",
        "oomtrace_events_total",
        "oomtrace_events_lost_total",
        "oomtrace_probe_info",
        "oomtrace_build_info",
        "oomtrace_last_event_timestamp_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in body, name


def test_metrics_endpoint_speaks_openmetrics_when_asked(server: HttpServer) -> None:
    status, content_type, body = get(server, "/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_healthz_answers_200_with_the_message_then_503_when_unhealthy(
    server: HttpServer, health: Health
) -> None:
    assert get(server, "/healthz") == (200, "text/plain; charset=utf-8", "probes attached\n")
    health.ok, health.message = False, "ring buffer poll stalled"
    assert get(server, "/healthz")[::2] == (503, "ring buffer poll stalled\n")


def test_healthz_is_503_when_the_health_check_raises(registry: CollectorRegistry) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    with start_http_server("127.0.0.1:0", registry, broken) as srv:
        status, _, body = get(srv, "/healthz")
    assert (status, body) == (503, "health check failed: boom\n")


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/extra", "/favicon.ico"])
def test_other_paths_are_404(server: HttpServer, path: str) -> None:
    assert get(server, path)[0] == 404


def test_query_string_does_not_change_the_route(server: HttpServer) -> None:
    assert get(server, "/healthz?verbose=1")[0] == 200


def test_oversized_request_line_is_refused(server: HttpServer) -> None:
    response = raw_request(server, b"GET /" + b"a" * MAX_REQUEST_HEAD_BYTES + b" HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 414")


def test_oversized_headers_are_refused(server: HttpServer) -> None:
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 100) for i in range(MAX_REQUEST_HEAD_BYTES // 100))
    response = raw_request(server, b"GET /metrics HTTP/1.0\r\n" + headers + b"\r\n")
    assert response.startswith(b"HTTP/1.0 431")


def test_listening_on_all_interfaces_accepts_loopback(registry: CollectorRegistry, health: Health) -> None:
    with start_http_server(":0", registry, health) as srv:
        assert get(srv, "/healthz")[0] == 200


def test_ipv6_loopback_address_is_served(registry: CollectorRegistry, health: Health) -> None:
    with start_http_server("[::1]:0", registry, health) as srv:
        assert get(srv, "/healthz", host="[::1]")[0] == 200


def test_address_in_use_is_an_os_error_naming_the_address(
    server: HttpServer, registry: CollectorRegistry
) -> None:
    address = f"127.0.0.1:{server.port}"
    with pytest.raises(OSError, match=f"cannot listen on '{address}'"):
        start_http_server(address, registry, lambda: (True, "ok"))


def test_close_stops_serving_and_can_be_called_twice(registry: CollectorRegistry, health: Health) -> None:
    srv = start_http_server("127.0.0.1:0", registry, health)
    srv.close()
    srv.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_a_vm_event_with_an_overhead_analysis_sets_the_vm_overhead_gauges() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, kernel="test")
    event = blank_event(OOM_KILL)
    event.update(namespace="default", pod="virt-launcher-vm2-x7k2p", container="compute", vm="default/vm2")
    event["overhead"] = {"non_guest_usage_bytes": 300 << 20, "overhead_budget_bytes": 353 << 20}
    metrics.write(event)
    labels = {
        "namespace": "default",
        "pod": "virt-launcher-vm2-x7k2p",
        "container": "compute",
        "vm": "default/vm2",
    }
    assert registry.get_sample_value("oomtrace_vm_non_guest_usage_bytes", labels) == 300 << 20
    assert registry.get_sample_value("oomtrace_vm_overhead_budget_bytes", labels) == 353 << 20


def test_an_event_outside_a_vm_sets_no_vm_overhead_gauge() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, kernel="test")
    event = blank_event(OOM_KILL)
    event["overhead"] = {"non_guest_usage_bytes": 1, "overhead_budget_bytes": 2}
    metrics.write(event)
    assert (
        registry.get_sample_value(
            "oomtrace_vm_overhead_budget_bytes", {"namespace": "", "pod": "", "container": "", "vm": ""}
        )
        is None
    )
