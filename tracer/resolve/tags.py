"""Tags derived from a cgroup path: pod, QoS class, container, runtime, systemd unit.

The input is a path as the kernel prints it in `oom_memcg=` / `task_memcg=`: relative
to its hierarchy root, with a leading "/". Both kubelet cgroup drivers are understood:

    systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _>.slice/<scope>
    cgroupfs: /kubepods/burstable/pod<uid, ->/<leaf>

with an optional kubelet cgroup root in front (`/kubelet.slice/kubelet-kubepods.slice/...`,
`/kubelet/kubepods/...`, or a whole outer container such as a kind node).

Outside Kubernetes (the plain hosts that run containers and VMs themselves), on either
cgroup driver:

    Docker          /docker/<id>                          .../docker-<id>.scope
    Podman          /libpod_parent/libpod-<id>            .../libpod-<id>.scope, libpod-conmon-<id>.scope
    containerd      (ctr's /<namespace>/<id>: tracer.resolve.containerd, it needs the runtime's state)
    nerdctl         .../nerdctl-<id>.scope
    libvirt QEMU    /machine/<name>.libvirt-qemu          /machine.slice/machine-qemu\x2d<n>\x2d<name>.scope
    nspawn          /machine.slice/systemd-nspawn@<name>.service
    Proxmox VE      /qemu.slice/<vmid>.scope

A value that cannot be established from the path is None, never a guess: when in doubt,
leave it out.
"""

import re
from functools import lru_cache
from typing import Final

from tracer.schema import TAG_FIELDS

GUARANTEED: Final = "guaranteed"
BURSTABLE: Final = "burstable"
BESTEFFORT: Final = "besteffort"

CONTAINERD: Final = "containerd"
CRIO: Final = "crio"
DOCKER: Final = "docker"
PODMAN: Final = "podman"
LIBVIRT: Final = "libvirt"
NSPAWN: Final = "systemd-nspawn"
PROXMOX: Final = "proxmox"
# Runtimes whose machines are VMs run by QEMU (the VM stage looks for QEMU in them).
HYPERVISORS: Final = frozenset((LIBVIRT, PROXMOX))

# Longer than PATH_MAX cannot come from the kernel; don't spend regex time on it.
_MAX_PATH_LEN: Final = 4096

_HEX64: Final = r"[0-9a-f]{64}"
_UUID_GROUPS: Final = (r"[0-9a-f]{8}", r"[0-9a-f]{4}", r"[0-9a-f]{4}", r"[0-9a-f]{4}", r"[0-9a-f]{12}")
_UUID_DASH: Final = re.compile("-".join(_UUID_GROUPS), re.ASCII)
# The systemd driver writes the UID's dashes as "_" ("-" separates slice levels).
_UUID_UNDERSCORE: Final = re.compile("_".join(_UUID_GROUPS), re.ASCII)
# Static pods (manifest files) get the md5 of their manifest as UID, 32 hex digits. The cgroup
# is still a pod's, but the API object (the mirror pod) has another UID, so pod_uid stays None.
_STATIC_POD_UID: Final = re.compile(r"[0-9a-f]{32}", re.ASCII)

# Characters systemd allows in unit names (anything else is \x-escaped by systemd).
_UNIT_CHARS: Final = r"[A-Za-z0-9:_.@\\-]"
_SYSTEMD_KUBEPODS: Final = re.compile(rf"(?:({_UNIT_CHARS}+)-)?kubepods\.slice", re.ASCII)
# Only unit types that own a cgroup.
_UNIT: Final = re.compile(rf"{_UNIT_CHARS}{{1,250}}\.(?:service|scope|slice|socket|mount|swap)", re.ASCII)

# Container leaves under a pod cgroup: group 1 says which runtime made it, group 2 is the id.
_SYSTEMD_SCOPE: Final = re.compile(rf"(cri-containerd|crio-conmon|crio|docker)-({_HEX64})\.scope", re.ASCII)
_CGROUPFS_LEAF: Final = re.compile(rf"(?:(crio-conmon|crio|docker)-)?({_HEX64})", re.ASCII)
_RUNTIME_BY_PREFIX: Final[dict[str | None, str | None]] = {
    "cri-containerd": CONTAINERD,
    "crio": CRIO,
    "crio-conmon": CRIO,
    "docker": DOCKER,
    # A bare id (cgroupfs driver): containerd and dockershim both name it so.
    None: None,
}


