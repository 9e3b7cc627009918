"""Fuzzing every parser of outside input: no exception escapes, and garbage never yields a wrong tag.

Outside input: cgroup paths (tracer/resolve/tags.py), kernel-log lines (tracer/sources/kmsg/),
QEMU command lines (tracer/enrich/vm/qemu.py), Kubernetes JSON (tracer/enrich/kube/pods.py), configuration
from flags and the environment (tracer/cli/flags.py, tracer/cli/run.py), and what HTTP clients
send (listen addresses, /events queries).

"Never raises" is the floor; each parser also gets an oracle built from how the input was
generated, so a value that comes out must be the one that went in, or nothing:
- a valid pod/container path with one character of its pod UID or container ID changed, inserted
  or deleted yields the changed ID if it is still well-formed, else no tag — never the old one;
- a storm of OOM reports with headers dropped (the kernel's rate limit), summary lines split
  (pr_cont) and foreign lines interleaved yields one oom_kill per Killed line, and a cgroup only
  from that victim's own report;
- QEMU command lines with noise between the options parse to exactly what was put in, and no
  argument text other than the VM name leaves the parser;
- any JSON parses to a pod whose names and container IDs were in it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tracer import cli
from tracer.enrich import kube, vm
from tracer.http import address
from tracer.resolve.tags import tags_for_path
from tracer.schema import OOM_KILL
from tracer.sinks import stream
from tracer.sources.kmsg import OomReportParser, parse_kmsg_record

# CI runs the same 300 examples every time (derandomized: a red build is about the change, not
# about luck); OOMTRACE_FUZZ_EXAMPLES=5000 hunts longer, with fresh random examples.
HUNT = os.environ.get("OOMTRACE_FUZZ_EXAMPLES")
SETTINGS = settings(
    max_examples=int(HUNT or 300),
    derandomize=HUNT is None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

HEX = "0123456789abcdef"
hex_str = lambda n: st.text(HEX, min_size=n, max_size=n)  # noqa: E731
uids = st.uuids(version=4).map(str)
cids = hex_str(64)

# --- cgroup paths ------------------------------------------------------------------------------

UUID_DASH = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
UUID_UNDERSCORE = re.compile(r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}")
CID = re.compile(r"[0-9a-f]{64}")

# Outer cgroups a kubelet tree may sit in (none of them is a kubepods level).
ROOTS = ["", "/oomtrace-test-1a2b", "/kind-node.scope", "/system.slice/containerd.service/outer"]
SYSTEMD_LEAVES = {
    "containerd": "cri-containerd-{}.scope",
    "crio": "crio-{}.scope",
    "docker": "docker-{}.scope",
}
CGROUPFS_LEAVES = {None: "{}", "crio": "crio-{}", "docker": "docker-{}"}


@dataclass(frozen=True)
class PodPath:
    """A kubelet cgroup path built from its parts, with where the two IDs sit in it."""

    driver: str
    qos: str
    uid: str
    cid: str | None
    runtime: str | None
    path: str
    uid_span: tuple[int, int]  # the UID as written in the path (underscores for systemd)
    cid_span: tuple[int, int] | None

    def tags(self, uid_written: str, cid_written: str | None) -> dict[str, str | None]:
        """What the path must say when the IDs are written as given (the oracle)."""
        blank = dict.fromkeys(("pod_uid", "qos", "container_id", "runtime"))
        uid_re = UUID_UNDERSCORE if self.driver == "systemd" else UUID_DASH
        if not uid_re.fullmatch(uid_written):
            return blank
        tags = {
            "pod_uid": uid_written.replace("_", "-"),
            "qos": self.qos,
            "container_id": None,
            "runtime": None,
        }
        if cid_written is not None and CID.fullmatch(cid_written):
            tags.update(container_id=cid_written, runtime=self.runtime)
        return tags


@st.composite
def pod_paths(draw: st.DrawFn) -> PodPath:
    driver = draw(st.sampled_from(["systemd", "cgroupfs"]))
    qos = draw(st.sampled_from(["guaranteed", "burstable", "besteffort"]))
    uid = draw(uids)
    cid = draw(st.none() | cids)
    root = draw(st.sampled_from(ROOTS))
    if driver == "systemd":
        runtime = draw(st.sampled_from(sorted(SYSTEMD_LEAVES)))
        uid_written = uid.replace("-", "_")
        level = "kubepods" if qos == "guaranteed" else f"kubepods-{qos}"
        head = f"{root}/kubepods.slice/" + ("" if qos == "guaranteed" else f"kubepods-{qos}.slice/")
        head += f"{level}-pod"
        tail = ".slice"
        leaf = SYSTEMD_LEAVES[runtime]
    else:
        runtime = draw(st.sampled_from([None, "crio", "docker"]))
        uid_written = uid
        head = f"{root}/kubepods/" + ("" if qos == "guaranteed" else f"{qos}/") + "pod"
        tail = ""
        leaf = CGROUPFS_LEAVES[runtime]
    path = head + uid_written + tail
    uid_span = (len(head), len(head) + len(uid_written))
    cid_span = None
    if cid is not None:
        before, _, after = leaf.partition("{}")
        start = len(path) + 1 + len(before)
        path += "/" + before + cid + after
        cid_span = (start, start + 64)
        path += draw(st.sampled_from(["", "/init.scope", "/sub/deeper"]))  # inside the container still
    return PodPath(driver, qos, uid, cid, runtime if cid else None, path, uid_span, cid_span)


@SETTINGS
@given(pod_paths())
def test_every_well_formed_kubelet_path_yields_exactly_its_own_tags(p: PodPath) -> None:
    tags = tags_for_path(p.path)
    expected = p.tags(p.path[slice(*p.uid_span)], p.path[slice(*p.cid_span)] if p.cid_span else None)
    assert {k: tags[k] for k in expected} == expected
    assert tags["cgroup"] == p.path and tags["unit"] is None


MUTATION_CHARS = st.sampled_from(list(HEX + "ABCDEFxyz-_/. \x00\u00e9"))


@SETTINGS
@given(
    pod_paths(), st.sampled_from(["uid", "cid"]), st.sampled_from(["replace", "insert", "delete"]), st.data()
)
def test_one_character_changed_in_a_pod_or_container_id_never_yields_a_wrong_tag(
    p: PodPath, target: str, op: str, data: st.DataObject
) -> None:
    assume(target == "uid" or p.cid_span is not None)
    span = p.uid_span if target == "uid" else p.cid_span
    assert span is not None
    start, end = span
    at = data.draw(st.integers(start, end - 1 if op != "insert" else end))
    char = data.draw(MUTATION_CHARS)
    cut = 0 if op == "insert" else 1
    mutated = p.path[:at] + ("" if op == "delete" else char) + p.path[at + cut :]
    shift = len(mutated) - len(p.path)
    uid_written = mutated[p.uid_span[0] : p.uid_span[1] + (shift if target == "uid" else 0)]
    cid_written = None
    if p.cid_span is not None:
        cs, ce = p.cid_span
        cid_written = mutated[cs + (shift if target == "uid" else 0) : ce + shift]
    if "/" in (uid_written if target == "uid" else cid_written or ""):
        # The path has a new level there: the component is no longer an ID at all.
        uid_written = uid_written if target == "cid" else "/"
        cid_written = cid_written if target == "uid" else "/"
    expected = p.tags(uid_written, cid_written)
    if not mutated.isprintable() or {"", ".", ".."} & set(mutated[1:].split("/")):
        expected = dict.fromkeys(expected)  # no kernel prints such a path: nothing is tagged at all
    tags = tags_for_path(mutated)
    assert {k: tags[k] for k in expected} == expected


@SETTINGS
@given(st.text(alphabet=st.characters(blacklist_characters="kK"), max_size=200))
def test_text_that_cannot_name_kubepods_never_yields_a_pod_tag(text: str) -> None:
    tags = tags_for_path("/" + text)
    assert (tags["pod_uid"], tags["qos"], tags["container_id"], tags["runtime"]) == (None,) * 4


# --- kernel-log lines --------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    pid: int
    comm: str
    oom_memcg: str
    task_memcg: str


COMMS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=15)


@st.composite
def reports(draw: st.DrawFn) -> list[Report]:
    n = draw(st.integers(1, 25))
    pids = draw(st.lists(st.integers(2, 4_194_304), min_size=n, max_size=n, unique=True))
    out = []
    for pid in pids:
        container = draw(pod_paths()).path
        pod_level = draw(st.booleans())
        oom = container.rsplit("/", 1)[0] if pod_level and container.count("/") > 1 else container
        out.append(Report(pid, draw(COMMS), oom, container))
    return out


def _report_lines(r: Report, split_summary: bool) -> tuple[list[str], list[str]]:
    """(header lines, which the kernel rate-limits as a block; the Killed line, which it never does)."""
    header = [
        f"{r.comm} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        f"CPU: 1 UID: 0 PID: {r.pid} Comm: {r.comm} Not tainted 6.18.44 #1 PREEMPT(none)",
        "memory: usage 16384kB, limit 16384kB, failcnt 42",
        f"Memory cgroup stats for {r.oom_memcg}:",
    ]
    summary = (
        "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
        f"oom_memcg={r.oom_memcg},task_memcg={r.task_memcg},task={r.comm},pid={r.pid},uid=0"
    )
    if split_summary:  # another CPU printed between two pr_cont() parts
        cut = summary.index(",task_memcg=")
        header += [summary[:cut], summary[cut:]]
    else:
        header.append(summary)
    killed = (
        f"Memory cgroup out of memory: Killed process {r.pid} ({r.comm}) total-vm:42264kB, anon-rss:16000kB,"
        " file-rss:384kB, shmem-rss:0kB, UID:0 pgtables:120kB oom_score_adj:0"
    )
    return header, [killed]


SUMMARY_WORDS = ("Killed process", "invoked oom-killer", ",task", "memcg=", ",cpuset")
# Other printk records that may land inside a report. (A record that is itself word for word a
# pr_cont() part of an oom-kill: line, e.g. ",task_memcg=/x", cannot be told apart from one.)
FOREIGN = st.one_of(
    st.text(max_size=60).filter(lambda s: not any(k in s for k in SUMMARY_WORDS)),
    st.sampled_from(
        [
            "audit: type=1400 audit(1.2:3): apparmor=DENIED",
            "oom_reaper: reaped process 70870 (qemu-system-x86), now anon-rss:0kB, file-rss:0kB",
            ",",
            ",nodemask=0",
            "oom-kill:",
            "CPU: 0 UID: 0 PID: 1 Comm: init Not tainted",
            "memory: usage 1kB, limit 2kB, failcnt 3",
            "e1000e 0000:00:19.0 eth0: NIC Link is Up 1000 Mbps Full Duplex",
        ]
    ),
)


@SETTINGS
@given(reports(), st.data())
def test_an_oom_storm_with_rate_limited_headers_attributes_each_kill_to_its_own_cgroup_or_none(
    storm: list[Report], data: st.DataObject
) -> None:
    lines: list[str] = []
    intact = set()
    for r in storm:
        header, killed = _report_lines(r, split_summary=data.draw(st.booleans()))
        if data.draw(st.booleans()):  # dump_header() ran: not rate-limited this time
            intact.add(r.pid)
            # Other printk output may land between any two lines of the report.
            for line in header:
                lines.append(line)
                if data.draw(st.integers(0, 9)) == 0:
                    lines.append(data.draw(FOREIGN))
        lines += killed
    parser = OomReportParser()
    events = [e for i, line in enumerate(lines) for e in parser.feed(line, i)]
    kills = [e for e in events if e["event"] == OOM_KILL]
    by_pid = {r.pid: r for r in storm}
    assert sorted(e["victim_pid"] for e in kills) == sorted(by_pid)  # one per Killed line, no more
    for e in kills:
        r = by_pid[e["victim_pid"]]
        assert e["task_memcg"] in (None, r.task_memcg)
        assert e["oom_memcg"] in (None, r.oom_memcg)
        assert e["trigger_comm"] in (None, r.comm)
    for e in events:
        if e["event"] != OOM_KILL:
            assert e["oom_memcg"] in {r.oom_memcg for r in storm}


# Comms a process can give itself (prctl PR_SET_NAME: any 15 bytes but NUL) that imitate the
# kernel's own wording: the fixed text around the comm in each line, digits, brackets, commas,
# newlines (/dev/kmsg escapes them as \x0a and the reader restores them) and terminal escapes.
IMITATING_COMMS = st.lists(
    st.sampled_from(
        [
            "Killed process ", "Killed process 1", ") total-vm:", "kB, anon-rss:", " (", ")", "(",
            " invoked oom-killer: ", "gfp_mask=0xcc0(", ",pid=", ",uid=0", ",task=", "task_memcg=/",
            "oom-kill:", " Comm: ", "PID: ", "\n", "\x1b[2J", "\t", " ", ",", "=", ":", "1", "42", "x",
        ]
    ),
    min_size=1,
    max_size=6,
).map(lambda parts: "".join(parts)[:15])


@SETTINGS
@given(st.lists(IMITATING_COMMS, min_size=1, max_size=8), st.data())
def test_a_comm_that_imitates_the_kernel_log_names_only_itself(comms: list[str], data: st.DataObject) -> None:
    # Each report arrives as /dev/kmsg gives it: one record per line the kernel printed, the
    # comm's newlines inside its own record.
    storm = [Report(1000 + i, c, f"/t/pod{i}", f"/t/pod{i}/c") for i, c in enumerate(comms)]
    parser = OomReportParser()
    events = []
    for r in storm:
        header, killed = _report_lines(r, split_summary=data.draw(st.booleans()))
        for record in header + killed:
            events += parser.feed(record, 1)
    kills = [e for e in events if e["event"] == OOM_KILL]
    assert [(e["victim_pid"], e["victim_comm"]) for e in kills] == [(r.pid, r.comm) for r in storm]
    for e, r in zip(kills, storm, strict=True):
        assert e["task_memcg"] == r.task_memcg and e["oom_memcg"] == r.oom_memcg
        assert e["trigger_comm"] in (None, r.comm)


@SETTINGS
@given(st.lists(st.text(max_size=300), max_size=40))
def test_any_kernel_log_text_parses_without_raising(lines: list[str]) -> None:
    parser = OomReportParser()
    for i, line in enumerate(lines):
        parser.feed(line, i)
        parser.feed(line, None)


@SETTINGS
@given(st.binary(max_size=600))
def test_any_dev_kmsg_record_bytes_parse_without_raising(raw: bytes) -> None:
    record = parse_kmsg_record(raw)
    assert record is None or (record[0] >= 0 and record[1] >= 0 and isinstance(record[2], str))


# --- QEMU command lines ------------------------------------------------------------------------

DNS_LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
SECRET = "s3cr3t-f00-marker"
# Noise that is not an option (QEMU arguments after the binary come in -opt value pairs).
NOISE = st.one_of(
    st.text(max_size=20).filter(lambda s: not s.startswith("-")),
    st.just(f"password={SECRET}"),
    st.just(f"file=/var/lib/{SECRET}.qcow2,secret={SECRET}"),
)


@st.composite
def qemu_lines(draw: st.DrawFn) -> tuple[bytes, str, int, int]:
    namespace, name = draw(DNS_LABEL), draw(DNS_LABEL)
    mib = draw(st.integers(1, 1 << 20))
    vcpus = draw(st.integers(1, 512))
    memory = draw(st.sampled_from([str(mib), f"{mib}M", f"size={mib * 1024}k", f"{mib}m,slots=4,maxmem=4T"]))
    smp = draw(st.sampled_from([str(vcpus), f"{vcpus},sockets=1,cores={vcpus},threads=1", f"cpus={vcpus}"]))
    options = [
        ["-name", f"guest={namespace}_{name},debug-threads=on"],
        ["-m", memory],
        ["-smp", smp],
        ["-append", f"console=ttyS0 token={SECRET}"],
        ["-blockdev", f'{{"driver":"file","filename":"/{SECRET}"}}'],
    ]
    options = draw(st.permutations(options))
    argv = ["/usr/bin/qemu-system-x86_64"]
    for pair in options:
        argv += pair
        argv += draw(st.lists(NOISE, max_size=2))
    raw = b"\0".join(a.encode("utf-8", "surrogatepass") for a in argv) + b"\0"
    return raw, f"{namespace}/{name}", mib * (1 << 20), vcpus


@SETTINGS
@given(qemu_lines())
def test_a_qemu_command_line_with_noise_parses_to_exactly_its_vm_and_nothing_else_leaves(
    line: tuple[bytes, str, int, int],
) -> None:
    raw, name, memory, vcpus = line
    info = vm.parse_qemu_cmdline(raw, pid=7)
    assert (info.vm, info.guest_memory_bytes, info.vcpus) == (name, memory, vcpus)
    assert SECRET not in repr(info)


@SETTINGS
@given(
    st.lists(st.one_of(st.sampled_from(["-name", "-m", "-smp", "-object", "-numa"]), st.text(max_size=30)))
)
def test_any_qemu_argument_soup_parses_without_raising_and_names_only_a_valid_vm(args: list[str]) -> None:
    raw = b"\0".join(a.encode("utf-8", "surrogatepass") for a in ["qemu", *args])
    info = vm.parse_qemu_cmdline(raw)
    if info.vm is not None:
        namespace, _, name = info.vm.partition("/")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace) and name
        assert f"{namespace}_{name}" in raw.decode("utf-8", "replace")  # guest=<it>, or first and implied


# --- Kubernetes JSON ---------------------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "metadata", "uid", "namespace", "name", "labels", "annotations", "ownerReferences", "controller",
        "kind", "spec", "nodeName", "status", "qosClass", "containerStatuses", "initContainerStatuses",
        "ephemeralContainerStatuses", "containerID", "lastState", "terminated", "items", "resourceVersion",
        "kubevirt.io", "kubevirt.io/domain",
    ]
) | st.text(max_size=8)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12) | cids,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=40,
)


@st.composite
def near_pods(draw: st.DrawFn) -> Any:
    """A pod shaped like the API's, with any part of it replaced by arbitrary JSON."""
    cid = draw(cids)
    status = {
        "name": draw(st.text(max_size=8)),
        "containerID": draw(st.sampled_from(["containerd://", "", "x"])) + cid,
    }
    obj: dict[str, Any] = {
        "metadata": {
            "uid": draw(uids),
            "namespace": draw(st.text(max_size=8)),
            "name": draw(st.text(max_size=8)),
            "labels": draw(st.dictionaries(st.text(max_size=8), JSON, max_size=3)),
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "controller": draw(JSON)}],
        },
        "status": {"containerStatuses": [status, draw(JSON)], "qosClass": draw(JSON)},
    }
    meta, status = obj["metadata"], obj["status"]  # edited in place even if then replaced
    for path in draw(
        st.lists(st.sampled_from(["metadata", "status", "m.uid", "m.labels", "s.cs"]), max_size=2)
    ):
        if path == "m.uid":
            meta["uid"] = draw(JSON)
        elif path == "m.labels":
            meta["labels"] = draw(JSON)
        elif path == "s.cs":
            status["containerStatuses"] = draw(JSON)
        else:
            obj[path] = draw(JSON)
    return obj


