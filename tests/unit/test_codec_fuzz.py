"""The decoder never fails in an unexpected way, whatever bytes it is given."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import registry
from schemas.envelope import MAX_ENVELOPE_BYTES
from shared.codec import MessageError, decode
from tests.contract.messages import vm_created

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_message_errors(raw: bytes) -> None:
    """Random bytes either decode or raise a MessageError with a reason."""
    reason = None
    try:
        decode(raw)
    except MessageError as err:
        reason = err.reason
    assert reason in {None, "undecodable", "invalid", "unknown-type", "oversized"}


@settings(max_examples=300)
@given(json_values)
def test_json_of_the_wrong_shape_is_invalid(value: object) -> None:
    """Valid JSON that is not an envelope is rejected as invalid or unknown, never accepted."""
    with pytest.raises(MessageError):
        decode(json.dumps(value).encode())


@settings(max_examples=300)
@given(st.sampled_from([c.type_name() for c in registry]), json_values)
def test_known_type_with_random_data_never_crashes(type_name: str, data: object) -> None:
    """A known type with arbitrary data is either valid or rejected with a reason."""
    obj = json.loads(vm_created().encode())
    obj.update(type=type_name, data=data)
    try:
        env = decode(json.dumps(obj).encode())
    except MessageError:
        return
    assert env.type == type_name


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=40).filter(lambda t: registry.get(t) is None))
def test_unknown_type_is_named_in_the_reason(type_name: str) -> None:
    """An envelope of an unregistered type is rejected as unknown-type."""
    obj = json.loads(vm_created().encode())
    obj["type"] = type_name
    with pytest.raises(MessageError) as caught:
        decode(json.dumps(obj).encode())
    assert caught.value.reason == "unknown-type"


def test_oversized_payload_is_rejected_before_parsing() -> None:
    """A payload over the envelope limit is rejected as oversized without being parsed."""
    with pytest.raises(MessageError) as caught:
        decode(b"[" * (MAX_ENVELOPE_BYTES + 1))
    assert caught.value.reason == "oversized"


def test_round_trip_keeps_every_field() -> None:
    """A valid envelope decodes to an equal envelope of the right data class."""
    env = vm_created()
    decoded = decode(env.encode())
    assert decoded == env
    assert type(decoded.data) is type(env.data)


def test_an_envelope_written_another_way_decodes_the_same() -> None:
    """Envelopes of ours are read in one pass; the same envelope with its fields in
    another order, or spaced out, decodes to the same thing by the longer path."""
    env = vm_created()
    fields = json.loads(env.encode())
    reordered = json.dumps(dict(reversed(fields.items()))).encode()
    spaced = json.dumps(fields, indent=1).encode()
    assert decode(reordered) == env
    assert decode(spaced) == env


@pytest.mark.parametrize("spaced", [False, True])
def test_an_envelope_of_a_newer_schema_is_refused_either_way(spaced: bool) -> None:
    fields = json.loads(vm_created().encode())
    fields["schema_version"] = 99
    raw = json.dumps(
        fields, indent=1 if spaced else None, separators=None if spaced else (",", ":")
    )
    with pytest.raises(MessageError) as caught:
        decode(raw.encode())
    assert caught.value.reason == "invalid"
    assert "newer" in caught.value.detail
