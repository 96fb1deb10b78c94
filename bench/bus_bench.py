"""Throughput and latency of vplane's bus next to the raw client, on NATS and RabbitMQ.

* NATS: one embedded nats-server (temporary data dir, free loopback port,
  ``sync_interval: always``). Raw nats-py (``js.publish_async`` with ``Nats-Msg-Id``,
  a durable pull consumer doing ``fetch(batch)`` + ``ack()``) against
  ``NatsBus.append_many`` + ``NatsBus.consume``. See ``_nats.py``.
* RabbitMQ: the broker at ``--amqp-url``. Raw aio-pika (confirms, ``mandatory=True``,
  a topic exchange feeding a stream and a quorum queue, ``queue.consume`` + ``ack()``)
  against ``RabbitBus.append_many`` + ``RabbitBus.consume``. See ``_rabbitmq.py``.

Both publish in chunks with every chunk's acknowledgements in flight together, while
their consumer runs concurrently; end to end is first publish to the last message
handled. Latency is then measured at half of vplane's peak, paced in 2 ms ticks.

    .venv/bin/python bench/bus_bench.py [--broker nats|rabbitmq|both] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from _common import TICK, Settings, cancelled_by_sigterm, terminate
from _nats import run_nats
from _rabbitmq import DEFAULT_URL, reachable, run_rabbitmq, shown_url

from shared.broker import EmbeddedNats
from shared.logs import configure as configure_logs

BROKERS = ("nats", "rabbitmq", "both")


@dataclass
class Options:
    broker: str
    nats: Settings
    rabbitmq: Settings
    amqp_url: str
    as_json: bool


def _run(run: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        return asyncio.run(cancelled_by_sigterm(run))
    except asyncio.CancelledError:
        raise SystemExit(128 + signal.SIGTERM) from None


def run_nats_embedded(opts: Settings) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="vplane-bench-") as tmp,
        EmbeddedNats(Path(tmp)) as broker,
    ):
        return _run(run_nats(broker.url, opts))


def report_section(result: dict[str, Any], raw_label: str) -> None:
    """The throughput and latency tables of one broker's result."""
    raw, vp, lat = result["raw"], result["vplane"], result["latency"]
    rows = ((f"{raw_label:<14}", raw, "publish"), ("vplane bus    ", vp, "append "))
    print("throughput, first publish to last message handled and acked:")
    for label, row, verb in rows:
        print(
            f"  {label}: {row['e2e_msgs_per_s']:8.0f} msg/s   "
            f"({verb} {row['publish_msgs_per_s']:6.0f} msg/s, "
            f"client CPU {row['client_cpu_us_per_msg']:4.0f} us/msg)"
        )
    print(f"  ratio         : {result['ratio']:8.2f}         (target >= {result['target_ratio']})")
    for died in vp["consumer_restarts"]:
        print(f"  WARNING       : vplane's consumer loop died and was restarted: {died}")
    print()
    print(
        f"latency, append to handler, at {lat['rate_msgs_per_s']:.0f} msg/s "
        f"(half vplane's peak), {lat['count']} messages paced in {TICK * 1000:.0f} ms ticks:"
    )
    for label, row, _verb in rows:
        cell = lat["raw" if row is raw else "vplane"]
        print(
            f"  {label}: p50 {cell['p50_ms']:7.2f} ms   p99 {cell['p99_ms']:7.2f} ms   "
            f"max {cell['max_ms']:7.2f} ms   (sent at {cell['offered_msgs_per_s']:.0f} msg/s)"
        )
    print(
        f"  ratio         : p50 {lat['ratio_p50']:7.2f}      p99 {lat['ratio_p99']:7.2f}"
        f"      (target: p99 <= {lat['target_ratio_p99']:g})"
    )
    control = lat.get("control")
    if control is not None:
        print(
            f"  {raw_label} + log reader (control): p50 {control['p50_ms']:7.2f} ms   "
            f"p99 {control['p99_ms']:7.2f} ms   max {control['max_ms']:7.2f} ms   "
            f"(read back {lat['control_log_read']} messages)"
        )
        print(
            f"  control / raw : p99 {lat['control_ratio_p99']:7.2f}      "
            f"vplane / control: p99 {lat['ratio_p99_to_control']:7.2f}"
        )