def _statuses(obj: Any) -> list[tuple[Any, Any]]:
    """(name, containerID) pairs an honest reader could find, computed independently."""
    pairs = []
    status = obj.get("status") if isinstance(obj, dict) else None
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        items = status.get(key) if isinstance(status, dict) else None
        for cs in items if isinstance(items, list) else []:
            if not isinstance(cs, dict):
                continue
            pairs.append((cs.get("name"), cs.get("containerID")))
            last = cs.get("lastState")
            term = last.get("terminated") if isinstance(last, dict) else None
            if isinstance(term, dict):
                pairs.append((cs.get("name"), term.get("containerID")))
    return pairs


ALLOW = kube.Allowlist(["app", "kubevirt.io/*"])


@SETTINGS
@given(st.one_of(JSON, near_pods()))
def test_any_json_parses_to_no_pod_or_a_pod_whose_names_and_containers_were_in_it(obj: Any) -> None:
    pod = kube.parse_pod(obj, ALLOW)
    if pod is None:
        return
    meta = obj["metadata"]
    assert (pod.uid, pod.namespace, pod.name) == (meta["uid"], meta["namespace"], meta["name"])
    found = _statuses(obj)
    for cid, name in pod.containers.items():
        assert CID.fullmatch(cid)
        assert any(n == name and isinstance(c, str) and c.endswith(cid) for n, c in found)
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    for key, value in pod.labels.items():
        assert ALLOW.matches(key) and isinstance(labels.get(key), str) and labels[key].startswith(value)


