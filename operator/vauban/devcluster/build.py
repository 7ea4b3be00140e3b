"""Builds the local control plane's binaries from Go modules, once, into a cache.

No Docker and no prebuilt downloads: each component is built from its Go module at a pinned
version, through a small wrapper module under `tools/` that pins it (Kubernetes also pins
each of its staging modules there, which is why `go install k8s.io/kubernetes/...` alone
fails). A build goes to a temporary folder renamed into place, so an interrupted build never
leaves a half-filled cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
VERSITYGW_VERSION = "v1.8.0"
PROMETHEUS_VERSION = "v0.316.0"
COREDNS_VERSION = "v1.15.0"
CLOUDNATIVEPG_VERSION = "v1.30.1"
BARMAN_CLOUD_PLUGIN_VERSION = "v0.15.0"
PAUSE_VERSION = "v1"
"""Vauban's own sandbox program (tools/pause): bump it when main.go changes."""

# operator/vauban/devcluster/build.py -> the repository root.
TOOLS = Path(__file__).resolve().parents[3] / "tools"


class BuildError(RuntimeError):
    """A component could not be built; the message carries the end of Go's output."""


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    module: str
    """Folder under tools/ holding the wrapper module."""

    packages: dict[str, str]
    """Binary name -> Go package that builds it."""

    ldflags: str = "-s -w"

    from_assets: bool = True
    """Whether KUBEBUILDER_ASSETS may provide its binaries (Kubernetes' and etcd's names)."""

    @property
    def folder(self) -> str:
        return f"{self.name}-{self.version}"


