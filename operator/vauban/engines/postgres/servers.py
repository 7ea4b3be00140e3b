"""The PostgreSQL servers as the handlers reach them (vauban.handlers.ports.DatabaseServers):
the admin's session with the registry, a tenant's session, a tenant's login checked, and
the probe, whose reading of a server's load the clusters adopting that server share."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta

from vauban import timefmt
from vauban.engines.postgres import catalog, probe
from vauban.reconcile.cluster import ProbeOutcome, ServerHealth, ServerProbe


class PostgresServers:
    def __init__(self) -> None:
        self._admin_sessions = catalog.AdminSessions()
        self._health = SharedHealth()

    def admin(
        self, credentials: catalog.AdminCredentials
    ) -> AbstractAsyncContextManager[catalog.Server]:
        return self._admin_sessions.session(credentials)

    async def close(self) -> None:
        """The admin sessions kept between reconciles are closed (the process is stopping)."""
        await self._admin_sessions.close()

    def tenant(
        self, address: probe.ServerAddress, username: str, password: str, database: str
    ) -> AbstractAsyncContextManager[catalog.TenantSession]:
        return catalog.tenant_session(address, username, password, database)

    async def check_login(
        self, address: probe.ServerAddress, username: str, password: str, dbname: str
    ) -> ServerProbe:
        return await probe.check_login(address, username, password, dbname)

    async def probe(
        self,
        address: probe.ServerAddress,
        username: str,
        password: str,
        *,
        health: bool = False,
        health_shared_seconds: float = 0.0,
        tls: bool = False,
        parameters: Sequence[str] = (),
        audit: bool = False,
    ) -> ServerProbe:
        key = catalog.AdminCredentials(address, username, password)
        now = timefmt.now()
        shared = self._health.fresh(key, now, health_shared_seconds) if health else None
        found = await probe.probe(
            address,
            username,
            password,
            health=health and shared is None,
            tls=tls,
            parameters=parameters,
            audit=audit,
        )
        if found.outcome is not ProbeOutcome.OK:
            return found
        if shared is not None:
            return dataclasses.replace(found, health=shared)
        if found.health is not None:
            self._health.keep(key, found.health, now, health_shared_seconds)
        return found


class SharedHealth:
    """The load of each server as the last probe read it, by server and admin.

    The ManagedClusters adopting one server (one per tenant namespace, say) would each read
    the same load once per probe interval, and the total of the database sizes walks every
    file of every database on the server: 25 clusters on a server of 2,500 databases cost
    it 45 s of CPU every five minutes. A cluster probed shortly after another one reuses
    its reading, told by its own time (`read_at`); each cluster's probe still logs in with
    its own admin Secret, which is what says whether that cluster can reach the server."""

    def __init__(self) -> None:
        self._read: dict[catalog.AdminCredentials, ServerHealth] = {}

    def fresh(
        self, key: catalog.AdminCredentials, now: datetime, within: float
    ) -> ServerHealth | None:
        reading = self._read.get(key)
        if reading is None or reading.read_at is None:
            return None
        return reading if now - reading.read_at < timedelta(seconds=within) else None

    def keep(
        self, key: catalog.AdminCredentials, health: ServerHealth, now: datetime, within: float
    ) -> None:
        # Readings past their use go, so a rotated admin password leaves nothing behind.
        oldest = now - timedelta(seconds=within)
        self._read = {
            k: r
            for k, r in self._read.items()
            if r.read_at is not None and r.read_at >= oldest and k != key
        }
        if within > 0:
            self._read[key] = dataclasses.replace(health, read_at=now)
