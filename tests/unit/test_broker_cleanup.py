"""The tests' RabbitMQ clean-up knows every queue the services make: a queue it missed
outlives its test (an idle quorum queue still costs the broker work, and a suite run
left sixty-four of them behind, which slowed the broker benchmarks that followed)."""

from __future__ import annotations

import tempfile

from tests.brokers import SERVICE_CONSUMERS
from tests.unit.stack import _builders


def test_every_consumer_a_service_declares_is_cleaned_up() -> None:
    declared: set[str] = set()
    with tempfile.TemporaryDirectory() as datastore:
        for prefix in ("h", "a", "b"):
            settings: dict[str, object] = {
                "hosts": 2,
                "host_prefix": prefix,
                "datastore": datastore,
            }
            for build in _builders(True, True, True, True, settings).values():
                d = build()
                declared |= set(d.commands)
                if d.telemetry is not None or d.observe_telemetry is not None:
                    declared.add(f"{d.name}-telemetry")
    assert declared - set(SERVICE_CONSUMERS) == set()
