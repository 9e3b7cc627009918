import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracer.resolve.tags import tags_for_path
from tracer.schema import TAG_FIELDS

# From the seed's first kernel log (a Harvester VM's virt-launcher pod).
SEED_UID = "968a06fb-9ab9-4819-8caf-0392ddff3d9b"
SEED_CID = "0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d"
SEED_POD = (
    "/kubepods.slice/kubepods-burstable.slice"
    "/kubepods-burstable-pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice"
)
SEED_CONTAINER = f"{SEED_POD}/cri-containerd-{SEED_CID}.scope"

UID = "0b9e5a1c-3f2d-4e8a-9c71-2d5f6a7b8c9d"
UID_ = UID.replace("-", "_")
CID = "a" * 32 + "0123456789abcdef" * 2
INNER_UID = "11111111-2222-3333-4444-555555555555"
STATIC_UID = "3f9a2d1c8b7e6f5a4d3c2b1a09f8e7d6"  # md5 of a static pod's manifest

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
MACHINE_RE = re.compile(r"[A-Za-z0-9:_.@+-]{1,250}")


Tags = dict[str, str | None]


def tags(
    cgroup: str | None,
    pod_uid: str | None = None,
    qos: str | None = None,
    container_id: str | None = None,
    runtime: str | None = None,
    runtime_namespace: str | None = None,
    machine: str | None = None,
    unit: str | None = None,
) -> Tags:
    return {
        "cgroup": cgroup,
        "pod_uid": pod_uid,
        "qos": qos,
        "container_id": container_id,
        "runtime": runtime,
        "runtime_namespace": runtime_namespace,
        "machine": machine,
        "unit": unit,
    }


def case(path: str, id: str, **expected: str | None) -> object:
    return pytest.param(path, tags(path, **expected), id=id)


