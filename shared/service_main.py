"""The common ``__main__`` of every service: settings, logging, bus, run until a signal."""

from __future__ import annotations

import sys
from collections.abc import Callable

import structlog

from shared.bus import BusError
from shared.bus.factory import bus_from_url
from shared.logs import configure
from shared.metrics import MetricsPortTaken, serve_metrics
from shared.runtime import ServiceDefinition, run_service
from shared.settings import Settings, SettingsError


def main(build: Callable[[Settings], ServiceDefinition]) -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        sys.exit(f"vplane: {err}")
    configure(settings.log_level, settings.log_format)
    if settings.bus_url is None:
        sys.exit("vplane: VPLANE_BUS_URL is not set (for example nats://127.0.0.1:4222)")
    definition = build(settings)
    try:
        serve_metrics(settings.metrics_port)
    except MetricsPortTaken as err:
        sys.exit(f"vplane {definition.name}: {err} (VPLANE_METRICS_PORT)")
    bus = bus_from_url(
        settings.bus_url,
        settings.namespace,
        client_name=definition.name,
        replicas=settings.nats_replicas,
    )
    try:
        run_service(definition, bus, settings.instance)
    except BusError as err:
        structlog.get_logger("vplane").error("service cannot run", error=str(err))
        sys.exit(f"vplane {definition.name}: {err}")