def _version_ldflags(version: str) -> str:
    """Stamp the version the binaries report (`/version`, `kubectl version`): a build from
    a module otherwise says v0.0.0."""
    major, minor = version.removeprefix("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


COMPONENTS = (
    Component(
        name="kubernetes",
        version=KUBERNETES_VERSION,
        module="kube",
        packages={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        },
        ldflags=_version_ldflags(KUBERNETES_VERSION),
    ),
    Component(
        name="etcd",
        version=ETCD_VERSION,
        module="etcd",
        packages={"etcd": "go.etcd.io/etcd/server/v3"},
    ),
    Component(
        name="kwok",
        version=KWOK_VERSION,
        module="kwok",
        packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    ),
)

# Tools some tests need besides the control plane; built by `vauban dev build` (so once per
# machine in `make test`), and on first use otherwise, so `make run` never waits for them.
TOOLS_COMPONENTS = (
    Component(
        name="helm",
        version=HELM_VERSION,
        module="helm",
        packages={"helm": "helm.sh/helm/v3/cmd/helm"},
        ldflags=f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
    ),
    Component(
        name="versitygw",
        version=VERSITYGW_VERSION,
        module="versitygw",
        packages={"versitygw": "github.com/versity/versitygw/cmd/versitygw"},
    ),
    Component(
        name="promtool",
        version=PROMETHEUS_VERSION,
        module="promtool",
        packages={"promtool": "github.com/prometheus/prometheus/cmd/promtool"},
    ),
)


# -- the real node (`vauban dev up --node real`) ------------------------------------------------

NODE_COMPONENTS = (
    # Its own folder, so the control plane's cached binaries stay valid.
    Component(
        name="kubernetes-node",
        version=KUBERNETES_VERSION,
        module="kube",
        packages={
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        },
        ldflags=_version_ldflags(KUBERNETES_VERSION),
    ),
    Component(
        name="coredns",
        version=COREDNS_VERSION,
        module="coredns",
        packages={"coredns": "github.com/coredns/coredns"},
    ),
    # Go programs that go into images, not onto the host.
    Component(
        name="cloudnative-pg",
        version=CLOUDNATIVEPG_VERSION,
        module="cloudnative-pg",
        packages={"manager": "github.com/cloudnative-pg/cloudnative-pg/cmd/manager"},
        from_assets=False,
    ),
    # CloudNativePG's WAL archiving and recovery (CNPG-I), the path that outlives the
    # deprecated in-tree barmanObjectStore: its operator, and the sidecar it injects.
    Component(
        name="plugin-barman-cloud",
        version=BARMAN_CLOUD_PLUGIN_VERSION,
        module="plugin-barman-cloud",
        packages={
            "plugin-barman-cloud": "github.com/cloudnative-pg/plugin-barman-cloud/cmd/manager"
        },
        from_assets=False,
    ),
    Component(
        name="pause",
        version=PAUSE_VERSION,
        module="pause",
        packages={"pause": "."},
        from_assets=False,
    ),
)


@dataclass(frozen=True)
class NodeBinaries:
    kubelet: Path
    kube_proxy: Path
    coredns: Path
    cloudnativepg_manager: Path
    barman_cloud_plugin: Path
    pause: Path


def ensure_node_binaries() -> NodeBinaries:
    """What the real node builds from Go modules (cached like the control plane)."""
    found = _ensure(NODE_COMPONENTS)
    return NodeBinaries(
        kubelet=found["kubelet"],
        kube_proxy=found["kube-proxy"],
        coredns=found["coredns"],
        cloudnativepg_manager=found["manager"],
        barman_cloud_plugin=found["plugin-barman-cloud"],
        pause=found["pause"],
    )


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path


def cache_dir() -> Path:
    """VAUBAN_CACHE_DIR, else $XDG_CACHE_HOME/vauban, else ~/.cache/vauban."""
    if explicit := os.environ.get("VAUBAN_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vauban"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _prebuilt(name: str) -> Path | None:
    """A binary from KUBEBUILDER_ASSETS, the folder envtest users already have."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        return None
    path = Path(assets) / name
    return path if _executable(path) else None


def _go_build(component: Component, target: Path) -> None:
    module = TOOLS / component.module
    if not (module / "go.mod").is_file():
        raise BuildError(f"{module}/go.mod is missing: build from a source checkout of Vauban")
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain (go) is needed to build the local control plane")
    target.parent.mkdir(parents=True, exist_ok=True)
    # One `go build` for all of a component's commands: the package graph is loaded once and
    # the (slow) links run in parallel. A lone command is named explicitly, since Go would
    # call etcd's `.../server/v3` "server".
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}
    started = time.monotonic()
    logger.info(
        "building %s %s (first time only; minutes on 2 cores)", component.name, component.version
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{component.folder}-", dir=target.parent))
    try:
        if len(component.packages) == 1:
            output = str(staging / next(iter(component.packages)))
        else:
            output = f"{staging}{os.sep}"
        command = [go, "build", "-trimpath", "-ldflags", component.ldflags, "-o", output]
        result = subprocess.run(
            [*command, *component.packages.values()],
            cwd=module,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise BuildError(f"go build of {component.name} {component.version} failed:\n{tail}")
        absent = [b for b in component.packages if not _executable(staging / b)]
        if absent:
            raise BuildError(f"go build of {component.name} did not produce {', '.join(absent)}")
        try:
            staging.rename(target)
        except OSError:
            # Another build (a parallel test run) got there first: theirs is as good.
            if not all(_executable(target / b) for b in component.packages):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "built %s %s in %.0f s", component.name, component.version, time.monotonic() - started
    )


def _ensure(components: tuple[Component, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    bin_dir = cache_dir() / "bin"
    for component in components:
        target = bin_dir / component.folder
        missing = []
        for binary in component.packages:
            prebuilt = _prebuilt(binary) if component.from_assets else None
            if prebuilt is not None:
                found[binary] = prebuilt
            elif _executable(target / binary):
                found[binary] = target / binary
            else:
                missing.append(binary)
        if missing:
            # A partial folder (an older layout, a hand edit) is rebuilt whole.
            shutil.rmtree(target, ignore_errors=True)
            _go_build(component, target)
            found.update({b: target / b for b in missing})
    return found


def ensure_binaries() -> Binaries:
    """Every binary of the local control plane, built if the cache lacks it."""
    found = _ensure(COMPONENTS)
    return Binaries(**{name.replace("-", "_"): path for name, path in found.items()})


def ensure_tool(name: str) -> Path:
    """One of TOOLS_COMPONENTS' binaries (helm, versitygw, promtool), built if missing."""
    for component in TOOLS_COMPONENTS:
        if name in component.packages:
            return _ensure((component,))[name]
    raise KeyError(f"no tool named {name!r}")


def ensure_all(*, real_node: bool = False) -> dict[str, Path]:
    """The control plane's binaries and every tool: what `make test` needs; with `real_node`,
    also what the real node builds from Go modules."""
    return _ensure(COMPONENTS + TOOLS_COMPONENTS + (NODE_COMPONENTS if real_node else ()))


def module_source(module: str, version: str) -> Path:
    """The source folder of a Go module in the module cache, downloading it if needed."""
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain (go) is needed to read kwok's stage definitions")
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=TOOLS / "kwok",
    )
    if result.returncode != 0:
        raise BuildError(f"go mod download {module}@{version} failed:\n{result.stderr[-2000:]}")
    return Path(json.loads(result.stdout)["Dir"])