KUBERNETES = [
    case(SEED_POD, "seed oom_memcg: burstable pod, systemd", pod_uid=SEED_UID, qos="burstable"),
    case(
        SEED_CONTAINER,
        "seed task_memcg: containerd container, systemd",
        pod_uid=SEED_UID,
        qos="burstable",
        container_id=SEED_CID,
        runtime="containerd",
    ),
    case(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podef91e487_dec5_4613_800b_eb23e1a1617d.slice",
        "seed second oom_memcg: burstable pod",
        pod_uid="ef91e487-dec5-4613-800b-eb23e1a1617d",
        qos="burstable",
    ),
    # The seed's second task_memcg reads "kubepods-urstable.slice" (a transcription slip: the
    # kernel cannot print it, systemd would put that pod slice in kubepods-burstable.slice).
    # A path whose levels disagree is not trusted for any Kubernetes tag.
    case(
        "/kubepods.slice/kubepods-urstable.slice/kubepods-burstable-podef91e487_dec5_4613_800b_eb23e1a1617d.slice"
        "/cri-containerd-100093783c22a3ae1a42e21dd887b7c26eef52d56ba44c7273ef54507b6efe7c.scope",
        "seed second task_memcg with its mangled qos slice: no kubernetes tags",
    ),
    case(
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        "guaranteed containerd container, systemd",
        pod_uid=UID,
        qos="guaranteed",
        container_id=CID,
        runtime="containerd",
    ),
    case(
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope",
        "besteffort cri-o container, systemd",
        pod_uid=UID,
        qos="besteffort",
        container_id=CID,
        runtime="crio",
    ),
    case(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope",
        "cri-o conmon monitor: pod and runtime, not the container",
        pod_uid=UID,
        qos="burstable",
        runtime="crio",
    ),
    case(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope",
        "docker container, systemd",
        pod_uid=UID,
        qos="burstable",
        container_id=CID,
        runtime="docker",
    ),
    case(
        f"/kubepods.slice/kubepods-pod{UID_}.slice", "guaranteed pod, systemd", pod_uid=UID, qos="guaranteed"
    ),
    case("/kubepods.slice/kubepods-besteffort.slice", "besteffort qos cgroup, systemd", qos="besteffort"),
    case("/kubepods.slice", "kubepods slice alone: no class"),
    case(
        f"/kubepods/burstable/pod{UID}/{CID}",
        "burstable container, cgroupfs: runtime unknown",
        pod_uid=UID,
        qos="burstable",
        container_id=CID,
    ),
    case(
        f"/kubepods/pod{UID}/{CID}",
        "guaranteed container, cgroupfs",
        pod_uid=UID,
        qos="guaranteed",
        container_id=CID,
    ),
    case(
        f"/kubepods/besteffort/pod{UID}/crio-{CID}",
        "cri-o container, cgroupfs",
        pod_uid=UID,
        qos="besteffort",
        container_id=CID,
        runtime="crio",
    ),
    case(
        f"/kubepods/burstable/pod{UID}/crio-conmon-{CID}",
        "cri-o conmon monitor, cgroupfs",
        pod_uid=UID,
        qos="burstable",
        runtime="crio",
    ),
    case(
        f"/kubepods/pod{UID}/docker-{CID}",
        "docker container, cgroupfs",
        pod_uid=UID,
        qos="guaranteed",
        container_id=CID,
        runtime="docker",
    ),
    case(f"/kubepods/burstable/pod{UID}", "burstable pod, cgroupfs", pod_uid=UID, qos="burstable"),
    case("/kubepods/burstable", "burstable qos cgroup, cgroupfs", qos="burstable"),
    case("/kubepods", "kubepods alone, cgroupfs: no class"),
    case(
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
        f"kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
        "kubelet cgroup root, systemd (kind)",
        pod_uid=UID,
        qos="burstable",
        container_id=CID,
        runtime="containerd",
    ),
    case(
        f"/system.slice/docker-{'e' * 64}.scope/kubelet.slice/kubelet-kubepods.slice/"
        f"kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        "kind node seen from the host: the kubepods part wins over the outer docker scope",
        pod_uid=UID,
        qos="guaranteed",
        container_id=CID,
        runtime="containerd",
    ),
    case(
        f"/kubelet/kubepods/besteffort/pod{UID}/{CID}",
        "kubelet cgroup root, cgroupfs (k3s style)",
        pod_uid=UID,
        qos="besteffort",
        container_id=CID,
    ),
    case(
        f"/kubepods/burstable/pod{UID}/{CID}/kubelet/kubepods/pod{INNER_UID}/{'f' * 64}",
        "cluster nested in a pod: the outer pod is this node's",
        pod_uid=UID,
        qos="burstable",
        container_id=CID,
    ),
    case(
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope",
        "sub-cgroup of a container still belongs to it",
        pod_uid=UID,
        qos="guaranteed",
        container_id=CID,
        runtime="containerd",
    ),
    case(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{CID}.scope",
        "static pod: its md5 uid is not an API pod uid",
        qos="burstable",
        container_id=CID,
        runtime="containerd",
    ),
    case(
        f"/kubepods/pod{STATIC_UID}/{CID}",
        "static pod, cgroupfs",
        qos="guaranteed",
        container_id=CID,
    ),
]

NOT_KUBERNETES = [
    case("/", "root: nothing but the path"),
    case("/system.slice/foo.service", "system service", unit="foo.service"),
    case("/system.slice", "a slice is a unit too", unit="system.slice"),
    case("/user.slice/user-1000.slice/session-3.scope", "login session", unit="session-3.scope"),
    case(
        "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope",
        "user manager's app scope: innermost unit",
        unit="app-gnome-firefox-1234.scope",
    ),
    case("/system.slice/containerd.service/sub", "delegated subtree of a service", unit="containerd.service"),
    case("/init.scope", "systemd's own scope", unit="init.scope"),
    case("/oomtrace-test/c1", "ctr's /<namespace>/<id> shape: the path alone establishes nothing"),
]