@SETTINGS
@given(st.one_of(JSON, st.lists(near_pods(), max_size=3).map(lambda items: {"items": items})))
def test_any_json_as_a_pod_list_is_pods_or_a_value_error(obj: Any) -> None:
    try:
        pods, _version = kube.parse_pod_list(obj, ALLOW)
    except ValueError:
        return
    assert all(isinstance(p, kube.PodMeta) for p in pods)


# --- configuration: flags and OOMTRACE_* environment --------------------------------------------

ENV_NAMES = [
    "INTERVAL", "NEAR_OOM_QUIET", "NO_BTF", "CGROUP_ROOT", "HEADERS_CACHE", "METRICS_ADDRESS", "SOURCE",
    "DURATION", "RINGBUF_PAGES", "STREAM_REPLAY", "STREAM_MAX_CLIENTS", "STREAM_CLIENT_QUEUE", "KUBE",
    "KUBELET_URL", "LABEL_ALLOWLIST", "KUBE_DELETED_GRACE", "ENRICH_TIMEOUT_MS", "KUBEVIRT_VERSION",
    "VM_SCAN_INTERVAL", "LOKI_URL", "LOKI_TENANT", "LOKI_ENCODING", "LOKI_BATCH_BYTES", "LOKI_BATCH_WAIT",
    "LOKI_BUFFER_BYTES", "LOKI_PASSWORD",
]  # fmt: skip
VALUES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30),
    st.sampled_from(["0", "-1", "1e400", "nan", "inf", "1", "64", "3", "99999999999999999999999", ":0",
                     "[::1]:0", "127.0.0.1:99999", "kubelet", "1.2", "http://", "1MiB", "0.000000001"]),
)  # fmt: skip


