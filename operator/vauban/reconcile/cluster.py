"""What a ManagedCluster needs before Vauban can run or adopt it, and the verdict."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from vauban.api.cluster import ManagedClusterSpec
from vauban.conditions import Reason, State, Verdict

CNPG_CRD = "clusters.postgresql.cnpg.io"

# Keys of a kubernetes.io/basic-auth Secret, which CloudNativePG and PGO use too.
ADMIN_SECRET_KEYS = ("username", "password")


@dataclass(frozen=True)
class ClusterObservation:
    """What the handler read from the apiserver for one cluster."""

    engine_installed: bool
    """Whether CloudNativePG's CRD exists (mode Managed)."""

    admin_secret_keys: Collection[str] | None
    """Keys present in the admin Secret (mode External); None when the Secret is missing."""


def assess(*, spec: ManagedClusterSpec, observed: ClusterObservation) -> Verdict:
    if spec.mode == "Managed":
        if not observed.engine_installed:
            return Verdict(
                State.STALLED,
                Reason.ENGINE_NOT_INSTALLED,
                f"CloudNativePG is not installed: the CRD {CNPG_CRD} is missing. Install "
                "CloudNativePG (its CRDs and operator) to run mode Managed clusters, or adopt "
                "an existing server with mode External.",
            )
        return Verdict(
            State.STALLED,
            Reason.NOT_IMPLEMENTED,
            "CloudNativePG is installed, but this version of Vauban does not render managed "
            "clusters yet. Nothing was created.",
        )

    assert spec.external is not None  # the CRD's CEL rules guarantee it for mode External
    secret = spec.external.admin_secret_ref.name
    if observed.admin_secret_keys is None:
        return Verdict(
            State.WAITING,
            Reason.SECRET_MISSING,
            f"Secret {secret} (spec.external.adminSecretRef) does not exist. Create it with "
            "the keys username and password of a role that may create roles and databases.",
        )
    missing = [k for k in ADMIN_SECRET_KEYS if k not in observed.admin_secret_keys]
    if missing:
        return Verdict(
            State.STALLED,
            Reason.SECRET_MISSING,
            f"Secret {secret} (spec.external.adminSecretRef) lacks the key(s) "
            f"{', '.join(missing)}. Add them: Vauban needs username and password.",
        )
    return Verdict(
        State.STALLED,
        Reason.NOT_IMPLEMENTED,
        f"Secret {secret} is in place, but this version of Vauban does not connect to "
        "external servers yet.",
    )
