"""Fixtures shared by every suite: real brokers for broker tests, and CI's no-skip rule."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from shared.broker import BrokerError, EmbeddedNats
from tests.brokers import rabbitmq_url

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session", autouse=True)
def _files_of_the_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Services started by tests keep their files (the hosts' datastore) in the run's
    temporary directory, not in the checkout, unless a test says where."""
    before = os.environ.get("VPLANE_DATA_DIR")
    os.environ["VPLANE_DATA_DIR"] = str(tmp_path_factory.mktemp("vplane-data"))
    yield
    if before is None:
        os.environ.pop("VPLANE_DATA_DIR", None)
    else:
        os.environ["VPLANE_DATA_DIR"] = before


@pytest.fixture(scope="session", autouse=True)
def _folds_checked() -> Iterator[None]:
    """Every scheduler started by a test checks the folds it takes from its decisions
    against a fold of the log's entries."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VPLANE_CHECK_FOLDS", "true")
        yield


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS URL: VPLANE_TEST_NATS_URL if set, else a nats-server from the wheel on a free
    port with a temporary store."""
    external = os.environ.get("VPLANE_TEST_NATS_URL")
    if external:
        yield external
        return
    try:
        server = EmbeddedNats(tmp_path_factory.mktemp("nats")).start()
    except BrokerError as err:
        pytest.skip(f"no NATS server: {err}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ URL (see tests/brokers.py)."""
    with rabbitmq_url() as url:
        yield url


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "vplane"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI a broker test that skips has not shown anything: count it as a failure."""
    report = yield
    if IN_CI and report.skipped and item.get_closest_marker("broker") is not None:
        report.outcome = "failed"
        report.longrepr = f"broker test skipped in CI (CI=true): {report.longrepr}"
    return report
