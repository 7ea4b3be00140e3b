"""What every handler needs, created once by `vauban run` and handed over through kopf's memo."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from vauban.kube.resources import Kube
from vauban.settings import Settings


@dataclass(frozen=True)
class Context:
    kube: Kube
    settings: Settings
    locks: defaultdict[tuple[str, str, str], asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    """One lock per object: its own event, its timer and its cluster's event may reconcile it
    at the same moment; they publish one after the other."""


def context_of(memo: Any) -> Context:
    ctx = memo.ctx
    assert isinstance(ctx, Context)
    return ctx
