"""Real container runtimes on this plain host: Docker, Podman and containerd (ctr), each
running a container with a 64 MiB memory limit whose allocator runs into it.

oomtrace's `oom_kill` must name the container as the runtime does (its id, the runtime, and
containerd's namespace) and agree with the kernel's own report, and the runtime's own verdict
must agree that the kernel killed it. The daemons are started by tests/kernel/runtimes.py when
not already running; images are built from a local root filesystem (no registry here).
"""

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel import runtimes
from tests.kernel.conftest import KernelLog, Tracer
from tests.kernel.runtimes import DOCKER, IMAGE, run
from tracer.cli.sandbox import remove_cgroup

LIMIT = 64 << 20
# podman's default RLIMIT_NOFILE (1048576) is above this host's hard limit, which root here
# cannot raise (no CAP_SYS_RESOURCE): runc would fail to start the container.
PODMAN_ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
CTR_NAMESPACE = "oomtrace-test"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    tar = runtimes.rootfs_tar(tmp_path_factory.mktemp("rootfs"))
    with runtimes.containerd(), runtimes.dockerd():
        run(DOCKER, "import", str(tar), IMAGE)
        run("podman", "import", str(tar), IMAGE)
        archive = tar.with_name("image.tar")
        run(DOCKER, "save", "-o", str(archive), IMAGE)
        run("ctr", "-n", CTR_NAMESPACE, "images", "import", str(archive))
        yield
    # containerd makes a cgroup per namespace (/oomtrace-test, in every hierarchy) and leaves
    # it when the namespace's last container is gone: the tests' cgroups go with the tests.
    root = Path("/sys/fs/cgroup")
    for path in [root / CTR_NAMESPACE, *root.glob(f"*/{CTR_NAMESPACE}")]:
        remove_cgroup(path)


def kill_in(tracer: Tracer, container_id: str) -> dict[str, Any]:
    return tracer.wait_for(
        lambda e: e["event"] == "oom_kill" and e["container_id"] == container_id, timeout_s=20
    )


def agrees_with_kernel(event: dict[str, Any], kernel_log: KernelLog, cgroup: str) -> None:
    kernel = kernel_log.kill_of(event["victim_pid"])
    assert event["victim_comm"] == kernel["victim_comm"] == "alloc"
    assert event["task_memcg"] == kernel["task_memcg"] == cgroup
    assert event["anon_rss_bytes"] == kernel["anon_rss_bytes"]
    assert kernel["oom_memcg"] == cgroup  # the kernel's word: the container hit its own limit
    assert event["cgroup"] == cgroup
    # The tracepoint tier cannot see which cgroup OOMed: null, never guessed.
    assert event["oom_memcg"] == (None if event["tier"] == "tracepoint" else cgroup)


def test_a_docker_container_oom_is_named_as_docker_names_it(
    images: None, tracer: Tracer, kernel_log: KernelLog
) -> None:
    name = f"oomtrace-{uuid.uuid4().hex[:8]}"
    container_id = run(
        DOCKER, "run", "-d", "--name", name, "--memory", str(LIMIT), "--memory-swap", str(LIMIT),
        "--network", "none", IMAGE, "/bin/alloc",
    )  # fmt: skip
    try:
        assert run(DOCKER, "wait", container_id, timeout=60) == "137"
        event = kill_in(tracer, container_id)
        state = json.loads(run(DOCKER, "inspect", "-f", "{{json .State}}", container_id))
        assert state["OOMKilled"] is True and state["ExitCode"] == 137
        assert (event["runtime"], event["runtime_namespace"], event["pod_uid"]) == ("docker", None, None)
        agrees_with_kernel(event, kernel_log, f"/docker/{container_id}")
        snapshot = event["memory_snapshot"]
        assert (snapshot["memcg"], snapshot["limit_bytes"]) == (f"/docker/{container_id}", LIMIT), snapshot
    finally:
        run(DOCKER, "rm", "-f", container_id, check=False)


def test_a_podman_container_oom_is_named_as_podman_names_it(
    images: None, tracer: Tracer, kernel_log: KernelLog
) -> None:
    container_id = run(
        "podman", "run", "-d", *PODMAN_ULIMITS, "--memory", str(LIMIT), "--memory-swap", str(LIMIT),
        "--network", "none", f"localhost/{IMAGE}", "/bin/alloc",
    )  # fmt: skip
    try:
        assert run("podman", "wait", container_id, timeout=60) == "137"
        event = kill_in(tracer, container_id)
        state = json.loads(run("podman", "inspect", "-f", "{{json .State}}", container_id))
        # Podman's verdict is the exit by SIGKILL. Its OOMKilled flag stays false on this host
        # (podman 4.3 / conmon 2.1.6 on cgroup v1 with the cgroupfs manager) although the kernel
        # killed the container for its limit, as its report below says: the runtime misses what
        # oomtrace sees.
        assert state["ExitCode"] == 137
        assert (event["runtime"], event["runtime_namespace"], event["pod_uid"]) == ("podman", None, None)
        agrees_with_kernel(event, kernel_log, f"/libpod_parent/libpod-{container_id}")
    finally:
        run("podman", "rm", "-f", container_id, check=False)


def test_a_ctr_container_oom_is_named_with_its_containerd_namespace(
    images: None, tracer: Tracer, kernel_log: KernelLog
) -> None:
    container_id = f"alloc-{uuid.uuid4().hex[:8]}"
    # containerd's own verdict: the /tasks/oom event it publishes for the container.
    events = subprocess.Popen(["ctr", "events"], stdout=subprocess.PIPE, text=True)
    topics: list[str] = []
    reader = threading.Thread(target=lambda: topics.extend(events.stdout or []), daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            ["ctr", "-n", CTR_NAMESPACE, "run", "--memory-limit", str(LIMIT),
             f"docker.io/{IMAGE}", container_id, "/bin/alloc"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 137, done.stderr
        event = kill_in(tracer, container_id)
        assert (event["runtime"], event["runtime_namespace"]) == ("containerd", CTR_NAMESPACE)
        agrees_with_kernel(event, kernel_log, f"/{CTR_NAMESPACE}/{container_id}")
    finally:
        events.terminate()
        events.wait(timeout=10)
        reader.join(timeout=10)
        run("ctr", "-n", CTR_NAMESPACE, "task", "rm", "-f", container_id, check=False)
        run("ctr", "-n", CTR_NAMESPACE, "containers", "rm", container_id, check=False)
    oom = [line for line in topics if " /tasks/oom " in line and f'"container_id":"{container_id}"' in line]
    assert len(oom) == 1, topics
