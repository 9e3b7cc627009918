"""Argument parsing and error paths of the command line: one line on stderr, exit 2."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tracer import __version__, schema
from tracer.cli import main
from tracer.errors import EXIT_USAGE
from tracer.kernel import features, headers, probes
from tracer.kernel import source as bpf_source
from tracer.kernel.btf import Btf
from tracer.kernel.features import KernelFeatures

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def run_main(argv: Sequence[str]) -> int:
    """main()'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(list(argv))
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("oomtrace: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def no_oomtrace_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OOMTRACE_") or name == "NODE_NAME":
            monkeypatch.delenv(name)


BAD_ARGUMENTS = [
    pytest.param(["run", "--interval", "-1"], "must be > 0: '-1'", id="negative interval"),
    pytest.param(["run", "--interval=-1"], "must be > 0: '-1'", id="negative interval with ="),
    pytest.param(["run", "--interval", "0"], "must be > 0: '0'", id="zero interval"),
    pytest.param(["run", "--interval", "nan"], "must be > 0: 'nan'", id="nan interval"),
    pytest.param(["run", "--interval", "abc"], "not a number: 'abc'", id="interval not a number"),
    pytest.param(["run", "--near-oom-quiet", "-0.5"], "must be > 0", id="negative quiet period"),
    pytest.param(["run", "--duration", "nan"], "must be > 0", id="nan duration"),
    pytest.param(["demo", "--interval", "-3"], "must be > 0", id="demo shares the tracing flags"),
    pytest.param(["demo", "--limit-mib", "lots"], "invalid int value", id="limit not an integer"),
    pytest.param(["run", "--source", "ebpf"], "invalid choice: 'ebpf'", id="unknown source"),
    pytest.param(["run", "--bogus"], "unrecognized arguments: --bogus", id="unknown flag"),
    pytest.param(["probes", "--interval", "1"], "unrecognized arguments", id="flag of another subcommand"),
    pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown subcommand"),
    pytest.param([], "the following arguments are required: command", id="no subcommand"),
    pytest.param(["run", "--interval"], "expected one argument", id="flag without its value"),
    pytest.param(["run", "--nice", "-21"], "must be from -20 to 19: '-21'", id="nice below -20"),
    pytest.param(["run", "--nice", "high"], "not a whole number: 'high'", id="nice not a number"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line_on_stderr(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert message in one_error_line(captured.err)
    assert captured.out == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("OOMTRACE_INTERVAL", "abc", id="interval"),
        pytest.param("OOMTRACE_NEAR_OOM_QUIET", "-1", id="quiet period"),
        pytest.param("OOMTRACE_DURATION", "0", id="duration"),
    ],
)
def test_bad_environment_values_are_usage_errors_too(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, value)
    assert run_main(["run"]) == EXIT_USAGE
    assert name.removeprefix("OOMTRACE_").lower().replace("_", "-") in one_error_line(capsys.readouterr().err)


def test_bad_source_in_the_environment_is_rejected_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OOMTRACE_SOURCE", "ebpf")
    monkeypatch.setattr(features, "detect", lambda **_: pytest.fail("ran past argument checks"))
    assert run_main(["run", "--dump-bpf"]) == EXIT_USAGE
    assert "ebpf" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("9700", id="port without colon"),
        pytest.param(":99999", id="port out of range"),
        pytest.param("::1:9700", id="IPv6 without brackets"),
    ],
)
def test_bad_metrics_address_is_a_usage_error(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["run", "--metrics-address", address]) == EXIT_USAGE
    assert "--metrics-address" in one_error_line(capsys.readouterr().err)


def test_demo_limit_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # As root the range check answers; as a user the root check does: either way exit 2.
    assert run_main(["demo", "--limit-mib", "5"]) == EXIT_USAGE
    one_error_line(capsys.readouterr().err)


def test_version_prints_the_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--version"]) == 0
    assert capsys.readouterr().out == f"oomtrace {__version__}\n"


def test_help_exits_0_and_does_not_show_the_hidden_dump_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--interval" in out
    assert "--dump-bpf" not in out


def test_run_as_a_user_exits_2_with_one_line_and_no_traceback() -> None:
    command = [sys.executable, "-m", "tracer", "run"]
    if os.geteuid() == 0:
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OOMTRACE_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == EXIT_USAGE, result.stderr
    line = one_error_line(result.stderr)
    assert "needs root" in line
    assert result.stdout == ""


# ---- commands that run feature detection on this machine ----


