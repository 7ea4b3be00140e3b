"""`kubectl vauban`: Vauban's objects at a glance and the day-to-day operations on them
(backup, restore, rotate, psql, a support bundle, the compliance report), for the person at
the keyboard. kubectl finds the `kubectl-vauban` executable on PATH and hands it every
argument after `kubectl vauban`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from vauban import __version__, report, timefmt
from vauban.api.backup import MANAGED_BACKUP
from vauban.api.cluster import MANAGED_CLUSTER
from vauban.api.common import KindInfo
from vauban.api.database import MANAGED_DATABASE
from vauban.kube.plugin import KubeError, PluginKube, connect, context_namespace
from vauban.plugin import redact, views
from vauban.reconcile.database import ROTATE_ANNOTATION
from vauban.reconcile.keys import ROTATE_KEY_ANNOTATION

OPERATOR_NAMESPACE = "vauban-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=vauban"

_KINDS: dict[str, KindInfo] = {
    **dict.fromkeys(("cluster", "mdbc", "managedcluster", "managedclusters"), MANAGED_CLUSTER),
    **dict.fromkeys(("database", "mdb", "manageddatabase", "manageddatabases"), MANAGED_DATABASE),
}


Deferred = Callable[[], int]
"""What a command does once its connection to the apiserver is closed (psql's session)."""

Command = Callable[[PluginKube, argparse.Namespace, str], Awaitable["int | Deferred"]]


class Failed(Exception):
    """The command did not do what was asked: a sentence for the person, exit status 1."""


def _emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    output = getattr(args, "output", None) or "text"
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif output == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        sys.stdout.write(text(data))


def _say(message: str) -> None:
    """Progress goes to standard error: standard output stays the result, for scripts."""
    print(message, file=sys.stderr, flush=True)


async def _wait(
    kube: PluginKube, kind: KindInfo, namespace: str, name: str, limit: float
) -> dict[str, Any]:
    """Poll an object until it is Ready (returned) or Stalled (Failed raised), saying each
    change of its phase and reason on the way."""
    started, last = time.monotonic(), ""
    while True:
        obj = await kube.get(kind, namespace, name)
        line = views.progress(obj)
        if line != last:
            _say(f"[{time.monotonic() - started:5.0f}s] {kind.kind} {name}: {line}")
            last = line
        outcome = views.finished(obj)
        if outcome is True:
            return obj
        if outcome is False:
            raise Failed(f"{kind.kind} {namespace}/{name} failed: {line}")
        if time.monotonic() - started > limit:
            raise Failed(
                f"{kind.kind} {namespace}/{name} not ready after {limit:.0f}s: {line}"
                " (it goes on; `kubectl vauban status` follows it)"
            )
        await asyncio.sleep(1)


async def _status(kube: PluginKube, args: argparse.Namespace, namespace: str) -> int:
    kind = _KINDS[args.kind]
    obj = await kube.get(kind, namespace, args.name)
    now = timefmt.now()
    if kind is MANAGED_CLUSTER:
        databases = await kube.databases_visible(namespace)
        _emit(args, views.cluster_view(obj, databases, now), views.render_cluster)
    else:
        backups = await kube.list_namespaced(MANAGED_BACKUP, namespace)
        _emit(args, views.database_view(obj, backups, now), views.render_database)
    return 0


async def _backup(kube: PluginKube, args: argparse.Namespace, namespace: str) -> int:
    await kube.get(MANAGED_DATABASE, namespace, args.database)  # a clear 404 first
    name = args.name or f"{args.database}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    await kube.create(MANAGED_BACKUP, views.backup_manifest(namespace, name, args.database))
    _say(f"ManagedBackup {namespace}/{name} created")
    obj = await kube.get(MANAGED_BACKUP, namespace, name)
    if args.wait:
        obj = await _wait(kube, MANAGED_BACKUP, namespace, name, args.timeout)
    entry = views.backup_entry(obj)
    _emit(args, entry, lambda e: f"{e['name']}: {e['phase']}, {views.dash(e['size'])}\n")
    return 0


async def _restore(kube: PluginKube, args: argparse.Namespace, namespace: str) -> int:
    source = await kube.get(MANAGED_DATABASE, namespace, args.source)
    if args.backup:
        await kube.get(MANAGED_BACKUP, namespace, args.backup)
    manifest = views.restore_manifest(
        source,
        args.target,
        backup=args.backup,
        database_name=args.database_name or views.identifier(args.target),
        owner=args.owner or views.identifier(f"{args.target}_owner"),
    )
    await kube.create(MANAGED_DATABASE, manifest)
    _say(f"ManagedDatabase {namespace}/{args.target} created from {args.backup or args.source}")
    obj = await kube.get(MANAGED_DATABASE, namespace, args.target)
    if args.wait:
        obj = await _wait(kube, MANAGED_DATABASE, namespace, args.target, args.timeout)
    view = views.database_view(obj, [], timefmt.now())
    _emit(args, view, views.render_database)
    return 0


async def _rotate(kube: PluginKube, args: argparse.Namespace, namespace: str) -> int:
    """Rotation by the annotations the operator honours: a new token is a new request."""
    kind, annotation, acted = (
        (MANAGED_DATABASE, ROTATE_ANNOTATION, ("credentials", "rotationToken"))
        if args.what == "credentials"
        else (MANAGED_CLUSTER, ROTATE_KEY_ANNOTATION, ("encryption", "rotationToken"))
    )
    token = args.token or timefmt.now().strftime("%Y%m%dT%H%M%SZ")
    await kube.annotate(kind, namespace, args.name, {annotation: token})
    _say(f"{kind.kind} {namespace}/{args.name} annotated {annotation}={token}")
    result = {"kind": kind.kind, "namespace": namespace, "name": args.name, "token": token}
    if args.wait:
        started = time.monotonic()
        while True:
            obj = await kube.get(kind, namespace, args.name)
            section = (obj.get("status") or {}).get(acted[0]) or {}
            if section.get(acted[1]) == token:
                result["lastRotation"] = section.get("lastRotation")
                break
            if time.monotonic() - started > args.timeout:
                raise Failed(f"rotation not acted on after {args.timeout:.0f}s")
            await asyncio.sleep(1)
        _say("rotated")
    _emit(args, result, lambda r: f"{r['kind']} {r['namespace']}/{r['name']}: {r['token']}\n")
    return 0


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


async def _psql(kube: PluginKube, args: argparse.Namespace, namespace: str) -> Deferred:
    database = await kube.get(MANAGED_DATABASE, namespace, args.database)
    secret = ((database.get("status") or {}).get("credentials") or {}).get(
        "secretName"
    ) or f"{args.database}-credentials"
    values = await kube.read_secret(namespace, secret)
    if not values or "password" not in values:
        raise Failed(f"Secret {namespace}/{secret} has no credentials yet")
    binary = args.psql or shutil.which("psql")
    if binary is None:
        raise Failed("psql is not on PATH (install the PostgreSQL client, or pass --psql)")
    return lambda: _run_psql(binary, values, args)


def _run_psql(binary: str, values: Mapping[str, str], args: argparse.Namespace) -> int:
    """psql as the database's own login. The password reaches psql through a PGPASSFILE
    only this user can read, deleted when psql exits: never on a command line (other users
    see those), in the environment (/proc/<pid>/environ), or on the terminal."""
    with tempfile.TemporaryDirectory(prefix="kubectl-vauban-") as folder:
        pgpass = Path(folder) / "pgpass"
        pgpass.touch(mode=0o600)
        pgpass.write_text(
            f"*:*:*:{_pgpass_field(values['username'])}:{_pgpass_field(values['password'])}\n",
            encoding="utf-8",
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PGPASSWORD", "PGSERVICE", "PGSERVICEFILE")
        }
        env.update(
            PGHOST=args.host or values.get("host", ""),
            PGPORT=str(args.port or values.get("port", "5432")),
            PGDATABASE=values.get("dbname", ""),
            PGUSER=values["username"],
            PGPASSFILE=str(pgpass),
            PGSSLMODE=args.sslmode or values.get("sslmode") or "prefer",
            PGAPPNAME="kubectl-vauban",
        )
        return subprocess.run([binary, *args.psql_args], env=env, check=False).returncode


def _strip(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object as a bundle keeps it: without managedFields, noise a reader skips."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


async def _report(kube: PluginKube, args: argparse.Namespace, namespace: str) -> int:
    objects = {
        kind.plural: [_strip(o) for o in await kube.list_namespaced(kind, namespace)]
        for kind in (MANAGED_CLUSTER, MANAGED_DATABASE, MANAGED_BACKUP)
    }
    conditions = [
        {"object": f"{o['kind']} {o['metadata']['name']}", **c}
        for items in objects.values()
        for o in items
        for c in (o.get("status") or {}).get("conditions") or []
    ]
    events = sorted(
        (
            {
                "time": e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp"),
                "type": e.get("type"),
                "reason": e.get("reason"),
                "object": f"{(e.get('involvedObject') or {}).get('kind')} "
                f"{(e.get('involvedObject') or {}).get('name')}",
                "message": e.get("message"),
                "count": e.get("count"),
            }
            for e in await kube.events(namespace)
        ),
        key=lambda e: str(e["time"]),
    )
    bundle = {
        "generatedAt": timefmt.now_rfc3339(),
        "generatedBy": f"kubectl-vauban {__version__}",
        "namespace": namespace,
        "objects": objects,
        "conditions": conditions,
        "events": events,
        "operatorLogs": await kube.pod_logs(args.operator_namespace, OPERATOR_SELECTOR, args.tail),
    }
    known = redact.known_values(
        [
            *await kube.secret_data(namespace),
            *await kube.secret_data(args.operator_namespace),
        ]
    )
    clean = redact.redact(bundle, known)
    text = (
        json.dumps(clean, indent=2, ensure_ascii=False) + "\n"
        if getattr(args, "output", None) == "json"
        else yaml.safe_dump(clean, sort_keys=False, allow_unicode=True)
    )
    if args.file:
        await asyncio.to_thread(Path(args.file).write_text, text, encoding="utf-8")
        _say(f"support bundle written to {args.file} (secret values removed)")
    else:
        sys.stdout.write(text)
    return 0


async def _compliance(kube: PluginKube, args: argparse.Namespace, namespace: str) -> int:
    if args.all_namespaces:
        clusters = await kube.list_all(MANAGED_CLUSTER)
        databases = await kube.list_all(MANAGED_DATABASE)
    else:
        clusters = await kube.list_namespaced(MANAGED_CLUSTER, namespace)
        databases = await kube.list_namespaced(MANAGED_DATABASE, namespace)
    _emit(args, report.build(clusters, databases, timefmt.now()), report.markdown)
    return 0


async def _run(command: Command, args: argparse.Namespace) -> int | Deferred:
    kubeconfig = Path(args.kubeconfig) if getattr(args, "kubeconfig", None) else None
    context = getattr(args, "context", None)
    namespace = getattr(args, "namespace", None) or context_namespace(kubeconfig, context)
    kube = await connect(kubeconfig, context)
    try:
        return await kube.guarded(command(kube, args, namespace))
    finally:
        await kube.close()


def _common() -> argparse.ArgumentParser:
    """kubectl's own flags, accepted before or after the command (kubectl passes them on
    as typed). SUPPRESS: a subcommand's absent flag does not undo one given before it."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--kubeconfig", help="path to the kubeconfig file")
    common.add_argument("--context", help="the kubeconfig context to use")
    common.add_argument("-n", "--namespace", help="the namespace (default: the context's)")
    common.add_argument(
        "-o", "--output", choices=("text", "json", "yaml"), help="output format (default text)"
    )
    return common


def parser() -> argparse.ArgumentParser:
    common = _common()
    root = argparse.ArgumentParser(prog="kubectl vauban", description=__doc__, parents=[common])
    root.add_argument("--version", action="version", version=f"kubectl-vauban {__version__}")
    commands = root.add_subparsers(dest="command", required=True)

    def command(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_, description=help_)
        sub.set_defaults(func=func)
        return sub

    def waits(sub: argparse.ArgumentParser, default: float) -> None:
        sub.add_argument(
            "--wait", action=argparse.BooleanOptionalAction, default=True, help="wait (default)"
        )
        sub.add_argument("--timeout", type=float, default=default, help="seconds to wait")

    status = command("status", _status, "a cluster or database at a glance")
    status.add_argument("kind", choices=sorted(_KINDS), metavar="cluster|database")
    status.add_argument("name")

    backup = command("backup", _backup, "back a database up now (a ManagedBackup)")
    backup.add_argument("database", help="the ManagedDatabase")
    backup.add_argument("--name", help="the ManagedBackup's name (default <database>-<time>)")
    waits(backup, 1800)

    restore = command("restore", _restore, "restore a database's backup into a new database")
    restore.add_argument("source", help="the ManagedDatabase whose backup is restored")
    restore.add_argument("target", help="the new ManagedDatabase's name")
    restore.add_argument("--backup", help="this ManagedBackup (default: the latest good one)")
    restore.add_argument("--database-name", help="PostgreSQL name (default from target)")
    restore.add_argument("--owner", help="owner role (default <target>_owner)")
    waits(restore, 3600)

    rotate = command("rotate", _rotate, "rotate a database's credentials or a cluster's key")
    rotate.add_argument("what", choices=("credentials", "key"))
    rotate.add_argument("name", help="the ManagedDatabase (credentials) or ManagedCluster (key)")
    rotate.add_argument("--token", help="the request's token (default: the time now)")
    waits(rotate, 300)

    psql = command("psql", _psql, "a psql session as the database's own login")
    psql.add_argument("database", help="the ManagedDatabase")
    psql.add_argument("--host", help="connect here instead (e.g. 127.0.0.1 for port-forward)")
    psql.add_argument("--port", type=int, help="and this port")
    psql.add_argument("--sslmode", help="libpq sslmode (default: the Secret's)")
    psql.add_argument("--psql", help="the psql binary (default: psql on PATH)")
    psql.epilog = "psql's own arguments follow --, e.g. kubectl vauban psql app -- -c 'SELECT 1'"

    bundle = command(
        "report", _report, "a support bundle (objects, conditions, events, operator logs)"
    )
    bundle.add_argument("-f", "--file", help="write here instead of standard output")
    bundle.add_argument("--operator-namespace", default=OPERATOR_NAMESPACE)
    bundle.add_argument("--tail", type=int, default=2000, help="operator log lines per pod")

    compliance = command("compliance", _compliance, "the compliance report (markdown or data)")
    compliance.add_argument("-A", "--all-namespaces", action="store_true")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` is psql's: split here, as argparse would read psql's options
    # (-c, -f, -v) as its own.
    head, tail = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :])
        if "--" in argv
        else (
            argv,
            [],
        )
    )
    args = parser().parse_args(head)
    if tail and args.command != "psql":
        parser().error("arguments after -- are for psql only")
    args.psql_args = tail
    try:
        done = asyncio.run(_run(args.func, args))
        return done if isinstance(done, int) else done()
    except KubeError as e:
        print(f"error: {e}", file=sys.stderr)
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:  # the apiserver unreachable, a file not writable
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
