"""``bench.gpu_report``'s reading of the device's pytest log: a run that ``scripts/gpu_check.sh`` stops at its time
limit (SIGINT) still reports what passed and failed, and says that it was stopped."""

from __future__ import annotations

import subprocess
import sys

from bench import gpu_report

TESTS = """
import time

def test_passes():
    pass

def test_fails():
    assert 1 == 2

def test_outlives_the_limit():
    time.sleep(120)
"""


def test_a_run_stopped_at_its_limit_keeps_its_counts_and_failures(tmp_path):
    (tmp_path / "test_three.py").write_text(TESTS)
    log = tmp_path / "pytest.log"
    with log.open("w") as out:  # as the script runs it: SIGINT at the limit, the log written as it goes
        done = subprocess.run(
            ["timeout", "-s", "INT", "-k", "30", "8", sys.executable, "-m", "pytest", "-q", "-rfE", "-p",
             "no:cacheprovider", "test_three.py"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, timeout=60,
        )  # fmt: skip
    assert done.returncode == 124  # stopped by the limit, not finished
    summary, failures = gpu_report.pytest_summary(log)
    assert summary.startswith("1 failed, 1 passed in "), summary
    assert summary.endswith("(stopped at its time limit: the tests after these did not run)")
    assert [f.split(" - ")[0] for f in failures] == ["FAILED test_three.py::test_fails"], failures


def test_a_finished_run_and_a_missing_log(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_passes():\n    pass\n")
    log = tmp_path / "pytest.log"
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path, stdout=out)
    summary, failures = gpu_report.pytest_summary(log)
    assert summary.startswith("1 passed in ") and "stopped" not in summary and failures == []
    assert gpu_report.pytest_summary(tmp_path / "absent.log") == ("not run", [])
