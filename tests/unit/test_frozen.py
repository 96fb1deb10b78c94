"""``changed`` stands for ``dataclasses.replace`` on the folds' states."""

from __future__ import annotations

import dataclasses

import pytest

from schemas.pool import Owner
from services.scheduler.ledger import Ledger
from services.scheduler.state import SchedulerState
from shared.frozen import changed


@pytest.mark.parametrize("state", [SchedulerState(Owner.LOW), Ledger()])
def test_changed_is_replace_for_the_folds_states(state: object) -> None:
    cls = type(state)
    assert not hasattr(cls, "__slots__")
    assert not hasattr(cls, "__post_init__")
    name = dataclasses.fields(state)[1].name  # type: ignore[arg-type]
    value = object()
    new = changed(state, **{name: value})
    assert new == dataclasses.replace(state, **{name: value})  # type: ignore[type-var]
    assert getattr(new, name) is value
    assert getattr(state, name) is not value
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(new, name, None)


def test_a_field_it_does_not_have_is_refused() -> None:
    with pytest.raises(TypeError, match="no field nope"):
        changed(Ledger(), nope=1)
