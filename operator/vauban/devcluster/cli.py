"""`vauban dev build`, `vauban dev images`, `vauban dev up` and `vauban dev clean`."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NODE_KINDS = ("auto", "real", "kwok")


def real_node_wanted(kind: str) -> bool:
    """Whether `--node kind` means the real node on this machine. `auto` picks it where the
    machine can run it and says why not otherwise; `real` where it cannot is an error."""
    from vauban.devcluster.realnode import unavailable_reason

    if kind == "kwok":
        return False
    reason = unavailable_reason()
    if reason is None:
        return True
    if kind == "real":
        raise SystemExit(f"vauban dev: {reason}")
    logger.warning("the real node cannot run here (%s): kwok's fake nodes instead", reason)
    return False


def _build(args: argparse.Namespace) -> int:
    from vauban.devcluster.build import ensure_all

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    real = real_node_wanted(args.node)
    for name, path in ensure_all(real_node=real).items():
        print(f"{name:24} {path}")
    if real:
        _images(args)
    return 0


def _images(args: argparse.Namespace) -> int:
    from vauban.devcluster.images import ensure_images

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for image in ensure_images().all():
        print(f"{image.name:60} {image.archive}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from vauban.devcluster.controlplane import LocalControlPlane

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    plane: LocalControlPlane
    if real_node_wanted(args.node):
        from vauban.devcluster.realnode import RealCluster

        plane = RealCluster(nodes=args.nodes, keep=args.keep)
    else:
        plane = LocalControlPlane(keep=args.keep)
    with plane:
        if args.node != "kwok" and args.stack != "none":
            from vauban.devcluster.realnode import RealCluster

            assert isinstance(plane, RealCluster)
            plane.install_stack(vauban=args.stack == "vauban")
        kubeconfig = plane.kubeconfig
        if args.kubeconfig_out:
            kubeconfig = Path(args.kubeconfig_out)
            kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plane.kubeconfig, kubeconfig)
            kubeconfig.chmod(0o600)
        print(f"export KUBECONFIG={kubeconfig.resolve()}", flush=True)
        logger.info("component logs in %s", plane.data_dir / "logs")
        stop.wait()
    return 0


def _sbom(args: argparse.Namespace) -> int:
    from vauban.devcluster.images import vauban_images
    from vauban.devcluster.sbom import image_sbom

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    # An archive given (`docker save`, `podman save --format oci-archive`), or Vauban's two
    # images as this machine builds them from the Containerfile.
    images = [(Path(a), n) for a, n in args.archive] or [
        (image.archive, image.name) for image in vauban_images()
    ]
    for archive, name in images:
        target = output / f"{name.rpartition(':')[0].rsplit('/', 1)[-1] or name}.cdx.json"
        target.write_text(image_sbom(archive, name), encoding="utf-8")
        print(target)
    return 0


def _clean(args: argparse.Namespace) -> int:
    from vauban.devcluster import realnode

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    left = realnode.sweep_stale()
    for cluster_id, remains in left.items():
        if any(remains.values()):
            logger.error("cluster %s left behind: %s", cluster_id, remains)
            return 1
        logger.info("cleaned up real-node cluster %s", cluster_id)
    return 0


def register(commands: Any) -> None:
    """Add the dev sub-commands to the `vauban dev` sub-parsers."""
    build = commands.add_parser(
        "build", help="build the control plane's binaries and test tools (cached)"
    )
    build.add_argument(
        "--node",
        choices=NODE_KINDS,
        default="kwok",
        help="real (or auto, where the machine can run it): also the real node's programs "
        "(kubelet, kube-proxy, CoreDNS, ...) and images",
    )
    build.set_defaults(func=_build)
    images = commands.add_parser(
        "images", help="build the real node's images (cached): PostgreSQL, CloudNativePG, Vauban"
    )
    images.set_defaults(func=_images)
    up = commands.add_parser("up", help="start a local cluster until interrupted")
    up.add_argument("--kubeconfig-out", help="also write the kubeconfig here")
    up.add_argument(
        "--keep", action="store_true", help="keep the data folder (etcd, logs) after stopping"
    )
    up.add_argument(
        "--node",
        choices=NODE_KINDS,
        default="kwok",
        help="real: containers run for real (root, Linux); kwok: fake nodes (default); "
        "auto: real where the machine can",
    )
    up.add_argument("--nodes", type=int, default=3, help="real nodes (default 3)")
    up.add_argument(
        "--stack",
        choices=("none", "cloudnative-pg", "vauban"),
        default="vauban",
        help="on the real node: what to install (default: CloudNativePG, then Vauban's chart)",
    )
    up.set_defaults(func=_up)
    sbom = commands.add_parser(
        "sbom", help="CycloneDX SBOMs of Vauban's images (built if needed), or of OCI archives"
    )
    sbom.add_argument("--output", default="dist", help="folder of the <image>.cdx.json files")
    sbom.add_argument(
        "--archive",
        nargs=2,
        action="append",
        default=[],
        metavar=("PATH", "NAME"),
        help="an OCI image archive and its image name (repeatable); default: Vauban's images",
    )
    sbom.set_defaults(func=_sbom)
    clean = commands.add_parser(
        "clean",
        help="remove what real-node clusters killed without their clean-up left on this machine",
    )
    clean.set_defaults(func=_clean)
