"""What one provisioning of a ManagedDatabase does, decided without I/O.

handlers.databases.provision observes once, on one admin session: the credentials Secret
as found (a foreign one is refused at once, `foreign_secret`), the server's record of this
object (without one, who holds its names), and the catalog's state of the roles
`roles_to_read` names and of the database. That is a
`ProvisionView`; `plan_provision` turns it into a `ProvisionPlan`, which the handler
carries out step by step:

  Refused     a name conflict: nothing is created (names that are this object's all the
              same are claimed first, as `claim` says)
  Provision   names to claim; the credentials (the login kept or created, the logins
              retired now or later); the server's desired state, which
              engines.postgres.plan turns into SQL against the catalog; the Secret to
              write; the rotation to record; extensions to manage; Events; the status of
              the credentials; the verdict once the rest (restore, backups) has passed.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vauban import timefmt
from vauban.api.database import CredentialsStatus, ManagedDatabaseSpec, ManagedDatabaseStatus
from vauban.builders.credentials import Endpoint, credentials_secret, secret_name
from vauban.conditions import Event, Reason, State, Verdict
from vauban.reconcile.database import (
    CredentialsPlan,
    Holder,
    next_login,
    ownership,
    plan_credentials,
)
from vauban.reconcile.records import DatabaseRecord, Rotation

# -- what is observed ------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretFound:
    """The tenant's credentials Secret, as stored."""

    ours: bool
    """Created for this very ManagedDatabase: its owner references hold the object's UID."""

    data: Mapping[str, str] = field(repr=False)
    """Its values, decoded."""

    @property
    def password(self) -> str | None:
        return self.data.get("password")

    @property
    def username(self) -> str | None:
        """The login it names, when it holds a password to go with it."""
        return self.data.get("username") if "password" in self.data else None


@dataclass(frozen=True)
class ProvisionView:
    """What one provisioning is decided from, each fact read once."""

    namespace: str
    name: str
    uid: str
    spec: ManagedDatabaseSpec
    cluster_ref: str
    """The ManagedCluster's namespace/name, for messages."""

    connection_limit: int
    """Each login's limit (reconcile.database.connection_limit)."""

    endpoint: Endpoint
    """Where applications reach the database, as the Secret says it."""

    secret: SecretFound | None
    """None: there is no credentials Secret."""

    record: DatabaseRecord | None
    """The server's record of this object (by UID); None: it has none yet."""

    holder: Holder | None
    """Without a record: the ManagedDatabase whose record holds the spec's names, if any."""

    roles: frozenset[str]
    """Of the roles `roles_to_read` names, those the server has."""

    database_exists: bool
    rotate_token: str | None
    """The object's reconcile.database.ROTATE_ANNOTATION, if any."""

    now: datetime
    provisioned: bool
    """Status says it was provisioned before (handlers.databases.stored.provisioned)."""

    new_password: str = field(repr=False)
    """The password of a login created now; unused when none is."""


def roles_to_read(owner: str, record: DatabaseRecord | None) -> list[str]:
    """The roles whose state the plan depends on: the owner, every login the record holds,
    and the login a rotation would create now (whichever login the plan picks is one of
    them)."""
    logins = record.logins if record is not None else ()
    return [owner, *(login.role for login in logins), next_login(owner, logins)]


# -- what is done ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """Nothing is created: `verdict` says why."""

    verdict: Verdict
    claim: DatabaseRecord | None = None
    """Names this object may hold all the same, recorded before the refusal is said (a login
    name taken by chance takes nothing from the database's and owner's names)."""


@dataclass(frozen=True)
class ServerState:
    """What the server must hold; engines.postgres.plan turns it into statements against
    the catalog (none when the server already matches)."""

    database: str
    owner: str
    login: str
    create_login: bool
    """The login role does not exist: it is created with a verifier of the plan's password
    (PBKDF2, a reconcile's costliest step, only then). A recorded login dropped by hand is
    created again with the Secret's password."""

    connection_limit: int
    retire: frozenset[str]
    """Former logins to revoke now."""


