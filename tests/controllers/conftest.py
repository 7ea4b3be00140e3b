"""The controller tier: whole reconciles against in-memory fakes of the ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controllers.world import World


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()
