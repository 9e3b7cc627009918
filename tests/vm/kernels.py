"""Kernel images and matching headers for the VM matrix, from Debian's archive.

A private apt configuration (its own sources list, lists and archive directories under
.cache/kernels/apt) finds and downloads the packages; the system's apt sources are never
read or changed. Each kernel is unpacked with dpkg-deb under .cache/kernels/<release>/:

  root/                     the image package (boot/vmlinuz-<release>, lib/modules/<release>/)
  headers/                  linux-headers-<base>-common and -amd64 merged into one symlink tree
  root/lib/modules/<release>/build -> headers/   (absolute: the VM sees the host's filesystem)

virtme-ng links the guest's /lib/modules/<release> to root/lib/modules/<release>, so bcc in
the VM finds headers that match the booted kernel exactly as on a Debian node. Nothing lives
under /var/tmp, /var/cache, /var/lib/apt or /usr/lib/modules: virtme-ng hides those in the VM.

Run on the host (stdlib only): python3 tests/vm/kernels.py [5.10 6.1 6.12]
"""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script too (make kernels)

from tracer.kernel.headers import merge_tree  # noqa: E402  (after the path)

# Outside the repository by default, so fresh clones (CI) reuse the downloads; never under
# /var/tmp, /var/cache, /var/log, /var/lib/apt or /usr/lib/modules (hidden in the VM).
CACHE = Path(os.environ.get("OOMTRACE_VM_CACHE", "/opt/oomtrace-vm")) / "kernels"
APT_DIR = CACHE / "apt"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = os.environ.get("OOMTRACE_DEBIAN_MIRROR", "http://deb.debian.org")

SOURCES = f"""\
deb [signed-by={KEYRING}] {MIRROR}/debian bullseye main
deb [signed-by={KEYRING}] {MIRROR}/debian-security bullseye-security main
deb [signed-by={KEYRING}] {MIRROR}/debian bookworm main
deb [signed-by={KEYRING}] {MIRROR}/debian-security bookworm-security main
deb [signed-by={KEYRING}] {MIRROR}/debian bookworm-backports main
deb [signed-by={KEYRING}] {MIRROR}/debian trixie main
"""

# Release names as Debian's image packages spell them (= `uname -r` in the VM).
SERIES = {
    "5.10": re.compile(r"5\.10\.0-[0-9]+-amd64"),  # bullseye
    "6.1": re.compile(r"6\.1\.0-[0-9]+-amd64"),  # bookworm
    "6.12": re.compile(r"6\.12\.[0-9]+\+deb1[23]-amd64"),  # bookworm-backports / trixie
}


class FetchError(Exception):
    pass


@dataclass(frozen=True)
class Kernel:
    series: str
    release: str  # uname -r in the VM
    version: str  # Debian package version
    vmlinuz: str
    moddir: str
    headers: str  # merged tree the build link points at

    @property
    def headers_tar(self) -> str:
        """The same tree as one tar: the VM unpacks it into RAM (9p is slow under TCG)."""
        return str(tar_tree(Path(self.headers), Path(self.headers).with_name(TAR_NAME)))

    @classmethod
    def load(cls, path: Path) -> "Kernel":
        fields = json.loads(path.read_text())
        return cls(**{k: fields[k] for k in ("series", "release", "version", "vmlinuz", "moddir", "headers")})


def _apt_options() -> list[str]:
    return [
        f"-oDir::Etc::SourceList={APT_DIR / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={APT_DIR / 'lists'}",
        f"-oDir::Cache={APT_DIR / 'cache'}",
        f"-oDir::Cache::Archives={APT_DIR / 'archives'}",
        "-oDir::State::status=/dev/null",
        "-oDir::Etc::Preferences=/dev/null",
        "-oDir::Etc::PreferencesParts=/dev/null",
        "-oAPT::Architectures::=amd64",
        "-oAcquire::Languages=none",
        "-oDebug::NoLocking=1",
    ]


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise FetchError(
            f"{' '.join(cmd[:2])} ... failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return result.stdout


_updated = False


def apt_update() -> None:
    global _updated
    if _updated:
        return
    for sub in ("lists/partial", "archives/partial", "cache"):
        (APT_DIR / sub).mkdir(parents=True, exist_ok=True)
    (APT_DIR / "sources.list").write_text(SOURCES)
    _run(["apt-get", *_apt_options(), "-q", "update"])
    _updated = True


def _version_key(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"[0-9]+", text)]


def _candidate(package: str) -> str | None:
    out = subprocess.run(
        ["apt-cache", *_apt_options(), "policy", package], capture_output=True, text=True
    ).stdout
    match = re.search(r"Candidate: (\S+)", out)
    return None if match is None or match.group(1) == "(none)" else match.group(1)


def foreign_header_bases(src_root: Path = Path("/usr/src")) -> set[str]:
    """Header packages installed on this host (e.g. "6.1.0-56"): the 'foreign' tree."""
    return {
        m.group(1)
        for p in src_root.glob("linux-headers-*-amd64")
        if (m := re.fullmatch(r"linux-headers-(.+)-amd64", p.name))
    }