@dataclass(frozen=True)
class Extensions:
    """Managed in a session of the tenant's own login (engines.postgres.plan.extensions_plan)."""

    wanted: frozenset[str]
    managed: frozenset[str]
    """Those the record says Vauban created: only they are dropped when no longer wanted."""

    @property
    def changed(self) -> bool:
        """Whether the record's list is to be rewritten once they are applied."""
        return self.wanted != self.managed


@dataclass(frozen=True)
class Provision:
    """The steps, in the order they are carried out."""

    claim: DatabaseRecord | None
    """The record to write before anything is created with its names; None: it exists."""

    credentials: CredentialsPlan
    """A new login is recorded before it is created, and former ones forgotten once revoked."""

    password: str = field(repr=False)
    """The login's password: the Secret's, or a new one with a new login."""

    server: ServerState
    secret: Mapping[str, Any] | None = field(repr=False)
    """The credentials Secret to apply, once the login exists; None: the stored one says the
    same already."""

    rotation: Rotation | None
    """The rotation a new login carries out, recorded on the server with its publication
    (once the Secret names it); None: no rotation. Its token is the annotation's value
    acted on, None for a rotation by period or a first login."""

    extensions: Extensions | None
    """None: the spec lists none and Vauban created none."""

    announce: bool
    """The SQL that runs is an Event of its own: the database was provisioned before (a
    first provisioning is told by the transition to Ready)."""

    events: tuple[Event, ...]
    """Posted once every step passed."""

    status: ManagedDatabaseStatus
    """What status says of it: `credentials` (without `accepted`, which a login attempt
    tells) and `extensions`."""

    ready: Verdict
    """The verdict once the restore and the backups, if any, say nothing else."""


ProvisionPlan = Refused | Provision


# -- the decision ----------------------------------------------------------------------------


def foreign_secret(name: str, secret: SecretFound | None) -> Refused | None:
    """A credentials Secret Vauban did not write for this very object is never overwritten:
    the first rule of the plan, and one the Secret alone decides (the handler asks it before
    it reads the server's registry)."""
    if secret is None or secret.ours:
        return None
    return Refused(
        Verdict(
            State.STALLED,
            Reason.NAME_CONFLICT,
            f"Secret {secret_name(name)} already exists and was not created for this "
            "ManagedDatabase; Vauban does not overwrite it. Delete or rename it.",
        )
    )


def plan_provision(view: ProvisionView) -> ProvisionPlan:
    """Refuse whatever Vauban did not create for this very object (a Secret, a database, a
    role: only the server's record says what it created), else plan the steps."""
    spec = view.spec
    refused = foreign_secret(view.name, view.secret)
    if refused is not None:
        return refused
    conflict = ownership(
        namespace=view.namespace,
        database=spec.database_name,
        owner=spec.owner,
        database_exists=view.database_exists,
        owner_exists=spec.owner in view.roles,
        record=view.record,
        holder=view.holder,
    )
    if conflict is not None:
        return Refused(name_conflict(conflict))
    record, claim = view.record, None
    if record is None:
        record = claim = DatabaseRecord(
            view.uid, view.namespace, view.name, spec.database_name, spec.owner
        )
    credentials = plan_credentials(
        owner=spec.owner,
        secret_username=view.secret.username if view.secret is not None else None,
        logins=record.logins,
        rotate_token=view.rotate_token,
        acted_token=record.rotation_token,
        last_rotation=record.last_rotation,
        rotation_period=spec.credentials.rotation_period,
        grace_period=spec.credentials.grace_period,
        now=view.now,
    )
    if credentials.new_login and credentials.login in view.roles:  # another's, by chance
        return Refused(
            name_conflict(f"role {credentials.login} already exists on the server"), claim
        )
    return _steps(view, record, claim, credentials)


