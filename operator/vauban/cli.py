"""The `vauban` command: the operator, its development tools, and the backup agent."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vauban import __version__


def _run(args: argparse.Namespace) -> int:
    from vauban.backup.slim import skip_admin_client
    from vauban.kube.slim import skip_unused_clients

    # Before kopf and the clients are imported: the operator's memory is mostly imported code.
    skip_unused_clients()
    skip_admin_client()
    from vauban.main import configure_logging, run
    from vauban.settings import Settings

    settings = Settings()
    configure_logging(settings)
    lost_leadership = asyncio.run(run(settings))
    # Exiting lets the kubelet restart the replica as a standby.
    return 1 if lost_leadership else 0


def _crds(args: argparse.Namespace) -> int:
    from vauban.api import crdgen, docgen

    directory, reference = Path(args.directory), Path(args.reference)
    chart = _chart_copies(
        Path(args.chart), crdgen.manifests(), f"{crdgen.DELETION_PROTECTION}.yaml"
    )
    if args.check:
        stale = crdgen.drift(directory)
        stale += [str(path) for path, content in chart.items() if _differs(path, content)]
        stale += [
            str(extra)
            for folder in sorted({path.parent for path in chart})
            for extra in sorted(folder.glob("*.yaml"))
            if extra not in chart
        ]
        if not reference.is_file() or reference.read_text(encoding="utf-8") != docgen.render():
            stale.append(str(reference))
        for path in stale:
            print(
                f"{path} differs from the models: run `vauban crds` and commit the result",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for written in crdgen.write(directory):
        print(written)
    for copy, content in chart.items():
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(content, encoding="utf-8")
        print(copy)
    reference.write_text(docgen.render(), encoding="utf-8")
    print(reference)
    return 0


def _chart_copies(chart: Path, manifests: dict[str, str], policy: str) -> dict[Path, str]:
    """The Helm chart's copy of the generated files: CRDs in its crds/ (Helm installs them
    before the templates), the admission policy in admission/ (a template renders it, so
    `helm upgrade` carries its changes)."""
    return {
        chart / ("admission" if name == policy else "crds") / name: content
        for name, content in manifests.items()
    }


def _differs(path: Path, content: str) -> bool:
    return not path.is_file() or path.read_text(encoding="utf-8") != content


def _compliance_report(args: argparse.Namespace) -> int:
    import json

    from vauban import report, timefmt
    from vauban.api.cluster import MANAGED_CLUSTER
    from vauban.api.database import MANAGED_DATABASE
    from vauban.kube.client import connect
    from vauban.kube.resources import Kube
    from vauban.settings import Settings

    async def collect() -> dict[str, object]:
        kube = Kube(await connect(Settings().kubeconfig))
        try:
            clusters = await kube.list_all(MANAGED_CLUSTER)
            databases = await kube.list_all(MANAGED_DATABASE)
        finally:
            await kube.close()
        return report.build(clusters, databases, timefmt.now())

    built = asyncio.run(collect())
    text = (
        report.markdown(built)
        if args.format == "markdown"
        else json.dumps(built, indent=2, ensure_ascii=False) + "\n"
    )
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _drill(args: argparse.Namespace) -> int:
    import json
    import logging

    from vauban import custody, drill
    from vauban.backup.settings import AgentSettings, ConfigurationError
    from vauban.backup.storage import ObjectStore
    from vauban.backup.storage_errors import StorageError
    from vauban.crypto import recovery
    from vauban.main import key_providers
    from vauban.settings import Settings

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        settings = AgentSettings.load()
        private = (
            recovery.private_key(Path(args.recovery_key_file).read_text(encoding="utf-8"))
            if args.recovery_key_file
            else None
        )
    except (ConfigurationError, recovery.InvalidRecoveryKey, OSError) as e:
        print(f"vauban drill: {e}", file=sys.stderr)
        return 2
    providers = {k: v for k, v in key_providers(Settings()).items() if k != "kubernetes-secret"}
    store = ObjectStore(
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        bucket=settings.s3_bucket,
        access_key_id=settings.access_key_id.get_secret_value(),
        secret_access_key=settings.secret_access_key.get_secret_value(),
        ca_file=settings.ca_bundle,
    )
    try:
        built = drill.run(
            store, args.prefix, custody.Custody(private, providers), settings.pg_bin_dir
        )
    except StorageError as e:
        print(f"vauban drill: the bucket: {e}", file=sys.stderr)
        return 3
    text = (
        drill.markdown(built)
        if args.format == "markdown"
        else json.dumps(built, indent=2, ensure_ascii=False) + "\n"
    )
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    summary = built["summary"]
    # Nothing found is a failed drill too: an auditor must not read "0 failed" as success.
    return 0 if summary["databases"] and not summary["failed"] else 1


def _recovery_key(args: argparse.Namespace) -> int:
    from vauban.crypto import recovery

    private, public = recovery.generate()
    path = Path(args.private_key_file)
    try:
        # Created, never overwritten, readable by its owner only.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(private + "\n")
    except OSError as e:
        print(f"vauban recovery-key generate: {e}", file=sys.stderr)
        return 2
    print(public)
    return 0


def _dev_run(args: argparse.Namespace) -> int:
    from vauban.devcluster.cli import real_node_wanted
    from vauban.devrun import dev_run, dev_run_real

    samples = Path(args.samples) if args.samples else None
    if not os.environ.get("VAUBAN_KUBECONFIG") and real_node_wanted(args.node):
        return dev_run_real(samples)
    return dev_run(Path(args.crds), samples)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="vauban", description=__doc__)
    root.add_argument("--version", action="version", version=f"vauban {__version__}")
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator (settings from VAUBAN_* variables)")
    run.set_defaults(func=_run)

    crds = commands.add_parser("crds", help="generate the CRDs from the API models")
    crds.add_argument("--directory", default="crds", help="where the CRD files live")
    crds.add_argument("--reference", default="docs/api.md", help="the API reference page")
    crds.add_argument("--chart", default="helm/vauban", help="the Helm chart holding a copy")
    crds.add_argument(
        "--check",
        action="store_true",
        help="fail if the files differ from what the models generate",
    )
    crds.set_defaults(func=_crds)

    compliance = commands.add_parser("compliance", help="evidence for auditors")
    compliance_commands = compliance.add_subparsers(dest="compliance_command", required=True)
    report = compliance_commands.add_parser(
        "report",
        help="per cluster and database: profile, rules, storage, keys, backups "
        "(from VAUBAN_KUBECONFIG, in-cluster credentials or ~/.kube/config)",
    )
    report.add_argument("--format", choices=("json", "markdown"), default="json")
    report.add_argument("--output", help="write to this file instead of standard output")
    report.set_defaults(func=_compliance_report)

    drill = commands.add_parser(
        "drill",
        help="recovery drill: restore each database's latest backup from the bucket, with the "
        "key custody alone, into scratch databases, and report (bucket from VAUBAN_S3_* and "
        "AWS_*, scratch server from libpq's PG*, HSM from the operator's VAUBAN_KMIP_*/"
        "VAUBAN_PKCS11_*)",
    )
    drill.add_argument("--prefix", default="", help="only the backups under this key prefix")
    drill.add_argument(
        "--recovery-key-file",
        help="the platform's recovery private key (for KEKs of the kubernetes-secret provider)",
    )
    drill.add_argument("--format", choices=("json", "markdown"), default="json")
    drill.add_argument("--output", help="write to this file instead of standard output")
    drill.set_defaults(func=_drill)

    recovery_key = commands.add_parser("recovery-key", help="the platform's recovery key")
    recovery_commands = recovery_key.add_subparsers(dest="recovery_command", required=True)
    generate = recovery_commands.add_parser(
        "generate",
        help="make a recovery key pair: the private half to a new file (keep it offline), "
        "the public half on standard output (VAUBAN_RECOVERY_PUBLIC_KEY)",
    )
    generate.add_argument("--private-key-file", required=True)
    generate.set_defaults(func=_recovery_key)

    from vauban.devcluster.cli import register as register_dev

    dev = commands.add_parser("dev", help="local development control plane")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    register_dev(dev_commands)
    dev_run = dev_commands.add_parser(
        "run", help="run the operator on a local control plane (or VAUBAN_KUBECONFIG's cluster)"
    )
    dev_run.add_argument("--crds", default="crds", help="CRD files to install first")
    dev_run.add_argument("--samples", help="folder of manifests to apply once the CRDs are in")
    dev_run.add_argument(
        "--node",
        choices=("auto", "real", "kwok"),
        default="kwok",
        help="real: Vauban installed by its chart on the real node, pods run for real; kwok: "
        "the operator as a process, fake nodes; auto: real where the machine can",
    )
    dev_run.set_defaults(func=_dev_run)

    from vauban.backup.commands import register as register_agent

    agent = commands.add_parser(
        "agent", help="the backup agent, run in Jobs (settings from the environment)"
    )
    register_agent(agent.add_subparsers(dest="agent_command", required=True))
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
