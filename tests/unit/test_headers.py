import os
from pathlib import Path

import pytest

from tracer.kernel.headers import HeadersError, HeaderTree, find_headers

RELEASE = "6.18.0-test"


def tree(root: Path, *files: str) -> Path:
    """A directory holding `files` (relative paths), each containing its own path."""
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{root.name}/{name}\n")
    return root


def debian(src: Path, version: str, arch: str = "amd64") -> tuple[Path, Path]:
    """Debian's split linux-headers-<version>-common and -<arch> packages."""
    common = tree(
        src / f"linux-headers-{version}-common",
        "include/linux/kconfig.h",
        "include/linux/sched.h",
        "arch/x86/include/asm/page.h",
        "Makefile",
    )
    arch_dir = tree(
        src / f"linux-headers-{version}-{arch}",
        "include/generated/autoconf.h",
        "arch/x86/include/generated/asm/unistd_64.h",
        ".config",
        "Makefile",  # also in -common: the arch half wins
    )
    return common, arch_dir


def find(tmp_path: Path, env: dict[str, str] | None = None) -> HeaderTree:
    return find_headers(
        RELEASE,
        modules_root=tmp_path / "lib/modules",
        src_root=tmp_path / "usr/src",
        cache_dir=tmp_path / "cache",
        env=env or {},
        kheaders=tmp_path / "no-kheaders.tar.xz",  # independent of the machine's kheaders module
    )


def test_running_kernels_own_build_dir_is_preferred(tmp_path: Path) -> None:
    tree(tmp_path / "lib/modules" / RELEASE / "build", "include/linux/kconfig.h")
    debian(tmp_path / "usr/src", "6.1.0-56")
    tree(tmp_path / "bcc", "include/linux/kconfig.h")
    found = find(tmp_path, env={"BCC_KERNEL_SOURCE": str(tmp_path / "bcc")})
    assert found == HeaderTree(None, "running kernel")
    assert found.matching


def test_build_dir_without_kconfig_h_is_not_a_header_tree(tmp_path: Path) -> None:
    (tmp_path / "lib/modules" / RELEASE / "build/include").mkdir(parents=True)
    with pytest.raises(HeadersError):
        find(tmp_path)


def test_bcc_kernel_source_is_used_when_the_running_kernel_has_no_headers(tmp_path: Path) -> None:
    bcc = tree(tmp_path / "bcc", "include/linux/kconfig.h")
    debian(tmp_path / "usr/src", "6.1.0-56")
    found = find(tmp_path, env={"BCC_KERNEL_SOURCE": str(bcc)})
    assert found == HeaderTree(bcc, "BCC_KERNEL_SOURCE")
    assert not found.matching


def test_bcc_kernel_source_without_kconfig_h_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bcc").mkdir()
    with pytest.raises(
        HeadersError, match=f"BCC_KERNEL_SOURCE={tmp_path / 'bcc'} has no include/linux/kconfig.h"
    ):
        find(tmp_path, env={"BCC_KERNEL_SOURCE": str(tmp_path / "bcc")})


def test_empty_bcc_kernel_source_is_ignored(tmp_path: Path) -> None:
    debian(tmp_path / "usr/src", "6.1.0-56")
    assert find(tmp_path, env={"BCC_KERNEL_SOURCE": ""}).origin == "foreign 6.1.0-56"


def test_debian_split_headers_are_merged_into_one_tree_in_the_cache(tmp_path: Path) -> None:
    common, arch = debian(tmp_path / "usr/src", "6.1.0-56")
    found = find(tmp_path)
    merged = tmp_path / "cache/headers-6.1.0-56-amd64"
    assert found == HeaderTree(merged, "foreign 6.1.0-56")
    assert not found.matching
    for name in ("include/linux/kconfig.h", "include/linux/sched.h", "arch/x86/include/asm/page.h"):
        assert (merged / name).is_symlink()
        assert os.readlink(merged / name) == str(common / name)
    for name in ("include/generated/autoconf.h", "arch/x86/include/generated/asm/unistd_64.h", ".config"):
        assert os.readlink(merged / name) == str(arch / name)


def test_arch_half_wins_where_both_halves_have_a_file(tmp_path: Path) -> None:
    _, arch = debian(tmp_path / "usr/src", "6.1.0-56")
    find(tmp_path)
    makefile = tmp_path / "cache/headers-6.1.0-56-amd64/Makefile"
    assert os.readlink(makefile) == str(arch / "Makefile")
    assert makefile.read_text() == "linux-headers-6.1.0-56-amd64/Makefile\n"


def test_merged_tree_leaves_no_partial_directory(tmp_path: Path) -> None:
    debian(tmp_path / "usr/src", "6.1.0-56")
    find(tmp_path)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["headers-6.1.0-56-amd64"]


def test_merged_tree_is_reused_on_the_next_run(tmp_path: Path) -> None:
    debian(tmp_path / "usr/src", "6.1.0-56")
    first = find(tmp_path)
    assert first.path is not None
    marker = first.path / "marker"
    marker.write_text("kept")
    assert find(tmp_path) == first
    assert marker.exists()