# Containers and VMs that plain hosts run themselves (docs/attribution.md's table). Shapes from
# the runtimes' own cgroup code; the cgroupfs ones are also what tests/kernel/test_runtimes.py
# sees from the real runtimes here.
HOST = [
    case(f"/docker/{CID}", "docker, cgroupfs driver", container_id=CID, runtime="docker"),
    case(f"/docker/{CID}/sub", "docker container's own sub-cgroup", container_id=CID, runtime="docker"),
    case(
        f"/system.slice/docker-{CID}.scope",
        "docker, systemd driver",
        container_id=CID,
        runtime="docker",
        unit=f"docker-{CID}.scope",
    ),
    case(f"/libpod_parent/libpod-{CID}", "podman, cgroupfs manager", container_id=CID, runtime="podman"),
    case(
        f"/machine.slice/libpod-{CID}.scope/container",
        "podman, systemd manager, with its inner cgroup",
        container_id=CID,
        runtime="podman",
        unit=f"libpod-{CID}.scope",
    ),
    case(
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
        "rootless podman",
        container_id=CID,
        runtime="podman",
        unit=f"libpod-{CID}.scope",
    ),
    case(
        f"/machine.slice/libpod-conmon-{CID}.scope",
        "podman's conmon: the runtime, not the container",
        runtime="podman",
        unit=f"libpod-conmon-{CID}.scope",
    ),
    case(
        f"/system.slice/nerdctl-{CID}.scope",
        "nerdctl (containerd), systemd driver",
        container_id=CID,
        runtime="containerd",
        unit=f"nerdctl-{CID}.scope",
    ),
    case(
        r"/machine.slice/machine-qemu\x2d1\x2dharv41.scope",
        "libvirt vm scope with systemd escapes",
        runtime="libvirt",
        machine="qemu-1-harv41",
        unit=r"machine-qemu\x2d1\x2dharv41.scope",
    ),
    case(
        r"/machine.slice/machine-qemu\x2d1\x2dharv41.scope/libvirt/emulator",
        "libvirt sub-cgroup belongs to the vm scope",
        runtime="libvirt",
        machine="qemu-1-harv41",
        unit=r"machine-qemu\x2d1\x2dharv41.scope",
    ),
    case(
        "/machine/qemu-2-default_vm1.libvirt-qemu/vcpu0",
        "libvirt, cgroupfs layout (no systemd)",
        runtime="libvirt",
        machine="qemu-2-default_vm1",
    ),
    case(
        "/machine/web.libvirt-qemu", "libvirt before 6.x, cgroupfs layout", runtime="libvirt", machine="web"
    ),
    case(
        "/machine.slice/systemd-nspawn@debian.service/payload",
        "systemd-nspawn as a service",
        runtime="systemd-nspawn",
        machine="debian",
        unit="systemd-nspawn@debian.service",
    ),
    case(
        "/machine.slice/machine-debian.scope",
        "a machined machine of no known runtime (nspawn by hand): the name only",
        machine="debian",
        unit="machine-debian.scope",
    ),
    case("/qemu.slice/101.scope", "proxmox vm", runtime="proxmox", machine="101", unit="101.scope"),
    case(
        f"/docker/{CID}/kubepods/pod{UID}", "a kind node's pod: the pod wins", pod_uid=UID, qos="guaranteed"
    ),
]

# A runtime we do not know, an id that is not hex, escapes that decode to what no name holds.
FOREIGN = [
    case(f"/docker/{CID[:-1]}g", "docker id that is not hex"),
    case(f"/docker/{CID.upper()}", "docker id in upper case"),
    case(f"/libpod_parent/libpod-{CID[:-1]}", "podman id one digit short"),
    case(f"/system.slice/rkt-{CID}.scope", "a runtime we do not know", unit=f"rkt-{CID}.scope"),
    case(
        r"/machine.slice/machine-a\x1b\x5b31m.scope",
        "terminal escape in a machine name",
        unit=r"machine-a\x1b\x5b31m.scope",
    ),
    case(
        r"/machine.slice/machine-a\x2fb.scope",
        "escaped slash in a machine name",
        unit=r"machine-a\x2fb.scope",
    ),
    case(
        r"/machine.slice/machine-a\x0a.scope",
        "escaped newline in a machine name",
        unit=r"machine-a\x0a.scope",
    ),
    case("/machine.slice/machine-.scope", "empty machine name", unit="machine-.scope"),
    case(
        "/system.slice/machine-qemu-1-x.scope",
        "machine scope outside machine.slice",
        unit="machine-qemu-1-x.scope",
    ),
    case("/elsewhere/web.libvirt-qemu", "libvirt suffix outside /machine"),
    case("/qemu.slice/99.scope", "proxmox ids start at 100", unit="99.scope"),
    case("/qemu.slice/0101.scope", "proxmox id with a leading zero", unit="0101.scope"),
]