def report(results: dict[str, Any]) -> None:
    first = True
    for key, name, raw_label in (
        ("nats", "NATS", "raw nats-py"),
        ("rabbitmq", "RabbitMQ", "raw aio-pika"),
    ):
        result = results.get(key)
        if result is None:
            continue
        if not first:
            print()
        first = False
        durability = (
            "nats-server, sync_interval: always"
            if key == "nats"
            else "RabbitMQ, stream + quorum queue"
        )
        print(
            f"== {name}: {result['events']} events of {result['payload_bytes']} bytes, "
            f"{durability}, at {result['url']}"
        )
        print(
            f"chunks of {result['chunk']} in flight, consumer batch/prefetch "
            f"{result['consumer_batch']}, consumer running during publish"
        )
        print()
        report_section(result, raw_label)
    if len(results) == 2:
        nats, rabbit = results["nats"], results["rabbitmq"]
        print()
        print("== summary: end to end msg/s, ratio, vplane's latency at half its peak")
        print(f"{'':<34}{'NATS':>8}   {'RabbitMQ':>8}")
        for label, key in (("raw client", "raw"), ("vplane bus", "vplane")):
            print(
                f"  {label:<30}: {nats[key]['e2e_msgs_per_s']:8.0f}   "
                f"{rabbit[key]['e2e_msgs_per_s']:8.0f}"
            )
        print(f"  {'ratio (target >= 0.5)':<30}: {nats['ratio']:8.2f}   {rabbit['ratio']:8.2f}")
        for label, field in (
            ("vplane latency p50 ms", "p50_ms"),
            ("vplane latency p99 ms", "p99_ms"),
        ):
            print(
                f"  {label:<30}: {nats['latency']['vplane'][field]:8.2f}   "
                f"{rabbit['latency']['vplane'][field]:8.2f}"
            )
        print(
            f"  {'latency p99 ratio (target <=3)':<30}: {nats['latency']['ratio_p99']:8.2f}   "
            f"{rabbit['latency']['ratio_p99']:8.2f}"
        )


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--broker", choices=BROKERS, default="both", help="which broker to run")
    parser.add_argument("--events", type=int, default=20_000, help="events per NATS run")
    parser.add_argument(
        "--rabbitmq-events", type=int, default=10_000, help="events per RabbitMQ run"
    )
    parser.add_argument("--warmup", type=int, default=1_000, help="events per warm-up run")
    parser.add_argument("--chunk", type=int, default=500, help="appends in flight together")
    parser.add_argument(
        "--batch", type=int, default=256, help="NATS fetch batch and RabbitMQ prefetch"
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=6.0, help="length of the paced latency run"
    )
    parser.add_argument(
        "--latency-max", type=int, default=10_000, help="most messages in the latency run"
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("VPLANE_BENCH_AMQP_URL", DEFAULT_URL),
        help="RabbitMQ to measure (default $VPLANE_BENCH_AMQP_URL or the local broker)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object at the end")
    ns = parser.parse_args(argv)
    sizes = (ns.events, ns.rabbitmq_events, ns.warmup, ns.chunk, ns.batch, ns.latency_max)
    if min(sizes) < 1:
        parser.error(
            "--events, --rabbitmq-events, --warmup, --chunk, --batch and --latency-max "
            "must be positive"
        )
    if ns.latency_seconds <= 0:
        parser.error("--latency-seconds must be positive")
    nats = Settings(
        events=ns.events,
        warmup=ns.warmup,
        chunk=ns.chunk,
        batch=ns.batch,
        latency_seconds=ns.latency_seconds,
        latency_max=ns.latency_max,
    )
    return Options(
        broker=ns.broker,
        nats=nats,
        rabbitmq=replace(nats, events=ns.rabbitmq_events),
        amqp_url=ns.amqp_url,
        as_json=ns.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    # A plain kill unwinds like Ctrl-C does, so brokers and queues are always cleaned up;
    # inside an event loop it cancels the run instead (see _common.cancelled_by_sigterm).
    signal.signal(signal.SIGTERM, terminate)
    if opts.broker != "nats" and not reachable(opts.amqp_url):
        print(
            f"no RabbitMQ listening at {shown_url(opts.amqp_url)}: start it with "
            "`rabbitmq-server -detached`, pass --amqp-url, or use --broker nats",
            file=sys.stderr,
        )
        return 2
    results: dict[str, Any] = {}
    if opts.broker != "rabbitmq":
        results["nats"] = run_nats_embedded(opts.nats)
    if opts.broker != "nats":
        results["rabbitmq"] = _run(run_rabbitmq(opts.amqp_url, opts.rabbitmq))
    report(results)
    if opts.as_json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
