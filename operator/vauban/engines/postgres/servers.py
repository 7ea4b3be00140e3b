"""The PostgreSQL servers as the handlers reach them (vauban.handlers.ports.DatabaseServers):
the admin's session with the registry, a tenant's session, a tenant's login checked."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from vauban.engines.postgres import catalog, probe
from vauban.reconcile.cluster import ServerProbe


class PostgresServers:
    def __init__(self) -> None:
        self._admin_sessions = catalog.AdminSessions()

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
        tls: bool = False,
        parameters: Sequence[str] = (),
        audit: bool = False,
    ) -> ServerProbe:
        return await probe.probe(
            address,
            username,
            password,
            health=health,
            tls=tls,
            parameters=parameters,
            audit=audit,
        )
