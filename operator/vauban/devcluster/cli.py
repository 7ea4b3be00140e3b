"""`vauban dev build` and `vauban dev up`."""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _build(args: argparse.Namespace) -> int:
    from vauban.devcluster.build import ensure_all

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, path in ensure_all().items():
        print(f"{name:24} {path}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from vauban.devcluster.controlplane import LocalControlPlane

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with LocalControlPlane(keep=args.keep) as plane:
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


def register(commands: Any) -> None:
    """Add the dev sub-commands to the `vauban dev` sub-parsers."""
    build = commands.add_parser(
        "build", help="build the control plane's binaries and test tools (cached)"
    )
    build.set_defaults(func=_build)
    up = commands.add_parser("up", help="start a local control plane until interrupted")
    up.add_argument("--kubeconfig-out", help="also write the kubeconfig here")
    up.add_argument(
        "--keep", action="store_true", help="keep the data folder (etcd, logs) after stopping"
    )
    up.set_defaults(func=_up)
