"""Wire the page-sharing daemon: it follows the VMs in the log, scans each host's pages on
the stack's emulated clock (asking the host for digests), proposes what matches, answers
the hosts' samples of shared-page reads with private copies, and forks VMs."""

from __future__ import annotations

from schemas import Envelope, Message, Reply
from schemas.memory import PagesShared, PagesUnshared
from schemas.service import CommandRejected, RejectionCode
from schemas.sharing import (
    ForkVm,
    ListSharing,
    SetSharingPolicy,
    SharingPassCompleted,
    SharingPolicySet,
    UnshareReason,
)
from services.sharing import reads
from services.sharing.forks import fork
from services.sharing.scanning import NAME, STEP_SECONDS, Holder, ask_digests, compared
from services.sharing.state import Sharing, evolve
from services.sharing.views import report
from shared.bus import PoisonMessage
from shared.loops import Loop
from shared.metrics import (
    SHARING_PAIRS,
    SHARING_PASSES,
    SHARING_PRIVATE_COPIES,
    SHARING_SAVED,
)
from shared.outcome import Outcome, answer
from shared.runtime import ServiceDefinition
from shared.samples import host_sample
from shared.settings import Settings


def build(settings: Settings) -> ServiceDefinition:
    holder = Holder(settings.sharing_pages_per_second)
    # Emulated seconds a hosts tick stands for: read windows are counted in ticks.
    tick_s = settings.tick_seconds * settings.speed
    holder.state = Sharing(policy=reads.default_policy(tick_s))

    def fold(_seq: int, env: Envelope[Message]) -> None:
        holder.state = evolve(holder.state, env)
        if isinstance(env.data, PagesUnshared):
            holder.asked_private.difference_update((env.data.vm, p) for p in env.data.pages)
        if holder.live:
            _count(env.data)

    async def scan_step() -> list[Outcome]:
        now = definition.clock.now()
        return ask_digests(holder, now)

    async def on_reply(asked: Envelope[Message], reply: Envelope[Message]) -> list[Outcome]:
        return compared(holder, asked, reply, definition.clock.now())

    async def on_telemetry(env: Envelope[Message]) -> list[Outcome]:
        sample = host_sample(env, holder.state.hosts, "page-sharing daemon")
        holder.samples[sample.host] = sample
        SHARING_SAVED.labels(host=sample.host).set(sample.mem_shared_saved_mib)
        now = definition.clock.now()

        def skip(vm: str, page: int) -> bool:
            asked = (vm, page) in holder.asked_private
            return asked or holder.state.held.get((vm, page), 0.0) > now

        seen = reads.observe(holder.windows.get(sample.host, {}), holder.state.policy, sample, skip)

        def keep() -> None:
            holder.windows[sample.host] = seen.window
            for cmd in seen.commands:
                holder.asked_private.update((cmd.vm, p) for p in cmd.pages)

        return [Outcome(commands=seen.commands, cause=env, on_landed=[keep])]

    async def on_command(env: Envelope[Message]) -> Outcome:
        match env.data:
            case ForkVm():
                return fork(holder.state, env)
            case SetSharingPolicy():
                problem = reads.policy_problem(env.data.policy, tick_s)
                if problem is not None:
                    refused = CommandRejected.of(env, RejectionCode.INVALID_REQUEST, problem)
                    return answer(env, refused)
                return answer(env, SharingPolicySet(policy=env.data.policy))
        raise PoisonMessage(f"the page-sharing daemon does not handle {env.type}")

    async def query(env: Envelope[Message]) -> Reply:
        if isinstance(env.data, ListSharing):
            kept = {host: scan.bookkeeping_bytes() for host, scan in holder.scans.items()}
            return report(holder.state, holder.samples, kept, holder.rate)
        raise PoisonMessage(f"the page-sharing daemon does not answer {env.type}")

    async def setup() -> None:
        holder.live = True

    definition = ServiceDefinition(
        name=NAME,
        setup=setup,
        fold=fold,
        # The VMs (and hosts) it may share pages of, its pages' answers, its own record.
        fold_filters=("host.>", "vm.>", "memory.>", "sharing.>"),
        follow=True,
        decide=on_command,
        commands={"sharing-commands": ("sharing.>",)},
        telemetry=on_telemetry,
        queries={"sharing": query},
        replies=on_reply,
        loops=[Loop("scan", scan_step, every=STEP_SECONDS)],
        carried=holder,
    )
    return definition


def _count(event: Message) -> None:
    match event:
        case PagesShared():
            SHARING_PAIRS.labels(host=event.host).inc(len(event.pairs))
        case SharingPassCompleted():
            SHARING_PASSES.labels(host=event.host).inc()
        case PagesUnshared() if event.reason is not UnshareReason.REQUESTED:
            SHARING_PRIVATE_COPIES.labels(host=event.host, reason=event.reason.value).inc(
                event.copied
            )
