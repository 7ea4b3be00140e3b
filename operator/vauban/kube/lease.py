"""Leader election on a coordination.k8s.io Lease, so that of several replicas exactly one
reconciles (kopf's peering is not leader election: peers of equal priority all run).

The holder renews the Lease every `renew_seconds`; a candidate takes it over once it has
seen no change of it for `duration_seconds`, measured on its own monotonic clock (client-go's
observed-time rule): the `renewTime` written by another replica is never compared with the
local wall clock, so replicas whose clocks differ never lead together. A holder that cannot
renew in time stops leading at once, before anyone else may take over. A holder that stops
cleanly releases the Lease, so its successor does not wait for it to expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseState:
    holder: str | None
    renewed: datetime | None
    """As written by the holder, on its clock: compared only for change, never with ours."""

    duration_seconds: int


@dataclass(frozen=True)
class Observation:
    """A Lease record as last seen, and when (on this process's monotonic clock) it was
    first seen so."""

    state: LeaseState
    seen_at: float


def observe(previous: Observation | None, state: LeaseState, now: float) -> Observation:
    """The record read now: unchanged since `previous`, it keeps its first sighting."""
    if previous is not None and previous.state == state:
        return previous
    return Observation(state, now)


def may_acquire(observation: Observation | None, identity: str, now: float) -> bool:
    """Whether `identity` may hold the Lease now: free, its own, or unchanged for its whole
    duration as measured here."""
    if observation is None:
        return True
    state = observation.state
    if not state.holder or state.holder == identity:
        return True
    return now - observation.seen_at >= state.duration_seconds


class LeaderElection:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: int = 15,
        renew_seconds: float = 5.0,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`wall_clock` only dates what this replica writes; `monotonic` decides expiry."""
        self._leases = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration_seconds, self.renew_seconds = duration_seconds, renew_seconds
        self._wall_clock, self._monotonic = wall_clock, monotonic
        self._observed: Observation | None = None

    async def acquire(self) -> None:
        """Return once this process holds the Lease."""
        while True:
            if await self._try_hold():
                break
            await asyncio.sleep(self.renew_seconds / 2)
        logger.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)

    async def keep(self) -> None:
        """Renew until leadership is lost; return then (the caller stops reconciling).

        Leadership ends one renew period before the Lease could expire: the old leader has
        stopped before a new one may start."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if not await self._try_hold():
                    logger.error("lease taken by another replica: stepping down")
                    return
                renewed = loop.time()
            except (ApiException, OSError) as e:
                logger.warning("could not renew the lease: %s", getattr(e, "reason", e))
                if loop.time() - renewed >= self.duration_seconds - self.renew_seconds:
                    logger.error("lease not renewed in time: stepping down")
                    return

    async def release(self) -> None:
        """Give the Lease up, so a successor need not wait for it to expire."""
        try:
            lease = await self._leases.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                await self._leases.replace_namespaced_lease(self.name, self.namespace, lease)
        except (ApiException, OSError) as e:
            logger.warning("could not release the lease: %s", getattr(e, "reason", e))

    async def _try_hold(self) -> bool:
        now = self._wall_clock()
        try:
            lease = await self._leases.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, now, transitions=0),
            )
            try:
                await self._leases.create_namespaced_lease(self.namespace, body)
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
            return True
        spec = lease.spec or client.V1LeaseSpec()
        state = LeaseState(spec.holder_identity, spec.renew_time, spec.lease_duration_seconds or 0)
        self._observed = observe(self._observed, state, self._monotonic())
        if not may_acquire(self._observed, self.identity, self._monotonic()):
            return False
        taking_over = spec.holder_identity != self.identity
        lease.spec = self._spec(
            now if taking_over else (spec.acquire_time or now),
            now,
            transitions=(spec.lease_transitions or 0) + (1 if taking_over else 0),
        )
        try:
            # replace carries the resourceVersion read above: of two candidates, one wins.
            await self._leases.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def _spec(
        self, acquired: datetime, renewed: datetime, *, transitions: int
    ) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.duration_seconds,
            acquire_time=acquired,
            renew_time=renewed,
            lease_transitions=transitions,
        )