GARBAGE = [
    case(
        f"/kubepods/burstable/pod{UID}/{CID[:-1]}",
        "container id one digit short",
        pod_uid=UID,
        qos="burstable",
    ),
    case(f"/kubepods/burstable/pod{UID}/{CID}0", "container id one digit long", pod_uid=UID, qos="burstable"),
    case(f"/kubepods/burstable/pod{UID}/{'g' * 64}", "container id not hex", pod_uid=UID, qos="burstable"),
    case(
        f"/kubepods/burstable/pod{UID}/{CID.upper()}",
        "container id in capitals",
        pod_uid=UID,
        qos="burstable",
    ),
    case(
        f"/kubepods/burstable/pod{UID}/cri-containerd-{CID}.scope",
        "systemd scope under a cgroupfs pod",
        pod_uid=UID,
        qos="burstable",
    ),
    case(
        f"/kubepods.slice/kubepods-pod{UID_}.slice/{CID}",
        "bare id under a systemd pod slice",
        pod_uid=UID,
        qos="guaranteed",
    ),
    case(f"/kubepods/burstable/pod{UID[:-1]}/{CID}", "pod uid one digit short"),
    case(f"/kubepods/burstable/pod{UID.replace('-', '')}x/{CID}", "pod uid not a uuid"),
    case(f"/kubepods/burstable/pod{UID_}/{CID}", "systemd-style uid in a cgroupfs path"),
    case(f"/kubepods.slice/kubepods-pod{UID}.slice", "cgroupfs-style uid in a systemd slice"),
    case(f"/kubepods/burstable/pod{UID.upper()}", "pod uid in capitals"),
    case(f"/kubepods.slice/kubepods-burstable-pod{UID_}.slice", "burstable pod slice missing its qos slice"),
    case(
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{UID_}.slice",
        "pod slice disagrees with its qos slice",
    ),
    case(f"/kubepods/guaranteed/pod{UID}", "no guaranteed level exists"),
    case(f"/kubepods/burstable/../pod{UID}/{CID}", "dot-dot component"),
    case(f"/../kubepods/pod{UID}/{CID}", "path from inside a cgroup namespace"),
    case(f"/kubepods//pod{UID}/{CID}", "empty component"),
    case(f"/kubepods/pod{UID}/{CID}/", "trailing slash"),
    case(f"kubepods/pod{UID}/{CID}", "no leading slash"),
    case(f"/kubepods/pod{UID}/{CID}\n", "trailing newline"),
    case("/system.slice/foo.service\n", "unit with a trailing newline"),
    case("/system.slice/caf\u00e9.service", "non-ascii name is no unit: the slice is", unit="system.slice"),
    case(
        f"/kubepods/pod{UID}/{CID[:-1]}\u0664",
        "non-ascii digit in the container id",
        pod_uid=UID,
        qos="guaranteed",
    ),
    case(
        "/system.slice/" + "a" * 300 + ".service", "unit name longer than systemd allows", unit="system.slice"
    ),
    case(f"/kubepods/pod{UID}/" + "x/" * 3000 + CID, "longer than PATH_MAX"),
]


@pytest.mark.parametrize(("path", "expected"), KUBERNETES)
def test_kubernetes_cgroup_is_tagged_with_pod_and_container(path: str, expected: Tags) -> None:
    assert tags_for_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), NOT_KUBERNETES)
def test_other_cgroup_is_tagged_with_its_systemd_unit_only(path: str, expected: Tags) -> None:
    assert tags_for_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), HOST)
