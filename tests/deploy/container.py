"""Runs a command in the image's root filesystem the way the DaemonSet's container runs, without
a container runtime: `python -m tests.deploy.container --image DIR --scratch DIR -- ARGV...`, as root.

What a kubelet + containerd would set up for deploy/daemonset.yaml, step by step:
- a private mount namespace (host PID and network namespaces: hostPID, no hostNetwork needed
  on loopback tests);
- the root filesystem: an overlay of the image (its upper layer on a tmpfs) mounted read-only
  (readOnlyRootFilesystem), mount points made first as runc does;
- /proc (a procfs of the host PID namespace), /sys read-only, a minimal /dev on tmpfs;
- the manifest's volumes: hostPath bind mounts, read-only where the manifest says so
  (recursively for recursiveReadOnly), emptyDirs as tmpfs;
- optionally a service-account directory at /var/run/secrets/kubernetes.io/serviceaccount;
- chroot, then containerd's RuntimeDefault seccomp profile for the capability set, then
  uid 0 with only those capabilities in every set and no_new_privs (setpriv, from the image).
The environment is the image's (config.json) plus the manifest's env and --env overrides.
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.deploy import manifests
from tests.deploy.seccomp_profile import build_filter

_CLONE_NEWNS = 0x00020000
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or below `path`, outermost first (from /proc/self/mountinfo)."""
    found = []
    prefix = str(path).rstrip("/")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def _inside(root: Path, path: str) -> Path:
    """`path` of the container resolved in `root`, its symlinks followed within `root`
    (Debian's /var/run is a link to /run: naively it would lead out to the host's /run)."""
    parts = [p for p in path.split("/") if p]
    current = root
    for _hop in range(40):
        if not parts:
            return current
        candidate = current / parts.pop(0)
        if candidate.is_symlink():
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p] + parts
            current = root if link.startswith("/") else current
        else:
            current = candidate
    raise OSError(f"too many symlinks resolving {path} in {root}")


def _read_only(path: Path, recursive: bool) -> None:
    for point in _mounts_below(path) if recursive else [str(path)]:
        _mount("-o", "remount,bind,ro", point)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", type=Path, required=True, help="a directory from scripts/build-rootfs.sh")
    parser.add_argument("--scratch", type=Path, required=True, help="an empty directory for the overlay")
    parser.add_argument("--manifest", type=Path, default=manifests.DAEMONSET)
    parser.add_argument("--caps", help="comma-separated; default: the manifest's added capabilities")
    parser.add_argument("--no-seccomp", action="store_true")
    parser.add_argument("--node-name", default="node-1")
    parser.add_argument("--service-account", type=Path, help="directory with token and ca.crt")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("argv", nargs="+")
    args = parser.parse_args()
    caps = args.caps.split(",") if args.caps is not None else manifests.added_capabilities(args.manifest)
    caps = [c for c in caps if c]
    config = json.loads((args.image / "config.json").read_text())

    if ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount("--make-rprivate", "/")

    # The container's root: the image, a throwaway upper layer, then read-only.
    _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(args.scratch))
    for d in ("upper", "work", "root"):
        (args.scratch / d).mkdir()
    root = args.scratch / "root"
    layers = (
        f"lowerdir={args.image / 'rootfs'},upperdir={args.scratch / 'upper'},workdir={args.scratch / 'work'}"
    )
    _mount("-t", "overlay", "overlay", "-o", layers, str(root))
    volumes = manifests.mounts(args.manifest)
    secret_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    for point in [v.path for v in volumes] + ([secret_dir] if args.service_account else []):
        if not point.startswith(("/sys/", "/proc/", "/dev/")):
            _inside(root, point).mkdir(parents=True, exist_ok=True)
    read_only_root = manifests.container(args.manifest)["securityContext"].get("readOnlyRootFilesystem")
    if read_only_root:
        _mount("-o", "remount,ro", str(root))

    _mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(root / "proc"))
    _mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", str(root / "sys"))
    _mount("-t", "tmpfs", "-o", "mode=755,size=1m,nosuid", "tmpfs", str(root / "dev"))
    for name in _DEVICES:
        (root / "dev" / name).touch()
        _mount("--bind", f"/dev/{name}", str(root / "dev" / name))
    (root / "dev/shm").mkdir()
    _mount("-t", "tmpfs", "-o", "size=1m,nosuid,nodev", "tmpfs", str(root / "dev/shm"))
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        (root / "dev" / link).symlink_to(target)

    for volume in volumes:
        target = _inside(root, volume.path)
        if volume.host_path is not None:
            _mount("--rbind", volume.host_path, str(target))
            if volume.read_only:
                _read_only(target, recursive=volume.recursive_read_only in ("IfPossible", "Enabled"))
        else:
            _mount(
                "-t",
                "tmpfs",
                "-o",
                f"size={volume.size_limit or '64Mi'}".replace("Mi", "m"),
                "tmpfs",
                str(target),
            )
    if args.service_account:
        target = _inside(root, secret_dir)
        _mount("--bind", str(args.service_account), str(target))
        _read_only(target, recursive=False)

    env = {"HOME": "/root", "HOSTNAME": args.node_name}
    env.update(e.split("=", 1) for e in config["Env"])
    for name, value in manifests.env(args.manifest).items():
        if isinstance(value, str):
            env[name] = value
        elif value == {"fieldRef": {"fieldPath": "spec.nodeName"}}:
            env[name] = args.node_name
    env.update(e.split("=", 1) for e in args.env)

    spec = manifests.pod_spec(args.manifest).get("securityContext", {}).get("seccompProfile", {})
    seccomp_filter = None
    if spec.get("type") == "RuntimeDefault" and not args.no_seccomp:
        seccomp_filter = build_filter(caps)

    os.chroot(root)
    os.chdir("/")
    if seccomp_filter is not None:
        seccomp_filter.load()
    capspec = "-all" + "".join(f",+{c.lower()}" for c in caps)
    os.execve(
        "/usr/bin/setpriv",
        ["setpriv", "--inh-caps=-all", f"--bounding-set={capspec}", "--no-new-privs", "--", *args.argv],
        env,
    )
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
