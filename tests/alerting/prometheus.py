"""A real Prometheus server (Debian's `prometheus` package) for tests: loopback only, a temporary
config and storage directory, short scrape and evaluation intervals."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """`prometheus` scraping `targets` (host:port → target labels) every `interval_s`, and
    evaluating `rules` (a rule-file document) as often. The scrape keeps the targets' own
    labels (honor_labels: true), as docs/alerting.md asks of every oomtrace scrape."""

    def __init__(
        self,
        workdir: Path,
        rules: Mapping[str, Any],
        targets: Mapping[str, Mapping[str, str]],
        job: str = "oomtrace",
        interval_s: float = 1.0,
        bearer_token_file: Path | None = None,
    ) -> None:
        if shutil.which(PROMETHEUS) is None:
            raise AssertionError(f"{PROMETHEUS} is missing: scripts/install.sh installs Debian's prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yaml").write_text(yaml.safe_dump(dict(rules), sort_keys=False))
        interval = f"{int(interval_s * 1000)}ms"
        job_config: dict[str, Any] = {
            "job_name": job,
            "honor_labels": True,
            "static_configs": [
                {"targets": [address], "labels": dict(labels)} for address, labels in targets.items()
            ],
        }
        if bearer_token_file is not None:  # a tracer run with --http-auth
            job_config["authorization"] = {"type": "Bearer", "credentials_file": str(bearer_token_file)}
        config = {
            "global": {
                "scrape_interval": interval,
                "evaluation_interval": interval,
                "scrape_timeout": interval,
            },
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [job_config],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise AssertionError(f"prometheus did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`. Raises AssertionError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
            raise AssertionError(f"{path} {params}: HTTP {err.code}: {body.get('error')}") from None
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, **params: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, **params)
        result = data["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def query_range(self, expr: str, start: float, end: float, step: str) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=str(start), end=str(end), step=step)
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