class _Stop(BaseException):
    """Raised where the daemon would start: past every check of the configuration."""


@SETTINGS
@given(st.dictionaries(st.sampled_from(ENV_NAMES), VALUES, max_size=6))
def test_any_oomtrace_environment_is_accepted_or_refused_in_one_line_never_a_traceback(
    env: dict[str, str],
) -> None:
    assume(env.get("KUBE") not in ("kubelet", "apiserver"))  # those would start talking to a network
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OOMTRACE_")}
    environ.update({f"OOMTRACE_{k}": v for k, v in env.items()})
    err = io.StringIO()
    # Everything up to the root check is configuration; past it, building the daemon from it.
    with (
        mock.patch.dict("os.environ", environ, clear=True),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
        mock.patch("tracer.cli.run.require_root", lambda: None),
        mock.patch("tracer.daemon.Daemon.run", side_effect=_Stop),
    ):
        try:
            code: Any = cli.main(["run"])
        except SystemExit as exit_:
            code = exit_.code
        except _Stop:
            return  # the configuration was accepted and a daemon built from it
    lines = err.getvalue().splitlines()
    assert code == 2, err.getvalue()
    assert len(lines) == 1 and lines[0].startswith("oomtrace: error: "), err.getvalue()


@SETTINGS
@given(st.text(max_size=60))
def test_any_listen_address_parses_or_is_a_value_error(text: str) -> None:
    try:
        host, port = address.parse_address(text)
    except ValueError:
        return
    assert 0 <= port <= 65535 and not any(c.isspace() for c in host)


# --- what HTTP clients send --------------------------------------------------------------------


@SETTINGS
@given(st.text(max_size=200), st.none() | st.text(max_size=40))
def test_any_events_query_and_last_event_id_parse_or_are_a_bad_request(
    query: str, last_id: str | None
) -> None:
    try:
        stream.parse_query(query, last_id)
    except stream.QueryError as err:
        assert "\n" not in str(err).strip()


@SETTINGS
@given(st.text(max_size=200))
def test_any_accept_header_negotiates_a_known_format_or_none(accept: str) -> None:
    assert stream.negotiate(accept) in (None, stream.SSE, stream.NDJSON)


@pytest.mark.parametrize("uid", [str(uuid.UUID(int=0, version=4)), "00000000-0000-0000-0000-000000000000"])
def test_the_smallest_uuids_are_still_tagged(uid: str) -> None:
    assert tags_for_path(f"/kubepods/pod{uid}")["pod_uid"] == uid
