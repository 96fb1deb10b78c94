"""In CI a broker test that skips is a failure; elsewhere it is an ordinary skip."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SKIPPING_BROKER_TEST = """
from pathlib import Path

import pytest

@pytest.mark.broker
def test_needs_a_broker():
    pytest.skip("no broker here")
"""


def run(pytester: pytest.Pytester, ci: str) -> pytest.RunResult:
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    broker: talks to a real broker\n")
    pytester.makepyfile(SKIPPING_BROKER_TEST)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CI", ci)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_skipped_broker_test_fails_in_ci(pytester: pytest.Pytester) -> None:
    """With CI=true the skipped broker test is reported as failed."""
    result = run(pytester, "true")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*broker test skipped in CI*"])


def test_skipped_broker_test_is_a_skip_outside_ci(pytester: pytest.Pytester) -> None:
    """Without CI the same test is just skipped."""
    run(pytester, "false").assert_outcomes(skipped=1)
