"""The local control plane that `make run`, the tests and the benchmarks run against.

Its names load on first use: `vauban agent`, which shares the command with the development
tools, starts in every backup Job and should not pay for importing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vauban.devcluster.build import Binaries, ensure_binaries
    from vauban.devcluster.controlplane import LocalControlPlane

__all__ = ["Binaries", "LocalControlPlane", "ensure_binaries"]


def __getattr__(name: str) -> Any:
    if name in ("Binaries", "ensure_binaries"):
        from vauban.devcluster import build

        return getattr(build, name)
    if name == "LocalControlPlane":
        from vauban.devcluster.controlplane import LocalControlPlane

        return LocalControlPlane
    raise AttributeError(name)
