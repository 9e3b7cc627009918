"""The image, run as deploy/daemonset.yaml runs it, on this kernel: real probes, a real OOM.

scripts/build-rootfs.sh builds the Dockerfile's root filesystem without Docker (cached under
.cache/rootfs; rebuilt only when its inputs change: about 2 minutes cold, seconds warm).
tests/deploy/container.py runs commands in it with the DaemonSet's mounts, capabilities,
read-only root and containerd's RuntimeDefault seccomp profile. The pod cgroup is created
from outside, on the host, as a kubelet would; the kernel's own report from /dev/kmsg is
the oracle, read on the host too.
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import manifests
from tests.fake_kube import FakeKube, pod
from tests.kernel.conftest import KernelLog, wait_for_event
from tests.kernel.test_oom_events import MIB, VICTIM_FIELDS
from tracer.cli.sandbox import PodSandbox

REPO = Path(__file__).resolve().parents[2]
NODE = "node-under-test"
PROMETHEUS = "system:serviceaccount:monitoring:prometheus-k8s"
REVIEWS = {
    "/apis/authentication.k8s.io/v1/tokenreviews",
    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
}


def http_get(port: int, path: str, token: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def image() -> Path:
    started = time.monotonic()
    result = subprocess.run(
        [str(REPO / "scripts/build-rootfs.sh")], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    print(f"rootfs ready in {time.monotonic() - started:.0f} s: {path}")
    return path


class Container:
    """One command in the image, as the DaemonSet's container (tests/deploy/container.py)."""

    def __init__(
        self,
        image: Path,
        argv: list[str],
        caps: list[str] | None = None,
        env: dict[str, str] | None = None,
        service_account: Path | None = None,
    ) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="oomtrace-container-"))
        cmd = [sys.executable, "-m", "tests.deploy.container", "--image", str(image),
               "--scratch", str(self.scratch), "--node-name", NODE]  # fmt: skip
        if caps is not None:
            cmd += ["--caps", ",".join(caps)]
        if service_account is not None:
            cmd += ["--service-account", str(service_account)]
        for name, value in (env or {}).items():
            cmd += ["--env", f"{name}={value}"]
        self.process = subprocess.Popen(
            [*cmd, "--", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def result(self, timeout_s: float = 120) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout_s)
        self.cleanup()
        return self.process.returncode, out, err

    def cleanup(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        # The mount namespace died with the process: what is left is an empty directory.
        shutil.rmtree(self.scratch, ignore_errors=True)


def run_in_image(image: Path, argv: list[str], caps: list[str] | None = None) -> tuple[int, str, str]:
    return Container(image, argv, caps).result()


class Daemon(Container):
    """`oomtrace run` in the image, with the manifest's args and env; stdout events collected."""

    def __init__(self, image: Path, caps: list[str] | None = None, **kwargs: Any) -> None:
        env = {"OOMTRACE_METRICS_ADDRESS": "127.0.0.1:0", "OOMTRACE_INTERVAL": "0.5", **kwargs.pop("env", {})}
        super().__init__(image, ["oomtrace", *manifests.container()["args"]], caps, env, **kwargs)
        self.events: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.raw_stderr: list[str] = []
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.port = 0

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            self.events.append(event)
            self._events.put(event)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.raw_stderr.append(line)
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            self.log.append(record)
            if record.get("msg") == "serving /metrics and /healthz":
                self.port = record["port"]
            if record.get("msg") == "tracing":
                self._ready.set()

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                raise AssertionError("oomtrace did not start in the image:\n" + "".join(self.raw_stderr))

    def wait_for(self, predicate: Any, timeout_s: float = 15) -> dict[str, Any]:
        return wait_for_event(self.events, self._events, predicate, timeout_s)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.cleanup()
        return code


@pytest.fixture
def fake_apiserver(tmp_path: Path) -> Iterator[tuple[FakeKube, Path]]:
    """An API server on loopback and the service-account directory a pod would get for it."""
    tls = tmp_path / "tls"
    tls.mkdir()
    fake = FakeKube(token="sa-token", tls_dir=tls).start()
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token")
    assert fake.ca_file is not None
    shutil.copy(fake.ca_file, account / "ca.crt")
    (account / "namespace").write_text("oomtrace")
    try:
        yield fake, account
    finally:
        fake.close()


def test_oomtrace_probes_in_the_image_finds_btf_and_compiles_against_the_image_header_tree(
    image: Path,
) -> None:
    code, out, err = run_in_image(image, ["oomtrace", "probes", "--json"])

    assert code == 0, err
    report = json.loads(out)
    assert report["kernel"] == os.uname().release
    assert report["btf"] is True
    # This kernel has no headers anywhere: the tree shipped in the image is what bcc gets.
    assert report["headers"] == "BCC_KERNEL_SOURCE (/opt/oomtrace/kernel-headers); struct offsets from BTF"
    tiers = {p["probe"]: p["tier"] for p in report["probes"]}
    assert tiers["oom_kill"] != "unavailable" and tiers["near_oom"] != "unavailable"


def test_daemonset_container_traces_a_real_oom_named_by_the_api_server_and_agreeing_with_the_kernel(
    image: Path, kernel_log: KernelLog, fake_apiserver: tuple[FakeKube, Path]
) -> None:
    fake, account = fake_apiserver
    port = fake.server.server_address[1]
    # As on a real node, oomtrace's own pod is there before it starts.
    fake.add(pod("0f0e0d0c-0000-4000-8000-000000000001", "oomtrace-x7k2p", namespace="oomtrace", node=NODE,
                 containers={"oomtrace": "ab" * 32}))  # fmt: skip
    # Prometheus's token, allowed /metrics by the oomtrace-reader role; another pod's, allowed nothing.
    fake.user("prometheus-token", PROMETHEUS, ("system:serviceaccounts",))
    fake.grant(PROMETHEUS, "/metrics")
    fake.user("nosy-token", "system:serviceaccount:shop:default", ("system:serviceaccounts",))
    daemon = Daemon(
        image,
        env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)},
        service_account=account,
    )
    try:
        daemon.wait_ready()
        # The manifest's default: kubelet's probes get /healthz, nobody gets /metrics or /events
        # without a token the API server allows.
        assert http_get(daemon.port, "/healthz") == 200
        assert http_get(daemon.port, "/metrics") == 401
        assert http_get(daemon.port, "/events") == 401
        assert http_get(daemon.port, "/metrics", "nosy-token") == 403
        assert http_get(daemon.port, "/metrics", "prometheus-token") == 200
        with PodSandbox(limit_bytes=64 * MIB) as sandbox:
            fake.add(
                pod(
                    sandbox.pod_uid,
                    "shop-7d9f",
                    namespace="shop",
                    node=NODE,
                    containers={"cart": sandbox.container_id},
                )
            )
            allocator = sandbox.spawn("oomtrace-image", total_mib=256)
            assert allocator.wait(timeout=60) == -9, "the allocator was not OOM-killed"
            ours = daemon.wait_for(lambda e: e["event"] == "oom_kill" and e["victim_pid"] == allocator.pid)
            kernels = kernel_log.kill_of(allocator.pid)
    finally:
        code = daemon.stop()

    assert code == 0, "".join(daemon.raw_stderr)
    # "Killed process" is never rate-limited; the oom-kill: summary with task_memcg is (10 per
    # 5 s, and other tests OOM too): compare it when the kernel printed it.
    fields = [f for f in VICTIM_FIELDS if f != "task_memcg" or kernels["task_memcg"] is not None]
    assert {f: ours[f] for f in fields} == {f: kernels[f] for f in fields}
    assert ours["task_memcg"] == sandbox.container_path
    assert ours["node"] == NODE  # NODE_NAME from the downward API
    assert ours["pod_uid"] == sandbox.pod_uid
    assert (ours["namespace"], ours["pod"], ours["container"]) == ("shop", "shop-7d9f", "cart")
    # What the ClusterRole grants is all it used: read pods; create (and patch) Events; create
    # token and access reviews.
    reads = [r for r in fake.requests if r["path"] == "/api/v1/pods"]
    reviews = [r for r in fake.requests if r["path"] in REVIEWS]
    writes = [r for r in fake.requests if r["path"] != "/api/v1/pods" and r not in reviews]
    assert reads and all(r["query"].get("fieldSelector") == f"spec.nodeName={NODE}" for r in reads)
    assert {r["path"] for r in reviews} == REVIEWS and all(r["verb"] == "create" for r in reviews)
    events = "/apis/events.k8s.io/v1/namespaces/shop/events"
    assert all(r["path"].startswith(events) and r["verb"] in ("create", "patch") for r in writes), writes
    [event] = fake.events_about("Pod", "shop-7d9f")  # the kill, as a Kubernetes Event on the pod
    assert event["reason"] == "OOMKilled" and event["reportingInstance"] == NODE
    assert not [r for r in daemon.log if r.get("level") == "error"], daemon.log