def capture(argv: Sequence[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def btf_parsed_once() -> Iterator[None]:
    """The real /sys/kernel/btf/vmlinux takes about a second to parse: parse it once here."""
    cache: dict[str, Btf] = {}
    original = Btf.from_file.__func__  # type: ignore[attr-defined]

    def from_file(cls: type[Btf], path: str | Path = "/sys/kernel/btf/vmlinux") -> Btf:
        if str(path) not in cache:
            cache[str(path)] = original(cls, path)
        return cache[str(path)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Btf, "from_file", classmethod(from_file))
        yield


@pytest.fixture(scope="module")
def dumped_bpf(btf_parsed_once: None) -> tuple[int, str, str]:
    return capture(["run", "--dump-bpf"])


def test_dump_bpf_prints_the_program_with_its_tier_macros(dumped_bpf: tuple[int, str, str]) -> None:
    code, out, err = dumped_bpf
    assert (code, err) == (0, "")
    for macro in (
        "OOM_KILL_TIER",
        "MEMCG_OOM_TIER",
        "OOM_CONTEXT_TIER",
        "NEAR_OOM_TIER",
        "CHARGE_FAILURE_TIER",
    ):
        assert f"#define {macro} " in out


def test_dump_bpf_includes_every_bpf_file(dumped_bpf: tuple[int, str, str]) -> None:
    _, out, _ = dumped_bpf
    for name in [bpf_source.ENTRY, *bpf_source.parts()]:
        assert f"/* ---- bpf/{name} ---- */" in out
    assert "#define CHARGE_FAILURE_FN " in out


def test_dump_bpf_without_btf_defines_no_kernel_offsets(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["run", "--dump-bpf", "--no-btf", "--near-oom-quiet", "2"]) == 0
    out = capsys.readouterr().out
    assert "#define OOMTRACE_HAVE_BTF 0" in out
    assert "#define NEAR_OOM_QUIET_NS 2000000000" in out
    assert "#define OFF_" not in out


@pytest.fixture(scope="module")
def probes_json(btf_parsed_once: None) -> tuple[int, dict[str, object], str]:
    with pytest.MonkeyPatch.context() as mp:
        # Headers are looked for in the real /usr/src, and merged into /var/cache: not here.
        def no_headers(release: str) -> headers.HeaderTree:
            raise headers.HeadersError("none in unit tests")

        mp.setattr(headers, "find_headers", no_headers)
        code, out, err = capture(["probes", "--json"])
    return code, json.loads(out), err


def test_probes_json_lists_the_five_probes_in_order(probes_json: tuple[int, dict[str, object], str]) -> None:
    code, report, err = probes_json
    assert (code, err) == (0, "")
    listed = report["probes"]
    assert isinstance(listed, list)
    assert [p["probe"] for p in listed] == list(probes.PROBES)


def test_probes_json_says_why_each_probe_did_not_get_a_better_tier(
    probes_json: tuple[int, dict[str, object], str],
) -> None:
    _, report, _ = probes_json
    listed = report["probes"]
    assert isinstance(listed, list)
    for p in listed:
        assert p["tier"] in (*schema.PROBE_TIERS, schema.UNAVAILABLE)
        assert (p["why_not_better"] is None) == (p["tier"] == schema.FENTRY)
        assert (p["target"] is None) == (p["tier"] == schema.UNAVAILABLE)
    assert set(report) == {"kernel", "btf", "btf_error", "headers", "probes", "notes"}
    assert report["headers"] == "none: none in unit tests"
    assert report["kernel"] == os.uname().release


def test_probes_without_btf_reports_it_and_notes_what_is_lost(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(headers, "find_headers", lambda release: headers.HeaderTree(None, "running kernel"))
    assert run_main(["probes", "--json", "--no-btf"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["btf"], report["btf_error"]) == (False, "disabled by --no-btf")
    assert report["notes"] and report["notes"][0].startswith("no kernel BTF")
    assert report["headers"] == f"running kernel (/lib/modules/{os.uname().release}/build)"


def test_probes_as_text_has_a_row_per_probe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(headers, "find_headers", lambda release: headers.HeaderTree(None, "running kernel"))
    assert run_main(["probes", "--no-btf"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.split()]
    for probe in probes.PROBES:
        assert probe in rows


# ---- values the parser lets through ----

NO_BTF_FEATURES = KernelFeatures(
    release="6.18.0-test",
    btf=False,
    btf_error="disabled by --no-btf",
    kprobes=False,
    fentry=False,
    fentry_reason="needs kernel BTF",
    symbols=frozenset(),
    tracepoints=frozenset(),
    mark_victim_raw_task=False,
    mark_victim_fields=frozenset(),
    cgroup2_memory=False,
)


@pytest.mark.parametrize("quiet", ["inf", "1e30"])
def test_near_oom_quiet_too_large_for_the_kernel_is_a_usage_error(
    quiet: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(features, "detect", lambda **_: dataclasses.replace(NO_BTF_FEATURES))
    assert run_main(["run", "--dump-bpf", "--near-oom-quiet", quiet]) == EXIT_USAGE
    one_error_line(capsys.readouterr().err)


def test_nice_sets_the_processes_priority_before_it_starts_threads() -> None:
    probe = (
        "import os, threading; from tracer.cli.run import set_nice; set_nice(7); "
        "t = threading.Thread(target=lambda: print(os.getpriority(os.PRIO_PROCESS, 0))); t.start(); t.join()"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "7", out.stderr  # seen from a thread started after it


def test_a_nice_value_the_process_may_not_take_is_one_line_naming_the_capability(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tracer.cli import run

    def refuse(_which: int, _who: int, _value: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(run.os, "setpriority", refuse)
    monkeypatch.setattr(run, "require_root", lambda: None)
    assert run_main(["run", "--nice", "-10", "--metrics-address", "none"]) == EXIT_USAGE
    line = one_error_line(capsys.readouterr().err)
    assert "--nice -10: Operation not permitted" in line and "CAP_SYS_NICE" in line


@pytest.mark.parametrize("kube", ["none", "kubelet"])
def test_kube_events_without_the_api_server_is_a_usage_error(
    kube: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(["run", "--kube", kube, "--kube-events", "--metrics-address", "none"]) == EXIT_USAGE
    assert "--kube-events" in one_error_line(capsys.readouterr().err)
