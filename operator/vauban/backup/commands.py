"""The `vauban agent` sub-commands, declared apart from the agent (vauban.backup.agent): the
`vauban` command builds all its sub-commands at each start, and the operator's process
must not load the agent's PostgreSQL, S3 and compression code to do it."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add the agent's sub-commands to the `vauban agent` sub-parsers."""
    for name, help_text in (
        ("backup", "dump PGDATABASE, encrypt it and store it at --location"),
        ("restore", "restore the backup at --location into PGDATABASE, which must be empty"),
        ("verify", "restore the backup into a scratch database and compare row counts"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--location", required=True, help="the backup's key prefix")
        if name == "verify":
            command.add_argument(
                "--scratch-database",
                required=True,
                help="database to create, restore into and drop (needs CREATEDB)",
            )
        command.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from vauban.backup.slim import skip_admin_client

    skip_admin_client()
    from vauban.backup.agent import run

    return run(args)