def test_root_filesystem_and_host_mounts_are_read_only_inside_the_container(image: Path) -> None:
    probe = (
        "import errno, json, os, sys\n"
        "results = {}\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "        os.close(fd)\n"
        "        results[path] = 'writable'\n"
        "    except OSError as err:\n"
        "        results[path] = errno.errorcode[err.errno]\n"
        "print(json.dumps(results))\n"
    )
    with PodSandbox(limit_bytes=64 * MIB) as sandbox:
        limit_file = f"{sandbox.memory_root}/{sandbox.container_path.lstrip('/')}/memory.limit_in_bytes"
        if not sandbox.v1:
            limit_file = f"{sandbox.memory_root}/{sandbox.container_path.lstrip('/')}/memory.max"
        paths = ["/opt/oomtrace/written", "/etc/written", limit_file, "/sys/kernel/tracing/tracing_on",
                 "/tmp/written", "/var/cache/oomtrace/written"]  # fmt: skip
        code, out, err = run_in_image(image, ["python3", "-c", probe, *paths])

    assert code == 0, err
    results = json.loads(out)
    assert results == {
        "/opt/oomtrace/written": "EROFS",  # readOnlyRootFilesystem
        "/etc/written": "EROFS",
        limit_file: "EROFS",  # the cgroup hierarchy, recursively read-only
        "/sys/kernel/tracing/tracing_on": "EROFS",
        "/tmp/written": "writable",  # emptyDirs
        "/var/cache/oomtrace/written": "writable",
    }


