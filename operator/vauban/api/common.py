"""Types shared by every Vauban kind: conditions, references, quantities, resources.

Field docstrings are the API documentation: the CRD generator copies them into the
OpenAPI schema, so `kubectl explain` shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

GROUP = "vauban.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def cel(rule: str, message: str, *, reason: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry: a CEL rule the apiserver checks at admission."""
    entry = {"rule": rule, "message": message}
    if reason is not None:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules, for a model or a field."""
    return {"x-kubernetes-validations": list(rules)}


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused, docstrings kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the apiserver stores it: camelCase keys, unset optionals omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status is written by the operator and read back from the apiserver; it tolerates fields
    a newer operator version may have added, so a rollback never fails to parse it.

    The kinds' status models are what the reconciles return and what the one status writer
    (vauban.reconcile.status) serializes; a status read back is parsed once (`parse`)."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def parse(cls, status: Mapping[str, Any] | None) -> Self:
        """A status as stored; one that does not parse (edited by hand) reads as empty:
        status is shown, never trusted, so losing it costs a display until the next write."""
        try:
            return cls.model_validate(status or {})
        except ValidationError:
            return cls()

    def to_wire(self) -> dict[str, Any]:
        """Only what a reconcile set: a field nobody observed is absent, not its default."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude_unset=True, mode="json")

    def merged(self, other: Self) -> Self:
        """This status with every field `other` set replacing its own (a field set to None
        clears it)."""
        return self.model_copy(update={k: getattr(other, k) for k in other.model_fields_set})


# A Kubernetes object name (DNS-1123 subdomain, as for Secrets and most kinds).
ObjectName = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]

# A namespace name (DNS-1123 label).
NamespaceName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]

# A PostgreSQL identifier Vauban creates: lower case so it never needs quoting in a tenant's
# SQL, and at most NAMEDATALEN-1 bytes. Fields of this type also carry NOT_PG_RESERVED among
# their CEL rules (rules of a field replace those of its type, so each field lists them all).
PG_IDENTIFIER = StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z_][a-z0-9_]*$")
NOT_PG_RESERVED = cel(
    "!self.startsWith('pg_')", "names starting with pg_ are reserved by PostgreSQL"
)

# A positive storage or memory quantity, e.g. 10Gi or 512Mi. Signs and exponents are refused:
# they are legal Kubernetes quantities but never what a person means for a disk size.
Quantity = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=32,
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$",
    ),
]

# A duration in whole seconds, minutes, hours, days or weeks, e.g. 30s, 15m, 12h, 30d, 2w.
Duration = Annotated[
    str, StringConstraints(min_length=2, max_length=12, pattern=r"^[1-9][0-9]{0,5}[smhdw]$")
]

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(duration: str) -> int:
    """`30s`, `15m`, `12h`, `30d`, `2w` in seconds (the Duration pattern guarantees the
    form)."""
    return int(duration[:-1]) * _DURATION_UNITS[duration[-1]]


# A cron schedule: five fields, or one of the @-macros CronJob understands.
CronSchedule = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=128,
        pattern=r"^(@(yearly|annually|monthly|weekly|daily|hourly)|([^\s]+\s+){4}[^\s]+)$",
    ),
]

ConditionStatus = Literal["True", "False", "Unknown"]

DeletionPolicy = Literal["Retain", "Delete"]


class Condition(StatusModel):
    """One aspect of the object's state, as in metav1.Condition."""

    type: Annotated[
        str,
        StringConstraints(
            max_length=316,
            pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        ),
    ]
    """Type of condition in CamelCase: Ready, Reconciling, Stalled, or a domain condition."""

    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""

    reason: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ]
    """Machine-readable CamelCase reason for the last transition."""

    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """Human-readable explanation: what is wrong and what to do about it."""

    last_transition_time: str
    """When the condition last changed status (RFC 3339)."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation the condition was computed from."""


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: ObjectName
    """Name of the referent."""


class SecretKeySelector(ApiModel):
    """A key of a Secret in the same namespace."""

    name: ObjectName
    """Name of the Secret."""

    key: Annotated[
        str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    ]
    """Key within the Secret's data."""


class ResourceList(ApiModel):
    """Amounts of compute resources."""

    cpu: (
        Annotated[
            str,
            StringConstraints(max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?m?$"),
        ]
        | None
    ) = None
    """CPU, in cores (e.g. 2 or 500m)."""

    memory: Quantity | None = None
    """Memory (e.g. 4Gi)."""


class ResourceRequirements(ApiModel):
    """Compute resources of each PostgreSQL instance."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.requests) || !has(self.limits) || !has(self.requests.cpu)"
                " || !has(self.limits.cpu)"
                " || quantity(self.limits.cpu).compareTo(quantity(self.requests.cpu)) >= 0",
                "resources.limits.cpu must be at least resources.requests.cpu",
            ),
            cel(
                "!has(self.requests) || !has(self.limits) || !has(self.requests.memory)"
                " || !has(self.limits.memory)"
                " || quantity(self.limits.memory).compareTo(quantity(self.requests.memory)) >= 0",
                "resources.limits.memory must be at least resources.requests.memory",
            ),
        )
    )

    requests: ResourceList | None = None
    """Resources reserved for each instance; the scheduler places pods by these."""

    limits: ResourceList | None = None
    """Most resources each instance may use. Memory above the limit gets the instance killed."""


_IEC_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size_bytes: int | None) -> str | None:
    """A byte count as a person reads it (1.5 GiB), for status fields that `kubectl get`
    shows: a printer column can only print the raw integer."""
    if size_bytes is None:
        return None
    value, step = float(size_bytes), 0
    while value >= 1024 and step < len(_IEC_UNITS) - 1:
        value, step = value / 1024, step + 1
    return f"{size_bytes} B" if step == 0 else f"{value:.1f} {_IEC_UNITS[step]}"


@dataclass(frozen=True)
class PrinterColumn:
    """A column of `kubectl get`; priority 1 columns show only with `-o wide`."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0

    @classmethod
    def ready(cls) -> PrinterColumn:
        return cls(
            "Ready",
            "string",
            ".status.conditions[?(@.type=='Ready')].status",
            "Whether the object is ready (kstatus Ready condition).",
        )

    @classmethod
    def reason(cls) -> PrinterColumn:
        return cls(
            "Reason",
            "string",
            ".status.conditions[?(@.type=='Ready')].reason",
            "Why it is, or is not, ready: the Ready condition's reason.",
        )

    @classmethod
    def phase(cls) -> PrinterColumn:
        return cls("Phase", "string", ".status.phase")

    @classmethod
    def age(cls) -> PrinterColumn:
        return cls("Age", "date", ".metadata.creationTimestamp")


@dataclass(frozen=True)
class KindInfo:
    """Everything the CRD generator and the handlers need to know about one kind."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    """What the kind is, for `kubectl explain <kind>` (the schema's root description)."""
    spec: type[ApiModel]
    status: type[StatusModel]
    printer_columns: tuple[PrinterColumn, ...]
    object_rules: tuple[dict[str, str], ...] = ()
    categories: tuple[str, ...] = ("vauban",)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"