def _steps(
    view: ProvisionView,
    record: DatabaseRecord,
    claim: DatabaseRecord | None,
    credentials: CredentialsPlan,
) -> Provision:
    spec, secret, login = view.spec, view.secret, credentials.login
    password = view.new_password if credentials.new_login else _kept_password(secret)
    desired_secret = credentials_secret(
        name=view.name,
        namespace=view.namespace,
        owner_uid=view.uid,
        username=login,
        password=password,
        endpoint=view.endpoint,
    )
    # A Secret gone, or without its password, after logins were published: it is written
    # again with a new login (Vauban keeps no copy of a password), and that is said.
    recreated = (
        credentials.rotated
        and (secret is None or secret.password is None)
        and any(former.published for former in record.logins)
    )
    events: list[Event] = []
    if recreated:
        events.append(Event("Warning", "CredentialsRecreated", _recreated(view, credentials)))
    elif credentials.rotated and secret is not None:
        events.append(
            Event(
                "Normal",
                "CredentialsRotated",
                f"Secret {secret_name(view.name)} now holds login {login}; "
                f"previous logins work until the grace period ends.",
            )
        )
    wanted = frozenset(spec.extensions)
    return Provision(
        claim=claim,
        credentials=credentials,
        password=password,
        server=ServerState(
            database=spec.database_name,
            owner=spec.owner,
            login=login,
            create_login=login not in view.roles,
            connection_limit=view.connection_limit,
            retire=frozenset(credentials.retire_now),
        ),
        secret=desired_secret if _differs(secret, desired_secret) else None,
        rotation=Rotation(view.rotate_token, view.now) if credentials.rotated else None,
        extensions=Extensions(wanted, record.extensions) if wanted or record.extensions else None,
        announce=view.provisioned,
        events=tuple(events),
        status=ManagedDatabaseStatus.model_validate(
            {
                "credentials": _credentials_status(view, record, credentials),
                "binding": {"name": secret_name(view.name)},
                "extensions": sorted(spec.extensions),
            }
        ),
        ready=Verdict.ready(
            f"Database {spec.database_name} (owner {spec.owner}) is ready on ManagedCluster "
            f"{view.cluster_ref}; credentials in Secret {secret_name(view.name)}."
            + (f" {_recreated(view, credentials)}" if recreated else "")
        ),
    )


def _kept_password(secret: SecretFound | None) -> str:
    """The password of the login kept: the Secret's, which names it (plan_credentials keeps
    a login only then)."""
    assert secret is not None and secret.password is not None
    return secret.password


def _differs(current: SecretFound | None, desired: Mapping[str, Any]) -> bool:
    if current is None:
        return True
    wanted = {k: base64.b64decode(v).decode() for k, v in desired["data"].items()}
    return dict(current.data) != wanted


def _credentials_status(
    view: ProvisionView, record: DatabaseRecord, credentials: CredentialsPlan
) -> CredentialsStatus:
    last_rotation = view.now if credentials.rotated else record.last_rotation
    retire_after = credentials.retire_after
    return CredentialsStatus(
        secret_name=secret_name(view.name),
        username=credentials.login,
        last_rotation=timefmt.rfc3339(last_rotation) if last_rotation else None,
        rotation_token=view.rotate_token if credentials.rotated else record.rotation_token,
        retiring=sorted(credentials.retiring),
        retire_after=timefmt.rfc3339(retire_after) if retire_after else None,
    )


def _recreated(view: ProvisionView, credentials: CredentialsPlan) -> str:
    retire_after = credentials.retire_after
    until = f" until {timefmt.rfc3339(retire_after)}" if retire_after else ""
    return (
        f"Secret {secret_name(view.name)} was missing its password and was recreated with a "
        f"new login, {credentials.login}: Vauban keeps no copy of a password. The previous "
        f"login keeps working{until} (the grace period), then is revoked: restart "
        f"applications that read the old credentials once."
    )


def name_conflict(message: str) -> Verdict:
    return Verdict(
        State.STALLED,
        Reason.NAME_CONFLICT,
        f"The {message}: Vauban does not take over what it did not create for this "
        "ManagedDatabase. Choose other names; nothing was changed.",
    )


def claim_lost(spec: ManagedDatabaseSpec) -> Verdict:
    """Another ManagedDatabase claimed the names between this one's look and its claim."""
    return name_conflict(
        f"database {spec.database_name} or role {spec.owner} was just claimed by another "
        "ManagedDatabase"
    )
