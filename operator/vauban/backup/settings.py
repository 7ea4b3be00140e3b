"""The backup agent's settings, from its environment only (the operator puts secrets in a
Secret the Job reads as environment, never on the command line).

PostgreSQL is configured by libpq's own variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
PGDATABASE, PGSSLMODE, PGSSLROOTCERT...), which psycopg and pg_dump read themselves; only
PGDATABASE is read here, to name the database in the manifest and in pg_restore's command.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from vauban.backup.errors import AgentFailure
from vauban.crypto.envelope import KEY_BYTES


class ConfigurationError(AgentFailure):
    """The environment is incomplete or invalid."""

    exit_code = 2


class AgentSettings(BaseSettings):
    # An empty variable counts as unset: a Secret key with an empty value is a missing one.
    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=True, env_ignore_empty=True
    )

    s3_endpoint: str | None = Field(default=None, validation_alias="VAUBAN_S3_ENDPOINT")
    """`https://host[:port]`; AWS's regional endpoint when unset."""

    s3_region: str = Field(validation_alias="VAUBAN_S3_REGION", min_length=1)
    s3_bucket: str = Field(validation_alias="VAUBAN_S3_BUCKET", min_length=1)
    access_key_id: SecretStr = Field(validation_alias="AWS_ACCESS_KEY_ID")
    secret_access_key: SecretStr = Field(validation_alias="AWS_SECRET_ACCESS_KEY")
    ca_bundle: str | None = Field(default=None, validation_alias="AWS_CA_BUNDLE")
    """CA certificates (PEM) that sign the object store's certificate."""

    object_lock_days: int | None = Field(
        default=None, validation_alias="VAUBAN_OBJECT_LOCK_DAYS", ge=1, le=36500
    )
    """Keep each backup's objects under COMPLIANCE retention this many days, when the
    bucket has Object Lock."""

    data_key: SecretStr | None = Field(default=None, validation_alias="VAUBAN_DATA_KEY")
    data_key_id: str | None = Field(default=None, validation_alias="VAUBAN_DATA_KEY_ID")
    pg_bin_dir: str | None = Field(default=None, validation_alias="VAUBAN_PG_BIN_DIR")
    database: str | None = Field(default=None, validation_alias="PGDATABASE")
    database_namespace: str | None = Field(
        default=None, validation_alias="VAUBAN_DATABASE_NAMESPACE"
    )
    """The namespace of the ManagedDatabase the Job works for: recorded in (and, for a
    restore, required of) each authenticated manifest."""

    managed_database: str | None = Field(default=None, validation_alias="VAUBAN_DATABASE_NAME")
    database_uid: str | None = Field(default=None, validation_alias="VAUBAN_DATABASE_UID")

    @classmethod
    def load(cls) -> AgentSettings:
        """From the process environment; ConfigurationError names what is wrong (never a
        value, since some are secrets)."""
        try:
            return cls()
        except ValidationError as e:
            problems = [
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in e.errors(include_input=False, include_url=False)
            ]
            raise ConfigurationError("ConfigurationInvalid", "; ".join(problems)) from None

    def key(self) -> tuple[bytes, str]:
        """The data key and its id. Fails closed: ConfigurationError (KeyMissing,
        KeyInvalid) unless both are present and the key is exactly 32 bytes."""
        if self.data_key is None or not self.data_key.get_secret_value().strip():
            raise ConfigurationError(
                "KeyMissing",
                "VAUBAN_DATA_KEY is not set: backups are never stored unencrypted",
            )
        if not self.data_key_id or not self.data_key_id.strip():
            raise ConfigurationError("KeyMissing", "VAUBAN_DATA_KEY_ID is not set")
        try:
            key = base64.b64decode(self.data_key.get_secret_value().strip(), validate=True)
        except binascii.Error:
            raise ConfigurationError("KeyInvalid", "VAUBAN_DATA_KEY is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigurationError(
                "KeyInvalid",
                f"VAUBAN_DATA_KEY must be the base64 of {KEY_BYTES} bytes, not {len(key)} bytes",
            )
        return key, self.data_key_id.strip()

    def require_database(self) -> str:
        if not self.database:
            raise ConfigurationError("ConfigurationInvalid", "PGDATABASE is not set")
        return self.database