def resolve(series: str) -> tuple[str, str]:
    """(release, version) of the newest image of `series` whose headers are in the archive.

    A release whose headers are installed on this host is skipped when another exists: the
    'no own headers' runs compile against the host's tree, which must really be foreign.
    """
    apt_update()
    names = _run(["apt-cache", *_apt_options(), "pkgnames", "linux-image-"]).split()
    releases = sorted(
        {
            n.removeprefix("linux-image-")
            for n in names
            if SERIES[series].fullmatch(n.removeprefix("linux-image-"))
        },
        key=_version_key,
        reverse=True,
    )
    foreign = foreign_header_bases()
    usable = []
    for release in releases:
        base = release.removesuffix("-amd64")
        version = _candidate(f"linux-image-{release}")
        if version is None:
            continue
        if all(_candidate(f"linux-headers-{base}-{half}") == version for half in ("amd64", "common")):
            usable.append((release, version))
    if not usable:
        raise FetchError(f"no linux-image {series} with matching headers in the archive")
    preferred = [u for u in usable if u[0].removesuffix("-amd64") not in foreign]
    return (preferred or usable)[0]


# Named after what goes in: a change to the exclusions below must change the name.
TAR_NAME = "headers.stage2.tar"


def tar_tree(tree: Path, tar: Path) -> Path:
    """The tree with its symlinks followed, as one tar file (made once). Reading one file
    over 9p and unpacking it into the VM's RAM takes seconds; clang opening a thousand
    headers over 9p under TCG takes minutes, per compile."""
    if not tar.exists():
        partial = tar.with_name(tar.name + ".partial")
        # Left out: what bcc never reads. scripts/ and tools/ link into linux-kbuild (never
        # fetched); include/config/ is thousands of empty kbuild dependency markers; other
        # architectures; device-tree, DRM, sound and media headers.
        excluded = ["./scripts", "./tools", "./include/config", "./include/dt-bindings", "./include/drm",
                    "./include/sound", "./include/media", "./vmlinux", "./Module.symvers"]  # fmt: skip
        excluded += [f"./arch/{a.name}" for a in (tree / "arch").iterdir() if a.name != "x86"]
        _run(["tar", "-chf", str(partial), *(f"--exclude={e}" for e in excluded), "-C", str(tree), "."])
        partial.rename(tar)
    return tar


def fetch(series: str, refresh: bool = False) -> Kernel:
    """The cached kernel of `series`, downloading and unpacking it on first use."""
    pointer = CACHE / f"{series}.json"
    if pointer.exists() and not refresh:
        kernel = Kernel.load(pointer)
        if Path(kernel.vmlinuz).exists() and (Path(kernel.moddir) / "build/include/linux/kconfig.h").exists():
            return kernel
    release, version = resolve(series)
    base = release.removesuffix("-amd64")
    top = CACHE / release
    debs = top / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    packages = [f"linux-image-{release}", f"linux-headers-{base}-amd64", f"linux-headers-{base}-common"]
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        _run(["apt-get", *_apt_options(), "-q", "download", *(f"{p}={version}" for p in missing)], cwd=debs)
    root = top / "root"
    shutil.rmtree(root, ignore_errors=True)
    for package in packages:
        (deb,) = debs.glob(f"{package}_*.deb")
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    vmlinuz = root / f"boot/vmlinuz-{release}"
    moddir = next(
        (d for d in (root / "lib/modules" / release, root / "usr/lib/modules" / release) if d.is_dir()), None
    )
    if not vmlinuz.exists() or moddir is None:
        raise FetchError(f"{release}: no boot/vmlinuz or lib/modules in the image package")
    headers = top / "headers"
    merge_tree(
        [root / f"usr/src/linux-headers-{base}-common", root / f"usr/src/linux-headers-{base}-amd64"], headers
    )
    # Debian links build -> /usr/src/...-amd64 and source -> ...-common on the *host*: point
    # build at the merged tree instead (one directory holding both halves, as bcc and
    # tracer/kernel/headers.py expect), absolute so the VM resolves it through the shared root.
    for link in ("build", "source"):
        target = moddir / link
        if target.is_symlink() or target.exists():
            target.unlink()
    (moddir / "build").symlink_to(headers)
    (top / TAR_NAME).unlink(missing_ok=True)
    kernel = Kernel(series, release, version, str(vmlinuz), str(moddir), str(headers))
    pointer.write_text(json.dumps(asdict(kernel), indent=2) + "\n")
    return kernel


def main(argv: list[str]) -> int:
    refresh = "--refresh" in argv
    for series in [a for a in argv if not a.startswith("--")] or list(SERIES):
        try:
            kernel = fetch(series, refresh)
        except FetchError as err:
            print(f"kernel {series}: {err}", file=sys.stderr)
            return 1
        print(json.dumps({**asdict(kernel), "headers_tar": kernel.headers_tar}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
