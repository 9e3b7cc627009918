"""deploy/prometheus-rule.yaml (a prometheus-operator PrometheusRule) from the plain rule file
deploy/prometheus-rules.yaml, its comments kept; tests/unit/test_alert_rules.py checks they agree.

    python -m tools.alert_manifest
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES_FILE = REPO / "deploy/prometheus-rules.yaml"
MANIFEST_FILE = REPO / "deploy/prometheus-rule.yaml"

MANIFEST_HEADER = """\
# Generated from deploy/prometheus-rules.yaml by `python -m tools.alert_manifest`:
# edit that file, not this one (tests/unit/test_alert_rules.py checks they agree).
#
# prometheus-operator loads a PrometheusRule only if its labels match the Prometheus object's
# ruleSelector (kube-prometheus-stack: `release: <helm release>` unless
# ruleSelectorNilUsesHelmValues=false) and its namespace matches ruleNamespaceSelector.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: oomtrace
  namespace: {namespace}
  labels:
    app.kubernetes.io/name: oomtrace
    app.kubernetes.io/component: alerting
spec:
"""
MANIFEST_NAMESPACE = "oomtrace"


def manifest_text(rules_text: str | None = None) -> str:
    """The PrometheusRule manifest: the rule file below `spec:`, its header comment left out."""
    text = rules_text if rules_text is not None else RULES_FILE.read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(("  " + line) if line.strip() else "" for line in lines[start:])
    return MANIFEST_HEADER.format(namespace=MANIFEST_NAMESPACE) + body + "\n"


def main() -> int:
    MANIFEST_FILE.write_text(manifest_text())
    print(f"wrote {MANIFEST_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