# Host runtimes, one cgroup component each: group 1 is the container id.
_HOST_CONTAINERS: Final = (
    (re.compile(rf"docker-({_HEX64})\.scope", re.ASCII), DOCKER),
    (re.compile(rf"libpod-({_HEX64})(?:\.scope)?", re.ASCII), PODMAN),
    (re.compile(rf"nerdctl-({_HEX64})\.scope", re.ASCII), CONTAINERD),
)
# Podman's per-container monitor, beside the container as CRI-O's is: the runtime, no container.
_PODMAN_CONMON: Final = re.compile(rf"libpod-conmon-{_HEX64}\.scope", re.ASCII)
# Machine names as systemd writes them in unit names (\xNN escapes) and as libvirt's cgroupfs
# layout writes them. libvirt names a QEMU machine "qemu-<domain id>-<domain name>".
_ESCAPED_NAME: Final = r"(?:[A-Za-z0-9:_.@]|\\x[0-9a-f]{2}){1,250}"
_MACHINE_SCOPE: Final = re.compile(rf"machine-({_ESCAPED_NAME})\.scope", re.ASCII)
_NSPAWN_SERVICE: Final = re.compile(rf"systemd-nspawn@({_ESCAPED_NAME})\.service", re.ASCII)
_LIBVIRT_CGROUPFS: Final = re.compile(r"([A-Za-z0-9_.+-]{1,250})\.libvirt-qemu", re.ASCII)
_LIBVIRT_QEMU_MACHINE: Final = re.compile(r"qemu-[0-9]{1,9}-.+", re.ASCII | re.DOTALL)
# Proxmox VE VM ids are 100..999999999.
_PROXMOX_SCOPE: Final = re.compile(r"([1-9][0-9]{2,8})\.scope", re.ASCII)
_ESCAPE: Final = re.compile(r"\\x([0-9a-f]{2})", re.ASCII)
# What a decoded machine name may hold: systemd's and libvirt's own name alphabets.
_MACHINE_NAME: Final = re.compile(r"[A-Za-z0-9:_.@+-]{1,250}", re.ASCII)


def tags_for_path(path: str | None) -> dict[str, str | None]:
    """The TAG_FIELDS of a cgroup path; unknown values are None. Never raises."""
    # A fresh dict per call: callers merge it into events and may mutate it.
    return dict(zip(TAG_FIELDS, _tags(path), strict=True))


@lru_cache(maxsize=4096)
def _tags(path: str | None) -> tuple[str | None, ...]:
    # Order follows TAG_FIELDS: cgroup, pod_uid, qos, container_id, runtime, runtime_namespace,
    # machine, unit.
    if not path:
        return (None,) * 8
    parts = _components(path)
    if parts is None:
        return (path,) + (None,) * 7
    k8s = _kubernetes(parts)
    if k8s is not None:
        return (path, *k8s, None, None, None)
    container_id, runtime, machine = _host(parts)
    return (path, None, None, container_id, runtime, None, machine, _unit(parts))


def _components(path: str) -> list[str] | None:
    """The path's components, or None when it cannot be a kernel-printed cgroup path."""
    if len(path) > _MAX_PATH_LEN or not path.startswith("/"):
        return None
    if path == "/":
        return []
    parts = path[1:].split("/")
    for part in parts:
        # Empty ("//" or a trailing "/"), "." and ".." never appear in a path the kernel prints;
        # ".." does appear in paths seen from inside a cgroup namespace, which are not ours to tag.
        if part in ("", ".", "..") or not part.isprintable():
            return None
    return parts


def _kubernetes(parts: list[str]) -> tuple[str | None, str | None, str | None, str | None] | None:
    """(pod_uid, qos, container_id, runtime) if the path is under kubepods, else None."""
    # The first kubepods wins: it belongs to this node's kubelet; a kubepods further down lives
    # inside one of its containers (e.g. kind nodes run as pods).
    for i, part in enumerate(parts):
        if part == "kubepods":
            return _cgroupfs_pod(parts[i + 1 :])
        m = _SYSTEMD_KUBEPODS.fullmatch(part)
        if m is not None:
            base = f"{m.group(1)}-kubepods" if m.group(1) else "kubepods"
            return _systemd_pod(base, parts[i + 1 :])
    return None


