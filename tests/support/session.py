"""Servers a test session starts once and stops early (tests/conftest.py)."""

from __future__ import annotations

import contextlib

LOCAL_SERVERS = contextlib.ExitStack()
"""What the session started for the tiers before e2e (the control plane, the operator,
PostgreSQL, the object stores, the key manager, the HSM tokens): stopped before the first
e2e test, so that the real node, its timings and its timeouts have the machine to
themselves. That operator, left running, re-checks every object of three tiers every
second."""
