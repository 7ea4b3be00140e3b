"""The local control plane that `make run`, the tests and the benchmarks run against."""

from vauban.devcluster.build import Binaries, ensure_binaries
from vauban.devcluster.controlplane import LocalControlPlane

__all__ = ["Binaries", "LocalControlPlane", "ensure_binaries"]