def test_incomplete_merged_tree_is_rebuilt(tmp_path: Path) -> None:
    debian(tmp_path / "usr/src", "6.1.0-56")
    stale = tree(tmp_path / "cache/headers-6.1.0-56-amd64", "leftover.h")
    find(tmp_path)
    assert not (stale / "leftover.h").exists()
    assert (stale / "include/linux/kconfig.h").exists()


@pytest.mark.parametrize(
    ("versions", "chosen"),
    [
        pytest.param(["6.1.0-9", "6.1.0-56"], "6.1.0-56", id="ABI 56 beats 9 (numbers, not strings)"),
        pytest.param(["6.9.0-20", "6.10.0-1"], "6.10.0-1", id="6.10 beats 6.9"),
        pytest.param(["5.10.0-30", "6.1.0-1"], "6.1.0-1", id="major version first"),
    ],
)
def test_highest_debian_header_version_is_chosen(tmp_path: Path, versions: list[str], chosen: str) -> None:
    for version in versions:
        debian(tmp_path / "usr/src", version)
    assert find(tmp_path).origin == f"foreign {chosen}"


def test_arm64_headers_are_found_too(tmp_path: Path) -> None:
    debian(tmp_path / "usr/src", "6.1.0-56", arch="arm64")
    assert find(tmp_path).path == tmp_path / "cache/headers-6.1.0-56-arm64"


def test_arch_half_without_its_common_half_is_not_a_candidate(tmp_path: Path) -> None:
    tree(tmp_path / "usr/src/linux-headers-6.1.0-56-amd64", "include/generated/autoconf.h")
    with pytest.raises(HeadersError):
        find(tmp_path)


def test_other_packages_in_usr_src_are_not_candidates(tmp_path: Path) -> None:
    tree(tmp_path / "usr/src/linux-headers-6.1.0-56-rt-amd64x", "x.h")
    tree(tmp_path / "usr/src/linux-kbuild-6.1", "scripts/x")
    with pytest.raises(HeadersError):
        find(tmp_path)


def test_no_headers_anywhere_is_an_error_naming_every_place_looked(tmp_path: Path) -> None:
    with pytest.raises(HeadersError) as err:
        find(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "lib/modules" / RELEASE / "build") in message
    assert "BCC_KERNEL_SOURCE" in message
    assert str(tmp_path / "usr/src") in message


def test_default_env_is_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bcc = tree(tmp_path / "bcc", "include/linux/kconfig.h")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(bcc))
    found = find_headers(
        RELEASE, modules_root=tmp_path / "m", src_root=tmp_path / "s", cache_dir=tmp_path / "c"
    )
    assert found.origin == "BCC_KERNEL_SOURCE"


def test_cloud_flavour_headers_are_merged_with_the_common_half(tmp_path: Path) -> None:
    src = tmp_path / "usr/src"
    tree(src / "linux-headers-6.1.0-56-common", "include/linux/kconfig.h")
    tree(src / "linux-headers-6.1.0-56-cloud-amd64", "include/generated/autoconf.h")
    found = find(tmp_path)
    assert found.path is not None and (found.path / "include/linux/kconfig.h").exists()


def test_kheaders_of_the_running_kernel_are_preferred_to_foreign_debian_headers(tmp_path: Path) -> None:
    src = tmp_path / "usr/src"
    tree(src / "linux-headers-6.1.0-56-common", "include/linux/kconfig.h")
    tree(src / "linux-headers-6.1.0-56-amd64", "include/generated/autoconf.h")
    kheaders = tmp_path / "kheaders.tar.xz"
    kheaders.write_bytes(b"")
    found = find_headers(
        "6.18.0-test",
        modules_root=tmp_path / "lib/modules",
        src_root=src,
        cache_dir=tmp_path / "cache",
        env={},
        kheaders=kheaders,
    )
    assert found == HeaderTree(None, "kheaders")


def test_debian_split_headers_of_the_running_kernel_are_its_own(tmp_path: Path) -> None:
    """Debian: build -> linux-headers-<rel> (generated headers), source -> the -common half."""
    modules = tmp_path / "lib/modules" / RELEASE
    tree(tmp_path / "usr/src/linux-headers-rel", "include/generated/autoconf.h")
    tree(tmp_path / "usr/src/linux-headers-common", "include/linux/kconfig.h")
    modules.mkdir(parents=True)
    (modules / "build").symlink_to(tmp_path / "usr/src/linux-headers-rel")
    (modules / "source").symlink_to(tmp_path / "usr/src/linux-headers-common")
    assert find(tmp_path) == HeaderTree(None, "running kernel")


@pytest.mark.parametrize(
    ("arch_dir", "abi"),
    [
        ("linux-headers-6.12.117+deb13-amd64", "6.12.117+deb13"),
        ("linux-headers-6.1.0-56-cloud-arm64", "6.1.0-56"),
    ],
    ids=["trixie abi", "cloud flavour on arm64"],
)
def test_header_package_names_of_every_debian_release_are_understood(
    tmp_path: Path, arch_dir: str, abi: str
) -> None:
    src = tmp_path / "usr/src"
    tree(src / f"linux-headers-{abi}-common", "include/linux/kconfig.h")
    tree(src / arch_dir, "include/generated/autoconf.h")
    found = find(tmp_path)
    assert found.origin == f"foreign {abi}"
