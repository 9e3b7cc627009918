"""Finds a kernel header tree for bcc to compile against.

bcc needs headers only to compile: every struct offset oomtrace reads comes from BTF, so
headers of another kernel are fine. Preference: the running kernel's own headers, a
tree named by BCC_KERNEL_SOURCE, then Debian-style split packages merged into one tree.
"""

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path


class HeadersError(Exception):
    """No header tree is usable."""


@dataclass(frozen=True)
class HeaderTree:
    path: Path | None  # None: bcc finds the running kernel's headers itself
    origin: str  # "running kernel", "BCC_KERNEL_SOURCE", "foreign <version>"

    @property
    def matching(self) -> bool:
        """Headers of the running kernel itself."""
        return self.origin in ("running kernel", "kheaders")


def merge_tree(halves: list[Path], into: Path) -> None:
    """One symlink tree holding every half (bcc wants a single directory); a later half wins
    where two have a file (Debian: common, then arch). Built beside `into`, then renamed."""
    partial = into.with_name(into.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for half in halves:
        for dirpath, _dirs, files in os.walk(half, followlinks=False):
            rel = Path(dirpath).relative_to(half)
            (partial / rel).mkdir(parents=True, exist_ok=True)
            for name in files:
                link = partial / rel / name
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(Path(dirpath) / name)
    shutil.rmtree(into, ignore_errors=True)
    partial.rename(into)


def find_headers(
    release: str,
    modules_root: Path = Path("/lib/modules"),
    src_root: Path = Path("/usr/src"),
    cache_dir: Path = Path("/var/cache/oomtrace"),
    env: dict[str, str] | None = None,
    kheaders: Path = Path("/sys/kernel/kheaders.tar.xz"),
) -> HeaderTree:
    env = dict(os.environ) if env is None else env
    own = modules_root / release / "build"
    # Debian splits a kernel's headers into build/ (-amd64: generated headers) and source/
    # (-common, with include/linux/kconfig.h); bcc reads both by itself.
    if (own / "include").is_dir() and any(
        (half / "include/linux/kconfig.h").exists() for half in (own, own.parent / "source")
    ):
        return HeaderTree(None, "running kernel")
    if env.get("BCC_KERNEL_SOURCE"):
        tree = Path(env["BCC_KERNEL_SOURCE"])
        if not (tree / "include/linux/kconfig.h").exists():
            raise HeadersError(f"BCC_KERNEL_SOURCE={tree} has no include/linux/kconfig.h")
        return HeaderTree(tree, "BCC_KERNEL_SOURCE")
    if kheaders.exists():
        # CONFIG_IKHEADERS: the running kernel's own headers, which bcc unpacks by itself.
        return HeaderTree(None, "kheaders")
    candidates = []
    for arch in src_root.glob("linux-headers-*-*"):
        # <abi>-<flavour>: 6.1.0-56-amd64, 6.1.0-56-cloud-amd64, 6.1.0-56-rt-arm64; all flavours
        # of one ABI share linux-headers-<abi>-common.
        # <abi>: 6.1.0-56 (bookworm), 6.12.117+deb13 (trixie and backports)
        match = re.fullmatch(r"linux-headers-(\d.+?)-((?:[a-z]+-)?(?:amd64|arm64))", arch.name)
        if match and (src_root / f"linux-headers-{match.group(1)}-common").is_dir():
            candidates.append((match.group(1), arch))
    if not candidates:
        raise HeadersError(
            f"no kernel headers: neither {own} nor BCC_KERNEL_SOURCE "
            f"nor a linux-headers package in {src_root}"
        )

    def version_key(item: tuple[str, Path]) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", item[0])]

    version, arch = max(candidates, key=version_key)
    merged = cache_dir / f"headers-{arch.name.removeprefix('linux-headers-')}"
    if not (merged / "include/linux/kconfig.h").exists():
        try:
            merged.parent.mkdir(parents=True, exist_ok=True)
            merge_tree([src_root / f"linux-headers-{version}-common", arch], merged)
        except OSError as err:
            # Read-only or full: leave no half-built tree behind to fill it further.
            shutil.rmtree(merged.with_name(merged.name + ".partial"), ignore_errors=True)
            raise HeadersError(
                f"cannot build the merged kernel header tree in {cache_dir}: {err.strerror or err}; "
                "give --headers-cache a writable directory (about 16,000 symlinks) or set BCC_KERNEL_SOURCE"
            ) from None
    return HeaderTree(merged, f"foreign {version}")
