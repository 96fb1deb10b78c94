"""The service runtime: rebuild from the log, resume consumers, carry decisions out.

A service is data (``ServiceDefinition``): a fold, and functions that decide and return
outcomes. The runtime owns every effect: it appends an outcome's events as one unit,
counts its cause answered only once that unit is in the log, sends the outcome's
commands after it (the outbox, ``shared/outbox.py``), asks its queries after those and
hands each reply back to the service as an input, decides again on a version conflict,
and supervises the service's loops.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog

from schemas import Envelope, Message, Query, Reply
from schemas.queries import QueryFailed
from schemas.service import CommandsIssued, ServiceStarted, ServiceStopped
from shared.bus import (
    Bus,
    BusUnavailable,
    ConcurrencyError,
    ConsumerSpec,
    Delivery,
    Logged,
    PoisonMessage,
    QueryHandler,
    RequestFailed,
    Stream,
    Subscription,
)
from shared.bus.protocol import DataFlows
from shared.bus.subjects import event_subject, matcher, matches, stream_subject
from shared.carried import Carried
from shared.clock import StackClock
from shared.command_groups import CommandGroups, DecideGroup
from shared.effects import Batch, batches, first_id
from shared.loops import Loop, LoopFailed, LoopStats, supervise
from shared.metrics import QUERIES_ASKED, QUERIES_FAILED, REPLIES_FAILED
from shared.outbox import Outbox
from shared.outcome import Outcome, Outcomes, Plan, as_list, attempt
from shared.tasks import cancel_and_wait

log = structlog.get_logger("vplane.runtime")

OBSERVED_KEPT = 10_000
DRAIN_STEP_SECONDS = 5.0
# Conflicts on one decision before it is given up (and its cause retried later).
MAX_CONFLICTS = 20
OUTBOX_RETRY_SECONDS = 1.0
# How often commands for targets nobody serves are looked for, and how long one waits
# first (a target registered meanwhile is then in the fold).
UNCLAIMED_SECONDS = 0.5
UNCLAIMED_AFTER = 0.25
# How long an outcome's query waits for its reply before it counts as failed.
QUERY_TIMEOUT_SECONDS = 5.0
# Allocations between two collections of the youngest generation (Python's default: 700).
GC_YOUNG = 20_000

Fold = Callable[[int, Envelope[Message]], None]
Decide = Callable[[Envelope[Message]], Awaitable[Outcomes]]
# Bulk I/O a command needs before it is decided (a data flow read), outside the lock;
# returns the decision to take once the lock is held.
Prepare = Callable[
    [Envelope[Message], DataFlows], Awaitable[Callable[[], Awaitable[Outcomes]] | None]
]
Setup = Callable[[], Awaitable[Outcomes | None]]
# Decides on the reply to a query an outcome asked: (the query as asked, its reply).
Replies = Callable[[Envelope[Message], Envelope[Message]], Awaitable[Outcomes]]


@dataclass
class ServiceDefinition:
    """Everything a service is made of; each service's bootstrap fills one in.

    ``fold`` is applied to every event of ``fold_filters`` in log order, first while
    rebuilding and then for every event this service appends. ``decide`` answers a
    command with outcomes; the runtime makes that exactly-once.
    """

    name: str
    fold: Fold | None = None
    fold_filters: tuple[str, ...] = ()
    # Keep folding other producers' events as they are appended, not only at start.
    follow: bool = False
    decide: Decide | None = None
    # Answers the commands a consumer delivered together, each decided on the state the
    # answers before it leave, one outcome per command naming it as cause; their answers
    # land in one append (group commit). It may answer only the first few (at least
    # one): the rest come again once those have landed. Without it, commands are decided
    # one by one.
    decide_group: DecideGroup | None = None
    prepare: Prepare | None = None
    # Durable command consumers by name: several processes of one service share a
    # consumer of the same name, or each takes its own (hosts addressed to it).
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    queries: dict[str, QueryHandler] = field(default_factory=dict)
    # Answers a telemetry sample (a durable consumer of the telemetry stream,
    # ``telemetry_filters``); a PoisonMessage dead-letters the sample.
    telemetry: Decide | None = None
    telemetry_filters: tuple[str, ...] = ("host.>",)
    # Or only notes a sample (a heartbeat), deciding nothing: no lock, no outcome to land;
    # it says whether it took the sample (only then does its time move the clock).
    observe_telemetry: Callable[[Envelope[Message]], bool] | None = None
    # Runs once the state is rebuilt and before any command is taken.
    setup: Setup | None = None
    loops: list[Loop] = field(default_factory=list)
    # The stack's emulated time: the runtime shows it every event it folds and every
    # sample it takes, and stamps what the service writes with it.
    clock: StackClock = field(default_factory=StackClock)
    # What its decisions read besides the log, carried over a restart (shared/carried.py).
    carried: Carried | None = None
    # Commands for targets of this service that nobody serves (never registered) wait in
    # no consumer's queue: the runtime hands them to ``decide``, which refuses them.
    unclaimed: Unclaimed | None = None
    # Answers the replies to the queries its outcomes ask (``Outcome.queries``), under
    # the decision lock like a command; needed by any service that asks.
    replies: Replies | None = None


@dataclass(frozen=True)
class Unclaimed:
    """Where such commands wait (``host.*.>``: ``*`` is the target) and which targets
    the service knows."""

    pattern: str
    known: Callable[[str], bool]


class ServiceFailed(Exception):
    """The service cannot go on (a loop keeps failing); its supervisor restarts it."""


class NoReplies(Exception):
    """An outcome asks queries, but the service has no ``replies`` to hand the answers to."""


def _package_version() -> str:
    try:
        return version("vplane")
    except PackageNotFoundError:
        return "0+unknown"


class Runtime:
    def __init__(self, definition: ServiceDefinition, bus: Bus, instance: str) -> None:
        self.definition = definition
        self.bus = bus
        self.instance = instance
        self.handled = 0
        self.conflicts = 0
        # Decisions taken again once the fold had caught up with the log (Outcome.stale).
        self.caught_up = 0
        # Appends whose fold the service took from its decision (Outcome.folded).
        self.adopted = 0
        # Queries asked, those that got no answer, and replies ``replies`` failed on.
        self.asked = 0
        self.asks_failed = 0
        self.replies_failed = 0
        self._asks: set[asyncio.Task[None]] = set()
        self.loop_stats: dict[str, LoopStats] = {
            loop.name: LoopStats() for loop in definition.loops
        }
        self._applied_seq = 0
        self._rebuilt_seq = 0
        # The last entry the follower delivered (or the rebuild's last).
        self._followed = 0
        self._observed: set[int] = set()
        self._observed_limit = OBSERVED_KEPT
        # Causes whose answer is in the log (a redelivery changes nothing), and the ids
        # of this service's own events there (an outcome already carried out is skipped).
        self._answered: set[uuid.UUID] = set()
        self._landed: set[uuid.UUID] = set()
        self._outbox = Outbox(bus, definition.name, definition.clock.now)
        # Appends that failed without saying whether they landed (an acknowledgement
        # lost): by the id of each outcome's first envelope, its bookkeeping, and by
        # outbox record, nothing; done and sent, as logged, once the log shows them.
        self._in_doubt: dict[uuid.UUID, Sequence[Callable[[], None]]] = {}
        # Held while deciding and carrying out: a query waits for it, so whoever saw the
        # answering event in the log also sees it in every query.
        self._deciding = asyncio.Lock()
        self._groups = (
            None
            if definition.decide_group is None
            else CommandGroups(self, definition.decide_group)
        )
        self._subs: list[Subscription] = []
        filters = definition.fold_filters
        self._wanted = (
            matcher([stream_subject(bus.namespace, Stream.EVENTS, f) for f in filters])
            if filters
            else lambda _subject: True
        )
        self._loops: list[asyncio.Task[None]] = []
        # What the service's last announcement in the log carried: given back only when
        # that is a ServiceStopped (no start came after it).
        self._carried: dict[str, Any] | None = None
        self.ready = asyncio.Event()

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def answered(self) -> set[uuid.UUID]:
        """The commands and samples whose answer is in the log (or needs none)."""
        return self._answered

    @property
    def healthy(self) -> bool:
        """Ready, and its broker is there."""
        return self.ready.is_set() and self.bus.available

    async def run(self, stop: asyncio.Event) -> None:
        structlog.contextvars.bind_contextvars(service=self.name, instance=self.instance)
        await self.bus.start()
        failure: BaseException | None = None
        try:
            rebuilt = await self._rebuild()
            self._rebuilt_seq, self._observed = self._applied_seq, set()
            self._followed = self._rebuilt_seq
            if self.definition.carried is not None and self._carried is not None:
                self.definition.carried.load(self._carried)
            # Sending again is harmless: a command's id is fixed, and a handler acknowledges
            # a command whose answer is in the log without acting.
            await self._outbox.resend_last()
            if self.definition.setup is not None:
                setup = self.definition.setup
                async with self._deciding:
                    await self.settle(setup)
                await self.sent()
            await self._start_consumers()
            # Announced once its consumers are in place: from now on it takes commands.
            await self._announce(
                ServiceStarted(
                    service=self.name,
                    instance=self.instance,
                    version=_package_version(),
                    rebuilt_from_seq=1,
                    rebuilt_events=rebuilt,
                )
            )
            self.ready.set()
            log.info("service ready", rebuilt_events=rebuilt, log_seq=self._applied_seq)
            failure = await self._until_stopped(stop)
            self.ready.clear()
            await self._drain()
            reason = "signal" if failure is None else f"failed: {failure}"
            carried = self.definition.carried
            await self._announce(
                ServiceStopped(
                    service=self.name,
                    instance=self.instance,
                    reason=reason,
                    handled=self.handled,
                    carried=None if carried is None else carried.save(),
                )
            )
            log.info(
                "service stopped",
                handled=self.handled,
                conflicts=self.conflicts,
                caught_up=self.caught_up,
                adopted=self.adopted,
                asked=self.asked,
                asks_failed=self.asks_failed,
                reason=reason,
            )
        finally:
            await self.bus.close()
        if failure is not None:
            raise ServiceFailed(str(failure)) from failure

    async def _until_stopped(self, stop: asyncio.Event) -> BaseException | None:
        """Wait for the signal, or for a loop that gave up."""
        stopped = asyncio.create_task(stop.wait())
        waiting: set[asyncio.Task[Any]] = {stopped, *self._loops}
        while True:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                return None
            for task in done:
                if not task.cancelled() and isinstance(task.exception(), LoopFailed):
                    stopped.cancel()
                    return task.exception()

    async def _rebuild(self) -> int:
        count = 0
        async for entry in self.bus.replay(filters=self._replayed()):
            if entry.envelope is None:
                log.warning(
                    "skipping undecodable event in the log", seq=entry.seq, error=entry.error
                )
                continue
            self._observe(entry)
            count += 1
        return count

    def _replayed(self) -> tuple[str, ...]:
        """The fold's filters, and the service's own records: the outbox tells what was
        sent, and its announcements carry the emulated time it had reached when it
        stopped (so that a restart goes on from there)."""
        filters = self.definition.fold_filters
        if not filters:
            return filters
        own = (f"outbox.{self.name}", f"service.{self.name}")
        # Brokers refuse filters that overlap.
        return (*filters, *(s for s in own if not any(matches(f, s) for f in filters)))

    def _seen(self, seq: int) -> bool:
        """Whether the entry at ``seq`` is folded already. Own appends are folded as they
        are made and may overtake entries the follower has yet to deliver, so entries are
        recognised by sequence."""
        if seq <= self._rebuilt_seq:
            return True
        if self.definition.follow:
            return seq in self._observed
        # Without a follower only own appends arrive, in order: a high-water mark will do.
        return seq <= self._applied_seq

    def _observe(self, entry: Logged, *, folded: bool = False) -> None:
        """Fold an entry once (``folded``: the service's state holds it already)."""
        # Before the entry is decoded: most entries seen twice are the service's own.
        if self._seen(entry.seq):
            return
        env = entry.envelope
        if env is None:
            return
        if self.definition.follow:
            self._observed.add(entry.seq)
        if env.producer == self.name:
            self._own(env)
        self.definition.clock.saw(env.sim_time)
        if not folded and self.definition.fold is not None and self._wanted(entry.subject):
            self.definition.fold(entry.seq, env)
        self._applied_seq = max(self._applied_seq, entry.seq)

    def _own(self, env: Envelope[Message]) -> None:
        """The bookkeeping of one of the service's own entries in the log."""
        if isinstance(env.data, ServiceStopped):
            self._carried = env.data.carried
        elif isinstance(env.data, ServiceStarted):
            self._carried = None
        self._landed.add(env.id)
        for done in self._in_doubt.pop(env.id, ()):
            done()
        if env.causation_id is not None:
            self._answered.add(env.causation_id)
        if isinstance(env.data, CommandsIssued):
            self._outbox.logged(env.id, env.data)

    async def _start_consumers(self) -> None:
        d = self.definition
        if d.follow and d.fold is not None:
            # With the outbox: an append whose acknowledgement was lost is learnt from it.
            # From where the rebuild stopped, not after the setup's own appends: another
            # process may have appended in between (a hosts process registering its
            # hosts while this one starts); own entries come again and are skipped.
            self._subs.append(
                await self.bus.watch(
                    Stream.EVENTS, self._replayed(), self._follow, from_seq=self._rebuilt_seq + 1
                )
            )
        if d.decide is not None:
            for consumer, filters in d.commands.items():
                spec = ConsumerSpec(name=consumer, stream=Stream.COMMANDS, filters=filters)
                if self._groups is not None:
                    spec = replace(spec, in_flight=spec.batch)
                self._subs.append(await self.bus.consume(spec, self._on_command))
        if d.telemetry is not None or d.observe_telemetry is not None:
            spec = ConsumerSpec(
                name=f"{d.name}-telemetry", stream=Stream.TELEMETRY, filters=d.telemetry_filters
            )
            self._subs.append(await self.bus.consume(spec, self._on_telemetry))
        for target, handler in d.queries.items():
            self._subs.append(await self.bus.serve(target, self._after_commands(handler)))
        loops = [*d.loops, Loop("outbox", self._outbox.retry, OUTBOX_RETRY_SECONDS)]
        if d.unclaimed is not None and d.decide is not None:
            loops.append(Loop("unclaimed", self._refuse_unclaimed, UNCLAIMED_SECONDS, False))
        self._loops = [
            asyncio.create_task(
                supervise(
                    loop,
                    self._step,
                    self.loop_stats.setdefault(loop.name, LoopStats()),
                    excused=self._broker_away,
                ),
                name=f"loop-{loop.name}",
            )
            for loop in loops
        ]

    def _broker_away(self, err: Exception) -> bool:
        return isinstance(err, BusUnavailable) or not self.bus.available

    async def _follow(self, entry: Logged) -> None:
        if entry.seq in self._observed:
            # One of its own appends, folded as it was made: nothing changes, so this
            # need not wait for the decision in progress (most entries are these).
            self._followed_to(entry.seq)
            return
        # Under the lock, a decision in progress never sees the fold change beneath it.
        async with self._deciding:
            self._observe(entry)
            self._followed_to(entry.seq)

    def _followed_to(self, seq: int) -> None:
        # The follower delivers in order, each entry once the one before it is folded:
        # nothing at or below this entry comes again. What is left in ``_observed`` are
        # own appends ahead of the follower, and those it does not follow (pruned now
        # and then).
        self._followed = max(self._followed, seq)
        self._observed.discard(seq)
        if len(self._observed) > self._observed_limit:
            self._observed = {s for s in self._observed if s > seq}
            self._observed_limit = max(OBSERVED_KEPT, 2 * len(self._observed))

    def _after_commands(self, handler: QueryHandler) -> QueryHandler:
        async def answer(env: Envelope[Message]) -> Reply:
            async with self._deciding:
                return await handler(env)

        return answer

    async def _on_command(self, env: Envelope[Message], _delivery: Delivery) -> None:
        d = self.definition
        assert d.decide is not None
        if env.id in self._answered:
            log.info("command already answered, acknowledging", attempt=_delivery.attempt)
            return
        if self._groups is not None:
            await self._groups.answer(env)
            self.handled += 1
            return
        decide: Callable[[], Awaitable[Outcomes]] = lambda: d.decide(env)  # type: ignore[misc]  # noqa: E731
        if d.prepare is not None:
            # Bulk I/O outside the lock: queries are not held up by a data flow.
            prepared = await d.prepare(env, self.bus)
            decide = prepared or decide
        async with self._deciding:
            if env.id not in self._answered:
                await self.settle(decide, answers=env.id)
        await self.sent()
        self.handled += 1

    async def _on_telemetry(self, env: Envelope[Message], _delivery: Delivery) -> None:
        telemetry, observe = self.definition.telemetry, self.definition.observe_telemetry
        clock = self.definition.clock
        if observe is not None and observe(env):
            clock.saw(env.sim_time)
        if telemetry is None:
            return
        async with self._deciding:
            if env.id not in self._answered:
                before = clock.now()
                # The sample's decisions are stamped with its time; bad input moves nothing.
                clock.saw(env.sim_time)
                try:
                    await self.settle(lambda: telemetry(env), answers=env.id)
                except PoisonMessage:
                    clock.unsee(before)
                    raise
        await self.sent()

    async def _step(self, loop: Loop) -> None:
        if loop.exclusive:
            async with self._deciding:
                await self._carry_plan(await loop.step())
        else:
            plan = await loop.step()
            async with self._deciding:
                await self._carry_plan(plan)
        await self.sent()

    async def _carry_plan(self, plan: Outcomes | Plan | None) -> None:
        """A step's outcomes (carried out together), or its decisions one after another,
        each taken once the one before it has landed."""
        items: Plan = [plan] if isinstance(plan, Outcome) else list(plan or ())
        together: list[Outcome] = []
        for item in items:
            if isinstance(item, Outcome):
                together.append(item)
                continue
            await self.carry_out(together)
            together = []
            await self.settle(item)
        await self.carry_out(together)

    def exclusive(self) -> asyncio.Lock:
        """The lock decisions are taken under (commands, samples, loop steps)."""
        return self._deciding

    async def _refuse_unclaimed(self) -> None:
        unclaimed = self.definition.unclaimed
        assert unclaimed is not None
        await self.bus.unclaimed(
            unclaimed.pattern, unclaimed.known, self._on_command, older_than=UNCLAIMED_AFTER
        )

    async def settle(
        self,
        decide: Callable[[], Awaitable[Outcomes | None] | Outcomes | None],
        *,
        answers: uuid.UUID | None = None,
    ) -> None:
        """Decide and carry out under the service's lock; on a version conflict, catch up
        with the aggregates the decision relied on and decide again (``attempt`` tells
        the decision how often). This is the reservation primitive: a decision that
        reserves says so with its outcome's ``expect``. The runtime calls it for every
        command, sample and loop step; callers outside those hold ``exclusive()``."""
        caught_up = False
        for conflicts in range(MAX_CONFLICTS + 1):
            outcomes = await _decided(decide, conflicts)
            stale = tuple(dict.fromkeys(f for o in outcomes for f in o.stale))
            if stale and not caught_up:
                caught_up = True
                self.caught_up += 1
                log.debug("decided behind the log; folding its latest", filters=stale)
                await self.catch_up(stale, self._folded_to() + 1)
                outcomes = await _decided(decide, conflicts)
            try:
                await self.carry_out(outcomes)
            except ConcurrencyError as err:
                self.conflicts += 1
                log.info(
                    "decision met a newer log; deciding again",
                    conflict=str(err),
                    detail=getattr(err, "__notes__", None),
                )
                await self._catch_up_with(outcomes)
                continue
            if answers is not None:
                self._answered.add(answers)
            return
        raise ConcurrencyError("(several)", 0, None)

    def _folded_to(self) -> int:
        """The log sequence up to which every entry of the fold's filters is folded: the
        follower's position (own appends may be folded further on)."""
        return self._followed if self.definition.follow else self._applied_seq

    async def _catch_up_with(self, outcomes: Sequence[Outcome]) -> None:
        expected = {a: v for o in outcomes for a, v in o.expect.items()}
        if expected:
            filters = tuple(a.replace("/", ".") for a in expected)
            await self.catch_up(filters, min(expected.values()) + 1)

    async def carry_out(self, outcomes: Outcomes) -> None:
        """Append each batch of events whole, then send its commands and samples; once
        all have landed, ask the outcomes' queries."""
        listed = as_list(outcomes)
        asking = [o for o in listed if o.queries]
        if asking and self.definition.replies is None:
            # Before anything lands: a decision that can never hear its answers is a bug.
            kinds = sorted({q.type_name() for o in asking for q in o.queries})
            raise NoReplies(f"{self.name} asks {', '.join(kinds)} but has no replies handler")
        for batch in batches(
            self.name, listed, self.definition.clock.now(), self._landed.__contains__
        ):
            for outcome in batch.outcomes:
                for flow, chunks in outcome.data.items():
                    await self.bus.put_data(flow, list(chunks))
            await self._outbox.before(batch)
            landed_before = bool(batch.events) and await self._append(batch)
            for outcome in batch.outcomes:
                for done in outcome.on_landed:
                    done()
            self._outbox.after(batch, landed_before=landed_before)
            for outcome in batch.outcomes:
                for sample in outcome.samples:
                    when = (
                        self.definition.clock.now()
                        if outcome.sim_time is None
                        else outcome.sim_time
                    )
                    await self.bus.emit(Envelope.wrap(sample, producer=self.name, sim_time=when))
        # Also those of outcomes that were in the log already (decided again): a reply
        # is what the service waits for, and asking again changes nothing.
        for outcome in asking:
            for query in outcome.queries:
                self._ask(outcome, query)

    def _ask(self, outcome: Outcome, query: Query) -> None:
        when = self.definition.clock.now() if outcome.sim_time is None else outcome.sim_time
        # A fresh id, not one derived from the outcome: derived ids let the log keep one
        # copy of a fact decided twice, but a query is in no log and deduplicated by
        # nobody, and a step asking the same thing again (same cause and key) while the
        # first ask is in flight must be told apart by the reply's causation id.
        asked = Envelope.wrap(
            query, producer=self.name, caused_by=outcome.cause, sim_time=when, id=uuid.uuid4()
        )
        task = asyncio.create_task(self._asking(asked), name=f"ask-{asked.type}")
        self._asks.add(task)
        task.add_done_callback(self._asks.discard)

    async def _asking(self, asked: Envelope[Message]) -> None:
        """Ask a query without the decision lock, then decide on its reply under it."""
        replies = self.definition.replies
        assert replies is not None
        # The commands decided with it go out first: the answer may depend on them.
        await self.sent()
        self.asked += 1
        QUERIES_ASKED.labels(self.name).inc()
        try:
            reply = await self.bus.request(asked, timeout=QUERY_TIMEOUT_SECONDS)
        except Exception as err:
            # Every way of getting no answer is one the service hears about, and decides on.
            self.asks_failed += 1
            QUERIES_FAILED.labels(self.name).inc()
            reason = str(err) if isinstance(err, RequestFailed) else f"{type(err).__name__}: {err}"
            log.warning("query got no answer", query=asked.type, to=asked.subject, reason=reason)
            reply = Envelope.wrap(
                QueryFailed(reason=reason),
                producer=self.name,
                subject=asked.subject,
                caused_by=asked,
                sim_time=asked.sim_time,
            )
        try:
            async with self._deciding:
                await self.settle(lambda: replies(asked, reply))
            await self.sent()
        except Exception as err:
            # Like a command whose answer failed to land, but nothing delivers a reply
            # again: the service asks again when it finds the answer missing.
            self.replies_failed += 1
            REPLIES_FAILED.labels(self.name).inc()
            if self._broker_away(err):
                log.warning("reply not decided: broker away", query=asked.type, error=repr(err))
            else:
                log.exception("deciding on a reply failed", query=asked.type, error=repr(err))

    async def _append(self, batch: Batch) -> bool:
        """Append a batch and fold it; True when it was in the log already."""
        records = {
            e.id
            for e in batch.events
            if isinstance(e.data, CommandsIssued) and e.id not in batch.carried
        }
        try:
            results = await self.bus.append_batch(batch.events, expected=batch.expected)
        except ConcurrencyError:
            raise
        except Exception:
            # Perhaps landed all the same (an acknowledgement lost): whoever sees it in
            # the log (the follower, a catch-up) does its bookkeeping and sends its
            # commands, as logged.
            for outcome in batch.outcomes:
                self._in_doubt[first_id(self.name, outcome)] = outcome.on_landed
            self._outbox.doubt(records)
            raise
        # Decided again and in the log: this decision's bookkeeping is what counts.
        for outcome in batch.outcomes:
            self._in_doubt.pop(first_id(self.name, outcome), None)
        if any(r.duplicate for r in results):
            # Appended before: fold what is there, and send the commands the log holds,
            # not those decided again.
            self._outbox.doubt(records)
            await self.catch_up(self._replayed(), self._applied_seq + 1)
            return True
        self._outbox.settled(records)
        entries = [
            Logged(result.seq, event_subject(self.bus.namespace, env), b"", env)
            for env, result in zip(batch.events, results, strict=True)
        ]
        folded = self._adopted(batch, entries)
        for entry in entries:
            self._observe(entry, folded=folded)
        return False

    def _adopted(self, batch: Batch, entries: list[Logged]) -> bool:
        """Whether the service took the fold its decision made of these entries (every
        outcome of the batch from one such fold, none of the entries folded yet)."""
        folds = {id(o.folded): o.folded for o in batch.outcomes}
        folded = next(iter(folds.values())) if len(folds) == 1 else None
        if folded is None or any(self._seen(e.seq) for e in entries):
            return False
        adopted = folded.adopt(
            [(e.seq, e.envelope) for e in entries if e.envelope and self._wanted(e.subject)]
        )
        self.adopted += adopted
        return adopted

    async def sent(self) -> None:
        """Wait until the commands carried out so far are sent (or failed to be: the
        outbox tries again)."""
        await self._outbox.sent()

    async def catch_up(self, filters: tuple[str, ...], from_seq: int) -> None:
        """Fold what the log holds of ``filters`` from ``from_seq`` on, ahead of the follower."""
        async for entry in self.bus.replay(from_seq=from_seq, filters=filters):
            self._observe(entry)

    async def _announce(self, event: ServiceStarted | ServiceStopped) -> None:
        async with self._deciding:
            await self.carry_out(Outcome(events=[event], key=f"{self.instance}/{uuid.uuid4()}"))

    async def _drain(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            await self._bounded(cancel_and_wait(task), f"loop {task.get_name()}", task)
        for sub in self._subs:
            await self._bounded(sub.stop(), f"subscription {type(sub).__name__}")
        # After whatever could still ask (loops, consumers); until none is left, as an
        # ask whose reply has been decided on may have asked again.
        while self._asks:
            ask = self._asks.pop()
            await self._bounded(cancel_and_wait(ask), f"query {ask.get_name()}", ask)
        sending = self._outbox.sending
        if sending is not None:
            await self._bounded(self.sent(), "sending commands", sending)

    async def _bounded(
        self, step: Awaitable[object], what: str, task: asyncio.Task[Any] | None = None
    ) -> None:
        """Stopping never hangs the process: a step that takes too long is left behind
        (``task``: the one it stops, whose stack the warning shows)."""
        try:
            async with asyncio.timeout(DRAIN_STEP_SECONDS):
                await step
        except asyncio.CancelledError:
            pass
        except LoopFailed:
            pass
        except TimeoutError:
            where = ""
            if task is not None:
                frames = task.get_stack(limit=8)
                where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            log.warning("stopping took too long, leaving it", step=what, at=where)


async def _decided(
    decide: Callable[[], Awaitable[Outcomes | None] | Outcomes | None], conflicts: int
) -> list[Outcome]:
    """A decision's outcomes, taken knowing how many version conflicts it met so far."""
    token = attempt.set(conflicts)
    try:
        decided = decide()
        return as_list(await decided if inspect.isawaitable(decided) else decided)
    finally:
        attempt.reset(token)


async def _kept_once_ready(runtime: Runtime) -> None:
    """What the rebuild made is kept for good: the collector no longer scans it."""
    await runtime.ready.wait()
    gc.freeze()


def run_service(definition: ServiceDefinition, bus: Bus, instance: str) -> None:
    """Run a service until SIGTERM or SIGINT; the entry point of every ``__main__``.
    A service that fails exits non-zero, so that its supervisor starts it again."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runtime = Runtime(definition, bus, instance)
        rebuilt = asyncio.create_task(_kept_once_ready(runtime))
        try:
            await runtime.run(stop)
        finally:
            rebuilt.cancel()

    # A service's state is large and lives as long as the process; most of what it makes
    # besides is freed as soon as it is dropped. Collected every 700 allocations, the
    # state was scanned again and again: at a thousand placements a second, the
    # scheduler spent a tenth of its time collecting, in pauses of up to 100 ms.
    gc.set_threshold(GC_YOUNG, 20, 50)
    try:
        asyncio.run(main())
    except ServiceFailed as err:
        sys.exit(f"vplane {definition.name}: {err}")