def test_host_runtime_cgroup_is_tagged_with_its_container_or_machine(path: str, expected: Tags) -> None:
    assert tags_for_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), FOREIGN)
def test_foreign_or_bad_host_path_yields_no_runtime_tag(path: str, expected: Tags) -> None:
    assert tags_for_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), GARBAGE)
def test_malformed_path_leaves_unprovable_tags_unset(path: str, expected: Tags) -> None:
    assert tags_for_path(path) == expected


@pytest.mark.parametrize("path", [None, ""], ids=["none", "empty"])
def test_missing_path_gives_all_tags_unset(path: str | None) -> None:
    assert tags_for_path(path) == tags(None)


def test_tags_have_exactly_the_schema_keys_in_order() -> None:
    assert tuple(tags_for_path(SEED_CONTAINER)) == TAG_FIELDS


def test_caller_may_mutate_the_result_without_poisoning_the_cache() -> None:
    first = tags_for_path(SEED_POD)
    first["pod_uid"] = "changed"
    assert tags_for_path(SEED_POD)["pod_uid"] == SEED_UID


def assert_well_formed(path: str) -> None:
    result = tags_for_path(path)
    assert tuple(result) == TAG_FIELDS
    assert result["cgroup"] in (path, None)
    assert result["pod_uid"] is None or UUID_RE.fullmatch(result["pod_uid"])
    assert result["container_id"] is None or HEX64_RE.fullmatch(result["container_id"])
    assert result["qos"] in (None, "guaranteed", "burstable", "besteffort")
    assert result["runtime"] in (
        None,
        "containerd",
        "crio",
        "docker",
        "podman",
        "libvirt",
        "systemd-nspawn",
        "proxmox",
    )
    assert result["runtime_namespace"] is None  # only the containerd state check sets it
    machine = result["machine"]
    assert machine is None or (MACHINE_RE.fullmatch(machine) and machine.isprintable())
    if result["pod_uid"] is not None:
        assert result["unit"] is None  # a pod's path is kubelet's, not a systemd unit's
    for key in ("pod_uid", "container_id", "unit"):
        value = result[key]
        assert value is None or value in path or value.replace("-", "_") in path


@given(st.text())
def test_arbitrary_text_never_raises_nor_yields_a_malformed_tag(path: str) -> None:
    assert_well_formed(path)


# Paths built from real and nearly-real components reach the deep branches that random text can't.
COMPONENTS = st.sampled_from(
    [
        "kubepods",
        "kubepods.slice",
        "kubelet.slice",
        "kubelet-kubepods.slice",
        "kubepods-burstable.slice",
        "kubepods-besteffort.slice",
        "burstable",
        "besteffort",
        f"pod{UID}",
        f"pod{UID_}",
        f"kubepods-pod{UID_}.slice",
        f"kubepods-burstable-pod{UID_}.slice",
        f"kubepods-besteffort-pod{UID[:-1]}.slice",
        f"pod{STATIC_UID}",
        CID,
        CID[:-1],
        f"cri-containerd-{CID}.scope",
        f"crio-{CID}",
        f"crio-conmon-{CID}.scope",
        f"docker-{CID}x.scope",
        "system.slice",
        "foo.service",
        "docker",
        "libpod_parent",
        f"libpod-{CID}",
        f"libpod-conmon-{CID}.scope",
        f"nerdctl-{CID}.scope",
        "machine.slice",
        "machine",
        r"machine-qemu\x2d1\x2dweb.scope",
        r"machine-a\x1b\x5b31m.scope",
        r"machine-\x2f.scope",
        "systemd-nspawn@deb.service",
        "qemu-1-web.libvirt-qemu",
        "qemu.slice",
        "101.scope",
        "..",
        "",
    ]
)


@given(st.lists(st.one_of(COMPONENTS, st.text(max_size=12)), max_size=8))
def test_assembled_paths_never_raise_nor_yield_a_malformed_tag(parts: list[str]) -> None:
    assert_well_formed("/" + "/".join(parts))
