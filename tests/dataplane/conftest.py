"""The data path's world: the session's PostgreSQL with an agent role and a source database,
and versitygw with a plain bucket and one with Object Lock."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest
from psycopg import sql

from dataplane.harness import BUCKET, LOCKED_BUCKET, PASSWORD, ROLE, Agent, connect, create_database
from support.session import LOCAL_SERVERS
from vauban.devcluster.postgres import PostgresServer
from vauban.devcluster.s3 import S3Server

SOURCE = "dp_shop"
BIG = "dp_big"
NAMES = [
    "Zoë Ørsted",
    "François Müller",
    "東京 太郎",
    "Ωmega 🚀",
    "plain ascii",
    "quote ' \" \\ tab\t",
]
LARGE_BYTEA = 3 << 20


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/dataplane" in str(item.path):
            item.add_marker(pytest.mark.dataplane)


@pytest.fixture(scope="session")
def agent_role(postgres: PostgresServer) -> str:
    postgres.create_role(ROLE, PASSWORD, "CREATEDB", "CREATEROLE")
    return ROLE


@pytest.fixture(scope="session")
def source_database(postgres: PostgresServer, agent_role: str) -> str:
    """A few thousand rows over three tables in two schemas: non-ASCII text, numerics,
    timestamps, a view, a sequence, and one large bytea."""
    create_database(postgres, SOURCE)
    with connect(postgres, SOURCE) as conn:
        conn.execute("""
            CREATE TABLE customers (
                id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, joined date
            );
            CREATE TABLE orders (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                customer_id int REFERENCES customers, amount numeric(12, 2),
                placed_at timestamptz, tags text[]
            );
            CREATE SCHEMA billing;
            CREATE TABLE billing.invoices (id int PRIMARY KEY, customer_id int, pdf bytea);
            CREATE VIEW big_spenders AS
                SELECT customer_id, sum(amount) FROM orders GROUP BY 1 HAVING sum(amount) > 500;
        """)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO customers (name, email, joined) VALUES (%s, %s, %s::date + %s)",
                [
                    (f"{NAMES[i % len(NAMES)]} {i}", f"c{i}@example.org", "2020-01-01", i % 900)
                    for i in range(2000)
                ],
            )
        conn.execute("""
            INSERT INTO orders (customer_id, amount, placed_at, tags)
            SELECT 1 + g % 2000, (g * 7 % 100000) / 100.0,
                   '2024-01-01'::timestamptz + g * interval '17 minutes',
                   ARRAY['t' || g % 5, 'é']
            FROM generate_series(1, 3000) g
        """)
        conn.execute(
            "INSERT INTO billing.invoices SELECT g, g, decode(md5(g::text), 'hex')"
            " FROM generate_series(1, 199) g"
        )
        conn.execute("INSERT INTO billing.invoices VALUES (200, 1, %s)", (os.urandom(LARGE_BYTEA),))
    return SOURCE


@pytest.fixture(scope="session")
def big_database(postgres: PostgresServer, agent_role: str) -> str:
    """32 MiB of incompressible data: a dump of several multipart parts, and more than the
    agent buffers ahead of its upload."""
    create_database(postgres, BIG)
    with connect(postgres, BIG) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE blobs (id int PRIMARY KEY, data bytea)")
        cur.executemany(
            "INSERT INTO blobs VALUES (%s, %s)", [(i, os.urandom(1 << 20)) for i in range(32)]
        )
    return BIG


@pytest.fixture(scope="session")
def buckets(s3: S3Server) -> None:
    s3.create_bucket(BUCKET)
    s3.create_bucket(LOCKED_BUCKET, object_lock=True)


@pytest.fixture(scope="session")
def tls_s3() -> S3Server:
    """A second versitygw, over HTTPS with a certificate from its own CA."""
    return LOCAL_SERVERS.enter_context(S3Server(buckets=(BUCKET,), tls=True))


@pytest.fixture(scope="session")
def data_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def agent(
    postgres: PostgresServer, s3: S3Server, buckets: None, source_database: str, data_key: bytes
) -> Agent:
    agent = Agent(postgres, s3, data_key)
    agent.env["PGDATABASE"] = source_database
    return agent


@pytest.fixture
def location(request: pytest.FixtureRequest) -> str:
    """A location of its own for each test, shaped as the operator makes them."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    return f"vauban/dataplane/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def empty_database(postgres: PostgresServer, agent_role: str) -> Iterator[str]:
    name = f"dp_target_{uuid.uuid4().hex[:8]}"
    create_database(postgres, name)
    yield name
    with postgres.superuser() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