def _systemd_pod(base: str, rest: list[str]) -> tuple[str | None, str | None, str | None, str | None]:
    # systemd encodes a slice's ancestry in its name: kubepods-burstable-pod<uid>.slice can only
    # sit in kubepods-burstable.slice, so every level is checked against its parent's name.
    if not rest:
        return (None, None, None, None)
    qos = GUARANTEED
    for cls in (BURSTABLE, BESTEFFORT):
        if rest[0] == f"{base}-{cls}.slice":
            qos, base, rest = cls, f"{base}-{cls}", rest[1:]
            break
    if not rest:
        # The QoS-level cgroup itself; kubepods.slice alone is no class at all.
        return (None, None if qos == GUARANTEED else qos, None, None)
    prefix = f"{base}-pod"
    pod = rest[0]
    if not (pod.startswith(prefix) and pod.endswith(".slice")):
        return (None, None, None, None)
    raw_uid = pod[len(prefix) : -len(".slice")]
    if _UUID_UNDERSCORE.fullmatch(raw_uid):
        pod_uid: str | None = raw_uid.replace("_", "-")
    elif _STATIC_POD_UID.fullmatch(raw_uid):
        pod_uid = None
    else:
        return (None, None, None, None)
    return (pod_uid, qos, *_container(_SYSTEMD_SCOPE, rest[1:]))


def _cgroupfs_pod(rest: list[str]) -> tuple[str | None, str | None, str | None, str | None]:
    if not rest:
        return (None, None, None, None)
    qos = GUARANTEED
    if rest[0] in (BURSTABLE, BESTEFFORT):
        qos, rest = rest[0], rest[1:]
    if not rest:
        return (None, None if qos == GUARANTEED else qos, None, None)
    pod = rest[0]
    if not pod.startswith("pod"):
        return (None, None, None, None)
    raw_uid = pod[len("pod") :]
    if _UUID_DASH.fullmatch(raw_uid):
        pod_uid: str | None = raw_uid
    elif _STATIC_POD_UID.fullmatch(raw_uid):
        pod_uid = None
    else:
        return (None, None, None, None)
    return (pod_uid, qos, *_container(_CGROUPFS_LEAF, rest[1:]))


def _container(leaf: re.Pattern[str], rest: list[str]) -> tuple[str | None, str | None]:
    """(container_id, runtime) of the component below a pod cgroup."""
    # Components below the container (its own sub-cgroups) are still inside that container.
    if not rest:
        return (None, None)
    m = leaf.fullmatch(rest[0])
    if m is None:
        return (None, None)
    prefix, container_id = m.group(1), m.group(2)
    runtime = _RUNTIME_BY_PREFIX[prefix]
    if prefix == "crio-conmon":
        # CRI-O's per-container monitor: runs beside the container, not in it, so the memory
        # it uses is not the container's. Tag the runtime, not the container.
        return (None, runtime)
    return (container_id, runtime)


def _host(parts: list[str]) -> tuple[str | None, str | None, str | None]:
    """(container_id, runtime, machine) of a host runtime's container or machine, outermost first
    (a container inside a machine is the machine's: its limit is what the host set)."""
    for i, part in enumerate(parts):
        if part == "docker" and i + 1 < len(parts) and re.fullmatch(_HEX64, parts[i + 1], re.ASCII):
            return (parts[i + 1], DOCKER, None)
        for pattern, runtime in _HOST_CONTAINERS:
            m = pattern.fullmatch(part)
            if m is not None:
                return (m.group(1), runtime, None)
        if _PODMAN_CONMON.fullmatch(part):
            return (None, PODMAN, None)
        machine = _machine(part, parts[i - 1] if i else None)
        if machine is not None:
            return machine
    return (None, None, None)


def _machine(part: str, parent: str | None) -> tuple[None, str | None, str] | None:
    """(None, runtime, machine name) if `part` is a machine's cgroup, else None."""
    m = _MACHINE_SCOPE.fullmatch(part)
    if m is not None and parent == "machine.slice":
        name = _unescape(m.group(1))
        if name is None:
            return None
        # machined scopes come from libvirt (qemu-<id>-<name>) and from nspawn run by hand.
        return (None, LIBVIRT if _LIBVIRT_QEMU_MACHINE.fullmatch(name) else None, name)
    m = _NSPAWN_SERVICE.fullmatch(part)
    if m is not None and parent == "machine.slice":
        name = _unescape(m.group(1))
        return None if name is None else (None, NSPAWN, name)
    m = _LIBVIRT_CGROUPFS.fullmatch(part)
    if m is not None and parent == "machine":
        return (None, LIBVIRT, m.group(1))
    m = _PROXMOX_SCOPE.fullmatch(part)
    if m is not None and parent == "qemu.slice":
        return (None, PROXMOX, m.group(1))
    return None


def _unescape(name: str) -> str | None:
    """A systemd-escaped name decoded; None unless it decodes to a name a machine can have
    (an escaped "/", control character or terminal escape is not one)."""
    decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)
    return decoded if _MACHINE_NAME.fullmatch(decoded) else None


def _unit(parts: list[str]) -> str | None:
    """The innermost systemd unit on the path (its sub-cgroups belong to it too)."""
    for part in reversed(parts):
        if _UNIT.fullmatch(part):
            return part
    return None
