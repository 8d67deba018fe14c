"""The alert rules in examples/ are valid Prometheus rules, fire on the brief's thresholds, and
use only metrics that sendguard exports (a renamed metric would silence an alert for good)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "examples" / "alerts.rules.yml"
TESTS = Path(__file__).with_name("alerts_test.yml")


def promtool() -> str:
    """promtool from the venv (bootstrap.sh takes it out of Debian's prometheus package) or PATH."""
    beside = Path(sys.executable).with_name("promtool")
    found = str(beside) if beside.exists() else shutil.which("promtool")
    assert found, "promtool not found: bash scripts/bootstrap.sh test installs it into .venv/bin"
    return found


def test_the_rules_are_valid():
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # Every rule written in the file is one promtool loaded (none lost to a YAML indentation slip).
    written = len(re.findall(r"^\s*- alert: ", RULES.read_text(), re.M))
    assert written >= 10 and f"SUCCESS: {written} rules found" in out.stdout, out.stdout


def test_each_alert_fires_on_its_threshold_and_not_under_it():
    out = subprocess.run([promtool(), "test", "rules", TESTS.name], capture_output=True, text=True, cwd=TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_metric_the_rules_use_is_exported():
    used = set(re.findall(r"\bsendguard_[a-z_]+", "\n".join(
        line for line in RULES.read_text().splitlines() if line.strip().startswith("expr:")
    )))  # fmt: skip
    assert used
    source = "\n".join(p.read_text() for d in ("policyd", "milter", "sendguard") for p in (ROOT / d).rglob("*.py"))
    # A counter is registered without its _total suffix (prometheus_client adds it).
    missing = {name for name in used if f'"{name}"' not in source and f'"{name.removesuffix("_total")}"' not in source}
    assert not missing, f"the alert rules use metrics nothing exports: {sorted(missing)}"
