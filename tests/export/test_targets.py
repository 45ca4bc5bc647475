"""The target registry agrees with the precisions, the runners and the parity gates.

A target names the runtime that runs its artifacts and the precisions it produces; `validate`
looks the runtime up in `runtime_bench.runners` and the gates up in `runtime_bench.compare` by
those names. A name that one table knows and another does not would only fail on a user's bundle.
"""
from __future__ import annotations

import pytest

from bilayer_mobile.export.precisions import PRECISIONS, SHIPPING_PRECISIONS
from bilayer_mobile.export.target import Target
from bilayer_mobile.export.targets import PLANNED_TARGETS, TARGETS
from bilayer_mobile.runtime_bench.compare import THRESHOLDS_DB, UV_TOLERANCE
from bilayer_mobile.runtime_bench.runners import RUNNERS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_is_runnable_and_gated(name):
    target = TARGETS[name]
    assert isinstance(target, Target) and target.name == name
    assert target.runtime in RUNNERS, f"{name} names runtime {target.runtime!r}; runners know {sorted(RUNNERS)}"
    assert RUNNERS[target.runtime].runtime == target.runtime
    assert target.precisions, name
    unknown = set(target.precisions) - set(PRECISIONS)
    assert not unknown, f"{name} supports precisions export.precisions does not define: {sorted(unknown)}"
    for precision in set(target.precisions) & set(SHIPPING_PRECISIONS):
        assert precision in THRESHOLDS_DB, f"{name} ships {precision} without a parity gate"
        assert precision in UV_TOLERANCE, f"{name} ships {precision} without a UV gate"
    assert target.extension.startswith(".") and target.describe()["runtime"] == target.runtime
    assert name not in PLANNED_TARGETS


def test_the_gates_are_those_of_the_shipping_precisions():
    assert set(THRESHOLDS_DB) == set(SHIPPING_PRECISIONS)
    assert set(UV_TOLERANCE) == set(SHIPPING_PRECISIONS)
    # a shipping precision is one a target can produce
    assert set(SHIPPING_PRECISIONS) <= {p for t in TARGETS.values() for p in t.precisions}
