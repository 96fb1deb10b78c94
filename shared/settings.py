"""Settings from the environment (``VPLANE_*``); nothing reads os.environ elsewhere."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "VPLANE_"


class SettingsError(Exception):
    """An environment variable holds a value vplane cannot use."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bus_url: str | None = Field(None, description="nats://, amqp:// or memory://")
    namespace: str = Field("vplane", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    log_level: str = Field("info", pattern=r"^(debug|info|warning|error)$")
    log_format: str = Field("auto", pattern=r"^(auto|json|console)$")
    instance: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    hosts: int = Field(3, ge=1, le=10_000)
    host_prefix: str = Field(
        "h",
        pattern=r"^(auto|[A-Za-z][A-Za-z0-9_-]{0,15})$",
        description="names this process's hosts <prefix>1..N; 'auto' uses the machine name",
    )
    host_cpu_cores: int = Field(
        16, ge=1, le=1024, description="cores of each emulated host (2.4 GHz each)"
    )
    tick_seconds: float = Field(1.0, gt=0, le=3600)
    speed: float = Field(1.0, gt=0, le=10_000, description="emulated seconds per wall second")
    seed: int = 0
    priority: str = Field("high", pattern=r"^(high|low)$", description="which scheduler")
    round_seconds: float = Field(1.0, gt=0, le=3600, description="a scheduling round")
    ha_failures: int = Field(
        1, ge=0, le=100, description="hosts whose high-priority VMs the spare can restart"
    )
    failure_ticks: int = Field(
        5, ge=1, le=1000, description="telemetry ticks a host may miss before it is declared failed"
    )
    rebalance_threshold: float = Field(
        0.5, gt=0, le=1, description="host load spread (0-1) that triggers rebalancing; 1: never"
    )
    migration_mbps: float = Field(2_500, gt=0, description="bandwidth a live migration reserves")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="serves Prometheus /metrics on 127.0.0.1 here; 0: off"
    )
    sharing_pages_per_second: float = Field(
        5_000,
        gt=0,
        description="pages the page-sharing daemon digests per emulated second, per host "
        "(KSM's default scans 5,000)",
    )
    data_dir: str = Field(".vplane", description="where vplane keeps its files")
    datastore: str | None = Field(
        None,
        description="the directory every hosts process shares for VM disks; "
        "default: datastore/<namespace> under the data dir",
    )
    datastore_gib: float = Field(1024, gt=0, description="the datastore's capacity")
    check_folds: bool = Field(
        False,
        description="check every fold a scheduler takes from its decisions against a fold "
        "of the log (slow; the tests set it)",
    )
    nats_replicas: int = Field(
        1, ge=1, le=5, description="copies of each JetStream stream (3 on a cluster)"
    )

    def datastore_dir(self) -> Path:
        if self.datastore is not None:
            return Path(self.datastore)
        return Path(self.data_dir) / "datastore" / self.namespace

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        source = os.environ if env is None else env
        values: dict[str, object] = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in source.items()
            if key.startswith(ENV_PREFIX)
            and key[len(ENV_PREFIX) :].lower() in cls.model_fields
            # An empty variable means "not set", as shells write it (VPLANE_BUS_URL=).
            and value != ""
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            field = ENV_PREFIX + ".".join(str(p) for p in first["loc"]).upper()
            raise SettingsError(f"{field}: {first['msg']}") from None
