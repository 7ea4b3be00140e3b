"""Growing a managed cluster's volumes: what size CloudNativePG is given, and what is said.

CloudNativePG grows an instance's volume by raising its claim's request; the apiserver
refuses that unless the claim's StorageClass has `allowVolumeExpansion: true`. A refused
patch does not only leave the volume as it was: CloudNativePG's reconcile stops at it (its
persistentvolumeclaim.Reconcile returns the error before the pods are reconciled), so
nothing else asked of the cluster would happen. On such a class the new size is therefore
held back (CloudNativePG keeps the size it has) and the cluster says so, instead of reporting
Ready for a spec it does not run. The spec cannot be set back (volumes never shrink: the
CRD refuses it), so the cluster stays Stalled while it keeps serving: its databases are
still provisioned (`serves`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from vauban.conditions import Reason, State, Verdict

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{suffix: Decimal(1000) ** (i + 1) for i, suffix in enumerate("kMGTPE")},
    **{f"{suffix}i": Decimal(1024) ** (i + 1) for i, suffix in enumerate("KMGTPE")},
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


def quantity(text: str) -> Decimal:
    """A Kubernetes quantity (10Gi, 500M, 1e9, 1073741824) as a number of units."""
    found = _QUANTITY.match(text.strip())
    if found is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = Decimal(found.group(1)), found.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** int(suffix[1:])
    return number * _SUFFIXES[suffix]


@dataclass(frozen=True)
class Claim:
    """An instance's volume claim as the apiserver holds it."""

    name: str
    request: str | None
    capacity: str | None
    """What the bound volume offers; None until bound."""


def size_to_render(wanted: str, running: str | None, expandable: bool | None) -> str:
    """The size given to CloudNativePG: the spec's, unless it grows volumes whose class
    cannot expand (`expandable` False or None: no such class), then the size it runs."""
    if running is None or quantity(wanted) <= quantity(running) or expandable:
        return wanted
    return running


def resize_unsupported(
    wanted: str, running: str, storage_class: str | None, expandable: bool | None
) -> Verdict:
    what = (
        f"StorageClass {storage_class or '(the default class)'} does not allow volume expansion"
        if expandable is not None
        else f"StorageClass {storage_class or '(default)'} does not exist"
    )
    return Verdict(
        State.STALLED,
        Reason.STORAGE_RESIZE_UNSUPPORTED,
        f"spec.storage.size asks for {wanted} but the volumes cannot grow: {what} "
        "(allowVolumeExpansion is not true; static and local volumes never can). PostgreSQL "
        f"keeps running and serving on volumes of {running}, the size CloudNativePG keeps. "
        "Have the platform allow expansion on the class, or move the data to a new cluster "
        "with larger volumes (a backup restored into it).",
    )


def growing(wanted: str, claims: Sequence[Claim]) -> Verdict | None:
    """Reconciling while some claim's volume is smaller than the spec asks (CloudNativePG
    raised the requests; the storage driver grows the volumes, then the file systems)."""
    short = [
        f"{c.name} has {c.capacity or 'no volume yet'}"
        for c in sorted(claims, key=lambda c: c.name)
        if c.capacity is None or quantity(c.capacity) < quantity(wanted)
    ]
    if not short:
        return None
    return Verdict(
        State.PROGRESSING,
        Reason.STORAGE_RESIZING,
        f"Growing the volumes to {wanted}: {'; '.join(short)}.",
    )


def serves(ready_reason: str | None) -> bool:
    """Whether a cluster that is not Ready still serves its databases: only a growth its
    volumes cannot take keeps it from Ready, and PostgreSQL runs as before."""
    return ready_reason == Reason.STORAGE_RESIZE_UNSUPPORTED
