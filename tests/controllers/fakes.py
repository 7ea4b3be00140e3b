"""In-memory fakes of the handlers' ports (vauban.handlers.ports): the apiserver, a
PostgreSQL server, buckets and a key provider. Each keeps the state a reconcile reads back,
so a test drives several reconciles in a row and asserts on what the world looks like
after them, not on which calls were made.

They model what Vauban relies on and no more: a Secret's data, owners, labels and
annotations; the custom objects' spec and status (the status replaced whole, as the
operator's server-side apply of the status does); Jobs and their status, which a test sets
the way the Job controller would; the SQL statements engines.postgres.plan produces, read
into roles and databases (a statement this fake does not know fails the test: a new form of
SQL gets a model here first).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from vauban import timefmt
from vauban.api.common import KindInfo
from vauban.backup.manifest import Manifest, ObjectLock
from vauban.backup.storage_errors import ObjectNotFound
from vauban.builders.backup import Store
from vauban.crypto import envelope
from vauban.engines.postgres import registry
from vauban.engines.postgres.catalog import AdminCredentials, DatabaseUsage, Usage
from vauban.engines.postgres.plan import Catalog, RoleState
from vauban.engines.postgres.probe import ServerAddress
from vauban.kms import KekNotFound, WrongKey
from vauban.kube.events import EventType
from vauban.kube.watch import DeletionListener
from vauban.reconcile.cluster import ProbeOutcome, ServerProbe
from vauban.reconcile.records import DatabaseRecord, LoginRecord, Rotation
from vauban.settings import FINALIZER

Key = tuple[str, str, str]
"""(plural or kind, namespace, name)."""


def _decoded(body: Mapping[str, Any]) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
    values.update(body.get("stringData") or {})
    return values


def _selected(labels: Mapping[str, str], selector: str) -> bool:
    """Equality selectors, comma-separated: all Vauban uses."""
    for term in filter(None, selector.split(",")):
        name, _, value = term.partition("=")
        if labels.get(name) != value:
            return False
    return True


@dataclass
class FakeSecret:
    namespace: str
    name: str
    values: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    owners: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Event:
    kind: str
    namespace: str
    name: str
    type: EventType
    reason: str
    message: str


class FakeKube:
    """The apiserver (handlers.ports.KubeApi)."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], FakeSecret] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.termination_messages: dict[tuple[str, str], str] = {}
        self.cronjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.events: list[Event] = []
        self.status_writes = 0
        self._resource_versions = itertools.count(1)

    # -- what a test sets up and looks at ------------------------------------------------

    def put(self, kind: KindInfo, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace one of Vauban's objects as `kubectl apply` would: a uid, a
        generation that moves with the spec."""
        meta = body["metadata"]
        key = (kind.plural, meta["namespace"], meta["name"])
        stored = self.objects.get(key)
        obj = copy.deepcopy(dict(body))
        obj.setdefault("apiVersion", "vauban.dev/v1alpha1")
        obj.setdefault("kind", kind.kind)
        new_meta = obj["metadata"]
        if stored is None:
            new_meta.setdefault("uid", str(uuid.uuid4()))
            new_meta.setdefault("generation", 1)
            new_meta.setdefault("creationTimestamp", timefmt.now_rfc3339())
            new_meta.setdefault("finalizers", [FINALIZER])
        else:
            old = stored["metadata"]
            new_meta["uid"] = old["uid"]
            new_meta["creationTimestamp"] = old["creationTimestamp"]
            new_meta.setdefault("finalizers", old.get("finalizers", []))
            changed = obj.get("spec") != stored.get("spec")
            new_meta["generation"] = old["generation"] + (1 if changed else 0)
            obj.setdefault("status", stored.get("status"))
        new_meta["resourceVersion"] = str(next(self._resource_versions))
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def get(self, kind: KindInfo, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(kind.plural, namespace, name)])

    def remove(self, kind: KindInfo, namespace: str, name: str) -> None:
        self.objects.pop((kind.plural, namespace, name), None)

    def put_secret(
        self,
        namespace: str,
        name: str,
        values: Mapping[str, str],
        *,
        labels: Mapping[str, str] | None = None,
        owners: Collection[str] = (),
    ) -> None:
        self.secrets[(namespace, name)] = FakeSecret(
            namespace, name, dict(values), dict(labels or {}), {}, frozenset(owners)
        )

    def events_of(self, name: str) -> list[str]:
        return [e.reason for e in self.events if e.name == name]

    # -- Vauban's own kinds and other custom objects -------------------------------------

    async def read(self, kind: KindInfo, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind.plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def list_all(self, kind: KindInfo) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (p, _, _), o in self.objects.items() if p == kind.plural]

    async def apply_status(
        self, kind: KindInfo, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        obj = self.objects[(kind.plural, namespace, name)]
        obj["status"] = copy.deepcopy(dict(status))
        obj["metadata"]["resourceVersion"] = str(next(self._resource_versions))
        self.status_writes += 1

    async def read_custom(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        found = self.objects.get((plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def apply_custom(self, plural: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = body["metadata"]
        self.objects[(plural, meta["namespace"], meta["name"])] = copy.deepcopy(dict(body))
        return copy.deepcopy(dict(body))

    async def create_custom(self, plural: str, body: Mapping[str, Any]) -> bool:
        meta = body["metadata"]
        key = (plural, meta["namespace"], meta["name"])
        if key in self.objects:
            return False
        obj = copy.deepcopy(dict(body))
        obj["metadata"].setdefault("uid", str(uuid.uuid4()))
        obj["metadata"].setdefault("generation", 1)
        obj["metadata"].setdefault("creationTimestamp", timefmt.now_rfc3339())
        # kopf puts Vauban's finalizer on at the first event, which this fake does not send.
        obj["metadata"].setdefault("finalizers", [FINALIZER])
        self.objects[key] = obj
        return True

    async def delete_custom(self, kind: KindInfo, namespace: str, name: str) -> None:
        self.objects.pop((kind.plural, namespace, name), None)

    async def delete_custom_object(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> None:
        self.objects.pop((plural, namespace, name), None)

    async def crd_exists(self, name: str) -> bool:
        return True

    # -- Secrets -------------------------------------------------------------------------

    def _write_secret(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        self.secrets[(meta["namespace"], meta["name"])] = FakeSecret(
            namespace=meta["namespace"],
            name=meta["name"],
            values=_decoded(body),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            owners=frozenset(ref["uid"] for ref in meta.get("ownerReferences") or []),
        )

    async def apply_secret(self, body: Mapping[str, Any]) -> None:
        self._write_secret(body)

    async def create_secret_if_absent(self, body: Mapping[str, Any]) -> bool:
        meta = body["metadata"]
        if (meta["namespace"], meta["name"]) in self.secrets:
            return False
        self._write_secret(body)
        return True

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.secrets.get((namespace, name))
        return None if found is None else dict(found.values)

    async def read_secret_and_owners(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], frozenset[str]] | None:
        found = self.secrets.get((namespace, name))
        return None if found is None else (dict(found.values), found.owners)

    async def read_secret_and_annotations(
        self, namespace: str, name: str
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        found = self.secrets.get((namespace, name))
        return None if found is None else (dict(found.values), dict(found.annotations))

    async def update_secret_values(
        self, namespace: str, name: str, values: Mapping[str, str]
    ) -> None:
        self.secrets[(namespace, name)].values.update(values)

    async def annotate_secret(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        found = self.secrets.get((namespace, name))
        if found is None:
            return
        for k, v in annotations.items():
            if v is None:
                found.annotations.pop(k, None)
            else:
                found.annotations[k] = v

    async def secret_annotations(self, namespace: str, selector: str) -> dict[str, dict[str, str]]:
        return {
            s.name: dict(s.annotations)
            for s in self.secrets.values()
            if s.namespace == namespace and _selected(s.labels, selector)
        }

    async def watch_secret_deletions(
        self, namespace: str | None, selector: str, listener: DeletionListener
    ) -> None:
        """Tells nothing: this tier calls the reconciles a deletion would cause itself."""
        await asyncio.Event().wait()

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.secrets.pop((namespace, name), None)

    async def release_secrets(
        self, namespace: str, selector: str, owner_uid: str, labels: Mapping[str, str]
    ) -> list[str]:
        released = []
        for s in self.secrets.values():
            if s.namespace == namespace and _selected(s.labels, selector) and owner_uid in s.owners:
                s.owners = s.owners - {owner_uid}
                s.labels.update(labels)
                released.append(s.name)
        return released

    # -- Jobs and CronJobs ---------------------------------------------------------------

    async def create_job(self, body: Mapping[str, Any]) -> bool:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in self.jobs:
            return False
        job = copy.deepcopy(dict(body))
        job["metadata"].setdefault("uid", str(uuid.uuid4()))
        job["status"] = {"active": 1, "startTime": timefmt.now_rfc3339()}
        self.jobs[key] = job
        return True

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.jobs.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def delete_job(self, namespace: str, name: str) -> None:
        self.jobs.pop((namespace, name), None)

    async def termination_message(self, namespace: str, job: str) -> str | None:
        return self.termination_messages.get((namespace, job))

    async def apply_cronjob(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        self.cronjobs[(meta["namespace"], meta["name"])] = copy.deepcopy(dict(body))

    async def delete_cronjob(self, namespace: str, name: str) -> None:
        self.cronjobs.pop((namespace, name), None)

    # -- what clusters render and are judged on ------------------------------------------

    async def apply_network_policy(self, body: Mapping[str, Any]) -> int | None:
        meta = body["metadata"]
        self.objects[("networkpolicies", meta["namespace"], meta["name"])] = dict(body)
        return 1

    async def network_policy_spec(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get(("networkpolicies", namespace, name))
        return None if found is None else dict(found.get("spec") or {})

    async def release_claims(
        self, namespace: str, selector: str, owner_uid: str, labels: Mapping[str, str]
    ) -> list[str]:
        return []

    async def storage_class(
        self, name: str | None
    ) -> tuple[str, dict[str, str], dict[str, str]] | None:
        return None

    async def volume_expansion(self, name: str | None) -> bool | None:
        return None

    async def volume_claims(self, namespace: str, selector: str) -> list[dict[str, str | None]]:
        return []

    async def patch_custom_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        found = self.objects.get((plural, namespace, name))
        if found is None:
            return None
        found["status"] = {**(found.get("status") or {}), **dict(patch.get("status") or {})}
        return copy.deepcopy(found)

    async def annotate_custom(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
    ) -> None:
        found = self.objects.get((plural, namespace, name))
        if found is None:
            return
        meta = found.setdefault("metadata", {})
        merged = {**(meta.get("annotations") or {}), **annotations}
        meta["annotations"] = {k: v for k, v in merged.items() if v is not None}

    async def load_balancers(self, namespace: str, selector: str) -> list[str]:
        return []

    async def namespace_labels(self, name: str) -> dict[str, str]:
        return dict(self.namespaces.get(name, {}))

    async def namespace_exists(self, name: str) -> bool:
        return name in self.namespaces

    async def credentials(self) -> Any:
        raise NotImplementedError("kopf's login is not part of a controller test")

    async def post_event(
        self,
        *,
        kind: str,
        namespace: str,
        name: str,
        uid: str,
        type_: EventType,
        reason: str,
        message: str,
        fold_into: Any = None,
    ) -> None:
        # Folding is the real adapter's (tests/unit/test_events.py): here every Event is
        # recorded on its object, as the first of a burst is.
        self.events.append(Event(kind, namespace, name, type_, reason, message))


# -- PostgreSQL --------------------------------------------------------------------------


@dataclass
class Role:
    login: bool
    connection_limit: int = -1
    member_of: set[str] = field(default_factory=set)
    default_role: str | None = None
    verifier: str = ""


@dataclass
class Database:
    owner: str
    public_can_connect: bool = True
    extensions: set[str] = field(default_factory=set)


def _statement_text(statement: sql.Composed) -> str:
    return statement.as_string()


_NAME = r'"((?:[^"]|"")+)"'
_STATEMENTS: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        ("create_group", rf"^CREATE ROLE {_NAME} NOLOGIN$"),
        (
            "create_login",
            rf"^CREATE ROLE {_NAME} LOGIN CONNECTION LIMIT (-?\d+) IN ROLE {_NAME}"
            r" PASSWORD '(.*)'$",
        ),
        ("grant", rf"^GRANT {_NAME} TO {_NAME}$"),
        ("set_role", rf"^ALTER ROLE {_NAME} SET role TO '(.*)'$"),
        ("login", rf"^ALTER ROLE {_NAME} LOGIN$"),
        ("nologin", rf"^ALTER ROLE {_NAME} NOLOGIN$"),
        ("limit", rf"^ALTER ROLE {_NAME} CONNECTION LIMIT (-?\d+)$"),
        ("create_database", rf"^CREATE DATABASE {_NAME} OWNER {_NAME}$"),
        ("database_owner", rf"^ALTER DATABASE {_NAME} OWNER TO {_NAME}$"),
        ("revoke_public", rf"^REVOKE CONNECT, TEMPORARY ON DATABASE {_NAME} FROM PUBLIC$"),
        ("terminate", r"^SELECT pg_catalog\.pg_terminate_backend\(pid\) .*$"),
        ("drop_role", rf"^DROP ROLE IF EXISTS {_NAME}$"),
        ("drop_database", rf"^DROP DATABASE IF EXISTS {_NAME} WITH \(FORCE\)$"),
        ("create_extension", rf"^CREATE EXTENSION IF NOT EXISTS {_NAME} SCHEMA public$"),
        ("drop_extension", rf"^DROP EXTENSION {_NAME}$"),
    ]
]


def _unquote(name: str) -> str:
    return name.replace('""', '"')


class FakeServer:
    """One PostgreSQL server: roles, databases, extensions and Vauban's registry."""

    def __init__(self, admin: str = "vauban_admin", password: str = "admin-password") -> None:  # noqa: S107
        self.admin = admin
        self.password = password
        self.roles: dict[str, Role] = {admin: Role(login=True)}
        self.databases: dict[str, Database] = {}
        self.records: dict[str, DatabaseRecord] = {}
        self.statements: list[str] = []
        self.down = False
        """A server that does not answer: every session fails as libpq does."""

        self.refused_logins: set[str] = set()
        """Logins whose password does not work any more (changed by hand)."""

        self.sizes: dict[str, int] = {}
        """Database sizes, when a test sets them (8 MiB otherwise)."""

    # -- SQL, as engines.postgres.plan writes it -----------------------------------------

    def execute(self, statement: sql.Composed, database: str | None = None) -> None:
        text = _statement_text(statement)
        self.statements.append(text)
        for name, pattern in _STATEMENTS:
            found = pattern.match(text)
            if found is not None:
                getattr(self, f"_{name}")(*(_unquote(g) for g in found.groups()), database)
                return
        raise AssertionError(f"the fake server does not know this statement: {text}")

    def _create_group(self, role: str, _: str | None) -> None:
        assert role not in self.roles, f"role {role} exists"
        self.roles[role] = Role(login=False)

    def _create_login(
        self, role: str, limit: str, group: str, verifier: str, _: str | None
    ) -> None:
        assert role not in self.roles, f"role {role} exists"
        self.roles[role] = Role(True, int(limit), {group}, None, verifier)

    def _grant(self, group: str, member: str, _: str | None) -> None:
        self.roles[member].member_of.add(group)

    def _set_role(self, role: str, group: str, _: str | None) -> None:
        self.roles[role].default_role = group

    def _login(self, role: str, _: str | None) -> None:
        self.roles[role].login = True

    def _nologin(self, role: str, _: str | None) -> None:
        self.roles[role].login = False

    def _limit(self, role: str, limit: str, _: str | None) -> None:
        self.roles[role].connection_limit = int(limit)

    def _create_database(self, database: str, owner: str, _: str | None) -> None:
        assert database not in self.databases, f"database {database} exists"
        self.databases[database] = Database(owner)

    def _database_owner(self, database: str, owner: str, _: str | None) -> None:
        self.databases[database].owner = owner

    def _revoke_public(self, database: str, _: str | None) -> None:
        self.databases[database].public_can_connect = False

    def _terminate(self, _: str | None) -> None:
        pass

    def _drop_role(self, role: str, _: str | None) -> None:
        self.roles.pop(role, None)

    def _drop_database(self, database: str, _: str | None) -> None:
        self.databases.pop(database, None)

    def _create_extension(self, extension: str, database: str | None) -> None:
        assert database is not None, "extensions are created in the tenant's database"
        self.databases[database].extensions.add(extension)

    def _drop_extension(self, extension: str, database: str | None) -> None:
        assert database is not None, "extensions are dropped in the tenant's database"
        self.databases[database].extensions.discard(extension)

    # -- what the admin's session reads --------------------------------------------------

    def catalog(self, database: str, roles: Collection[str]) -> Catalog:
        def state(role: Role) -> RoleState:
            return RoleState(
                can_login=role.login,
                connection_limit=role.connection_limit,
                # As the server's catalog reads them: among the roles asked about.
                member_of=frozenset(role.member_of) & frozenset(roles),
                default_role=role.default_role,
            )

        found = self.databases.get(database)
        return Catalog(
            roles={r: state(self.roles[r]) for r in roles if r in self.roles},
            database_owner=None if found is None else found.owner,
            public_can_connect=found.public_can_connect if found else False,
            admin=self.admin,
            admin_is_superuser=True,
        )

    def usage(self, databases: Collection[str], logins: Collection[str]) -> Usage:
        return Usage(
            databases={
                d: DatabaseUsage(size_bytes=self.sizes.get(d, 8 << 20), connections=0)
                for d in databases
                if d in self.databases
            },
            logins=frozenset(r for r in logins if r in self.roles and self.roles[r].login),
        )

    # -- the registry --------------------------------------------------------------------

    def claim(self, record: DatabaseRecord) -> None:
        for other in self.records.values():
            if other.uid == record.uid or {other.database, other.owner} & {
                record.database,
                record.owner,
            }:
                raise registry.NamesTaken
        self.records[record.uid] = record

    def holder_of(self, database: str, owner: str) -> tuple[str, str, str] | None:
        for r in self.records.values():
            if r.database == database or r.owner == owner or owner in {x.role for x in r.logins}:
                return (r.uid, r.namespace, r.name)
        return None

    def update(self, uid: str, **changes: Any) -> None:
        self.records[uid] = replace(self.records[uid], **changes)

    def logins_of(self, uid: str) -> dict[str, LoginRecord]:
        return {login.role: login for login in self.records[uid].logins}


class _AdminSession:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    async def catalog(self, database: str, roles: Collection[str]) -> Catalog:
        return self.server.catalog(database, roles)

    async def run(self, statements: Sequence[sql.Composed]) -> None:
        for statement in statements:
            self.server.execute(statement)

    async def usage(self, databases: Collection[str], logins: Collection[str] = ()) -> Usage:
        return self.server.usage(databases, logins)

    async def password_verifier(self, role: str, password: str) -> str:
        # A verifier's shape; the fake server does not check passwords.
        return f"SCRAM-SHA-256$4096:fake${role}"

    async def record_of(self, uid: str) -> DatabaseRecord | None:
        return self.server.records.get(uid)

    async def holder_of(self, database: str, owner: str) -> tuple[str, str, str] | None:
        return self.server.holder_of(database, owner)

    async def claim(self, record: DatabaseRecord) -> None:
        self.server.claim(record)

    async def add_login(self, uid: str, role: str, generation: int) -> None:
        if any(role in self.server.logins_of(u) for u in self.server.records):
            raise registry.NamesTaken
        record = self.server.records[uid]
        self.server.update(uid, logins=(*record.logins, LoginRecord(role, generation, False)))

    async def published(
        self,
        uid: str,
        login: str,
        retiring: Mapping[str, datetime],
        rotation: Rotation | None = None,
    ) -> None:
        logins = []
        for x in self.server.records[uid].logins:
            if x.role == login:
                x = replace(x, published=True, retire_after=None)
            elif x.role in retiring:
                x = replace(x, retire_after=retiring[x.role])
            logins.append(x)
        self.server.update(uid, logins=tuple(logins))
        if rotation is not None:
            self.server.update(uid, rotation_token=rotation.token, last_rotation=rotation.at)

    async def forget_logins(self, uid: str, roles: Collection[str]) -> None:
        kept = tuple(x for x in self.server.records[uid].logins if x.role not in roles)
        self.server.update(uid, logins=kept)

    async def set_extensions(self, uid: str, extensions: Collection[str]) -> None:
        self.server.update(uid, extensions=frozenset(extensions))

    async def retain(self, uid: str) -> None:
        self.server.update(uid, logins=(), retained=True)

    async def forget(self, uid: str) -> None:
        self.server.records.pop(uid, None)


class _TenantSession:
    def __init__(self, server: FakeServer, database: str) -> None:
        self.server = server
        self.database = database

    async def extensions(self) -> frozenset[str]:
        return frozenset(self.server.databases[self.database].extensions)

    async def run(self, statements: Sequence[sql.Composed]) -> None:
        for statement in statements:
            self.server.execute(statement, self.database)


def _unreachable() -> psycopg.OperationalError:
    # No sqlstate, as libpq's connection failures: handlers read them as Unreachable.
    return psycopg.OperationalError("connection refused")


class FakeServers:
    """The servers the operator reaches (handlers.ports.DatabaseServers): one fake server
    per address."""

    def __init__(self) -> None:
        self.by_address: dict[tuple[str, int], FakeServer] = {}

    def add(self, host: str, port: int, server: FakeServer | None = None) -> FakeServer:
        self.by_address[(host, port)] = server or FakeServer()
        return self.by_address[(host, port)]

    def _at(self, address: ServerAddress) -> FakeServer:
        server = self.by_address.get((address.host, address.port))
        if server is None or server.down:
            raise _unreachable()
        return server

    @asynccontextmanager
    async def admin(self, credentials: AdminCredentials) -> AsyncIterator[_AdminSession]:
        server = self._at(credentials.address)
        if (credentials.username, credentials.password) != (server.admin, server.password):
            raise psycopg.OperationalError("password authentication failed")
        yield _AdminSession(server)

    @asynccontextmanager
    async def tenant(
        self, address: ServerAddress, username: str, password: str, database: str
    ) -> AsyncIterator[_TenantSession]:
        server = self._at(address)
        role = server.roles.get(username)
        if role is None or not role.login or username in server.refused_logins:
            raise psycopg.OperationalError(f'password authentication failed for "{username}"')
        yield _TenantSession(server, database)

    async def check_login(
        self, address: ServerAddress, username: str, password: str, dbname: str
    ) -> ServerProbe:
        try:
            server = self._at(address)
        except psycopg.OperationalError:
            return ServerProbe(ProbeOutcome.UNREACHABLE, "connection refused")
        role = server.roles.get(username)
        if role is None or not role.login or username in server.refused_logins:
            return ServerProbe(ProbeOutcome.AUTHENTICATION_FAILED, "password authentication failed")
        return ServerProbe(ProbeOutcome.OK, "")

    async def probe(
        self,
        address: ServerAddress,
        username: str,
        password: str,
        *,
        health: bool = False,
        health_shared_seconds: float = 0.0,
        tls: bool = False,
        parameters: Sequence[str] = (),
        audit: bool = False,
    ) -> ServerProbe:
        try:
            server = self._at(address)
        except psycopg.OperationalError:
            return ServerProbe(ProbeOutcome.UNREACHABLE, "connection refused")
        if (username, password) != (server.admin, server.password):
            return ServerProbe(ProbeOutcome.AUTHENTICATION_FAILED, "password authentication failed")
        return ServerProbe(
            ProbeOutcome.OK,
            version="17.6",
            role=username,
            superuser=True,
            create_role=True,
            create_db=True,
        )


# -- buckets -----------------------------------------------------------------------------


class FakeBucket:
    """One bucket (handlers.ports.Bucket): manifests by location; the data objects are not
    modelled, the operator never reads them."""

    def __init__(self) -> None:
        self.manifests: dict[str, Manifest] = {}
        self.stale_uploads: list[str] = []
        self.locked: set[str] = set()
        self.documents: dict[str, bytes] = {}

    def read_manifest(self, location: str) -> Manifest | None:
        return self.manifests.get(location)

    def list_manifests(self, prefix: str) -> list[Manifest]:
        return [m for loc, m in sorted(self.manifests.items()) if loc.startswith(prefix)]

    def locations(self, prefix: str) -> list[str]:
        return sorted(loc for loc in self.manifests if loc.startswith(prefix))

    def delete_backup(self, location: str) -> None:
        if location not in self.manifests:
            raise ObjectNotFound(location)
        del self.manifests[location]

    def abort_stale_uploads(self, prefix: str, started_before: datetime) -> list[str]:
        aborted, self.stale_uploads = self.stale_uploads, []
        return aborted

    def read_small(self, key: str) -> bytes | None:
        return self.documents.get(key)

    def put_bytes(self, key: str, data: bytes, lock: ObjectLock | None) -> None:
        self.documents[key] = data

    def delete_object(self, key: str) -> None:
        self.documents.pop(key, None)

    def keys_ending(self, prefix: str, suffix: str) -> list[str]:
        return sorted(k for k in self.documents if k.startswith(prefix) and k.endswith(suffix))


class FakeBuckets:
    """Opens the fake bucket a store names (handlers.ports.BucketOpener)."""

    def __init__(self) -> None:
        self.buckets: dict[str, FakeBucket] = {}

    def __call__(self, store: Store) -> FakeBucket:
        return self.buckets.setdefault(store.bucket, FakeBucket())


# -- key provider ------------------------------------------------------------------------


class FakeKeyProvider:
    """A key manager that keeps its KEKs to itself (like KMIP or PKCS#11): the operator
    holds references only, and a destroyed KEK opens nothing any more."""

    name = "kubernetes-secret"

    def __init__(self) -> None:
        self.keks: dict[str, bytes] = {}
        self.destroyed: set[str] = set()

    def create_kek(self, label: str) -> str:
        ref = f"{label}-{secrets.token_hex(4)}"
        self.keks[ref] = envelope.generate_key()
        return ref

    def _kek(self, ref: str) -> bytes:
        if ref not in self.keks:
            raise KekNotFound(f"no KEK {ref}")
        return self.keks[ref]

    def wrap(self, kek_ref: str, plaintext: bytes, context: bytes) -> bytes:
        return envelope.wrap_key(self._kek(kek_ref), plaintext, context)

    def unwrap(self, kek_ref: str, wrapped: bytes, context: bytes) -> bytes:
        try:
            return envelope.unwrap_key(self._kek(kek_ref), wrapped, context)
        except envelope.WrongKey as e:
            raise WrongKey(str(e)) from e

    def destroy_kek(self, kek_ref: str) -> None:
        self.keks.pop(kek_ref, None)
        self.destroyed.add(kek_ref)
