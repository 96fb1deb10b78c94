"""Subject wildcards: the compiled matcher a follower uses says what ``matches`` says."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.bus.subjects import matcher, matches

TOKEN = st.sampled_from(["ns", "evt", "vm", "pool", "h1", "web-1", "a_b", "x"])
SUBJECT = st.lists(TOKEN, min_size=1, max_size=5).map(".".join)
PATTERN = st.lists(st.one_of(TOKEN, st.just("*")), min_size=1, max_size=4).flatmap(
    lambda tokens: st.sampled_from([tokens, [*tokens, ">"]]).map(".".join)
)


@given(st.lists(PATTERN, max_size=4), SUBJECT)
def test_the_matcher_agrees_with_matches(patterns: list[str], subject: str) -> None:
    assert matcher(patterns)(subject) == any(matches(p, subject) for p in patterns)


def test_wildcards_take_whole_tokens() -> None:
    wanted = matcher(["ns.evt.vm.>", "ns.evt.outbox.scheduler-high", "ns.evt.*.h1"])
    assert wanted("ns.evt.vm.web-1")
    assert wanted("ns.evt.pool.h1")
    assert wanted("ns.evt.outbox.scheduler-high")
    assert not wanted("ns.evt.vm")
    assert not wanted("ns.evt.outbox.scheduler-highx")
    assert not wanted("ns.evt.pool.h10")
    assert not wanted("nsXevt.vm.a")
