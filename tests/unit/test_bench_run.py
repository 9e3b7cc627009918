"""`bench/run.sh --only NAME --merge`: one benchmark rerun into the last full record."""

import json
from pathlib import Path
from typing import Any

import pytest

from bench import run


def full_record() -> dict[str, Any]:
    return {
        "machine": {"date": "2026-11-26T18:47:19Z", "kernel": "6.18.44", "commit": "abc1234"},
        "quick": False,
        "benchmarks": {"lead": {"reps": 5}, "peers": {"scenarios": ["host"]}, "peers-vm": {"kernels": {}}},
        "startups": [{"seconds": 1.0}],
    }


def vm_run(section: dict[str, Any]) -> dict[str, Any]:
    return {
        "machine": {"date": "2026-11-27T10:00:00Z", "kernel": "6.18.44", "commit": "def5678"},
        "quick": False,
        "benchmarks": {"peers-vm": section},
        "startups": [],
    }


def test_merge_replaces_only_the_sections_the_run_measured() -> None:
    base = full_record()
    merged = run.merge(base, vm_run({"kernels": {"6.1": {"scenarios": []}}, "wall_s": 99.0}))
    assert merged["benchmarks"]["peers-vm"] == {"kernels": {"6.1": {"scenarios": []}}, "wall_s": 99.0}
    assert merged["benchmarks"]["lead"] == {"reps": 5}
    assert merged["benchmarks"]["peers"] == {"scenarios": ["host"]}
    assert merged["machine"] == base["machine"]
    assert merged["startups"] == base["startups"]
    assert merged["merged"] == [
        {
            "benchmarks": ["peers-vm"],
            "date": "2026-11-27T10:00:00Z",
            "kernel": "6.18.44",
            "commit": "def5678",
            "quick": False,
        }
    ]
    assert "merged" not in base  # the base record is not changed in place


def test_a_section_that_failed_as_a_whole_is_not_merged_over_good_numbers() -> None:
    merged = run.merge(full_record(), vm_run({"error": "MatrixError: no QEMU", "wall_s": 1.0}))
    assert merged["benchmarks"]["peers-vm"] == {"kernels": {}}
    assert "merged" not in merged


def test_merging_writes_the_run_alone_to_its_stamped_file_and_the_merge_to_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run.harness, "REPO", tmp_path)
    (tmp_path / "latest.json").write_text(json.dumps(full_record()))
    rendered = run._write(vm_run({"kernels": {"6.1": {}}}), merge_into_latest=True)
    stamped = json.loads((tmp_path / "20261127T100000Z-6.18.44.json").read_text())
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert list(stamped["benchmarks"]) == ["peers-vm"]
    assert list(latest["benchmarks"]) == ["lead", "peers", "peers-vm"]
    assert latest["benchmarks"]["peers-vm"] == {"kernels": {"6.1": {}}}
    assert rendered == latest


def test_merging_without_a_latest_record_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run.harness, "REPO", tmp_path)
    with pytest.raises(SystemExit, match="--merge needs"):
        run._write(vm_run({"kernels": {}}), merge_into_latest=True)


def test_sigterm_unwinds_the_benchmark_so_its_cgroups_are_removed() -> None:
    import contextlib
    import os
    import signal

    unwound: list[str] = []

    @contextlib.contextmanager
    def pool() -> Any:  # stands in for bench.workload.Pool, whose __exit__ removes the cgroups
        try:
            yield
        finally:
            unwound.append("removed")

    before = signal.getsignal(signal.SIGTERM)
    try:
        run.exit_on_sigterm()
        with pytest.raises(SystemExit) as stopped, pool():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # Python runs the handler between bytecodes: here, in the block
                pass
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert unwound == ["removed"]


def test_the_versioned_record_is_the_one_the_docs_were_rendered_from() -> None:
    # bench/results/latest.json is committed with docs/benchmarks.md and the README summary it
    # rendered, so --merge works on a fresh checkout and every figure can be traced to its run.
    repo = Path(__file__).resolve().parents[2]
    record = json.loads((repo / "bench" / "results" / "latest.json").read_text())
    line = f"Latest run: **{record['machine']['date']}** · kernel **{record['machine']['kernel']}**"
    assert line in (repo / "docs" / "benchmarks.md").read_text()
    assert line in (repo / "README.md").read_text()
