"""How the agent fails: each failure has a reason (a CamelCase word, stable for the operator
and for alerts), a message for people, and the process exit code of its kind."""

from __future__ import annotations


class AgentFailure(Exception):
    exit_code = 1

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class IntegrityFailure(AgentFailure):
    """The backup cannot be trusted or opened: missing, corrupt, truncated, wrong key."""

    exit_code = 4


class DatabaseFailure(AgentFailure):
    """PostgreSQL is unreachable, refuses, or pg_dump/pg_restore failed."""

    exit_code = 5


class VerificationMismatch(AgentFailure):
    """The restored copy differs from what the manifest recorded."""

    exit_code = 6

    def __init__(self, message: str, differences: dict[str, tuple[int | None, int | None]]) -> None:
        super().__init__("VerificationMismatch", message)
        self.differences = differences