@pytest.mark.parametrize("missing", ["BPF", "PERFMON"])
def test_without_each_bpf_capability_of_the_manifest_the_probes_do_not_load(
    image: Path, missing: str
) -> None:
    caps = [c for c in manifests.added_capabilities() if c != missing]
    # No API server needed here, so nothing that asks one.
    env = {"OOMTRACE_KUBE": "none", "OOMTRACE_KUBE_EVENTS": "0", "OOMTRACE_HTTP_AUTH": "none"}
    daemon = Daemon(image, caps=caps, env=env)
    code = daemon.process.wait(timeout=90)
    daemon.cleanup()

    assert code == 2, "".join(daemon.raw_stderr)
    assert "cannot load BPF programs" in "".join(daemon.raw_stderr)


def test_dac_read_search_is_what_names_a_new_cgroup_at_once(image: Path) -> None:
    """open_by_handle_at() of a cgroup id, as tracer/resolve/cgroups.py does it, under the manifest's
    seccomp profile: with the manifest's capabilities, and without DAC_READ_SEARCH."""
    lookup = (
        "import sys\n"
        "from tracer.resolve.cgroups import path_by_handle\n"
        "print(path_by_handle(sys.argv[1], int(sys.argv[2])))\n"
    )
    with PodSandbox(limit_bytes=64 * MIB) as sandbox:
        directory = sandbox.dir(sandbox.container_path)
        cgroup_id = os.stat(directory).st_ino
        argv = ["python3", "-c", lookup, str(sandbox.memory_root), str(cgroup_id)]
        with_it = run_in_image(image, argv)
        without = run_in_image(
            image, argv, caps=[c for c in manifests.added_capabilities() if c != "DAC_READ_SEARCH"]
        )

    assert with_it[0] == 0 and without[0] == 0, with_it[2] + without[2]
    assert with_it[1].strip() == sandbox.container_path
    assert without[1].strip() == "None"
