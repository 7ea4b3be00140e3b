"""Backups, by concern: the buckets (`store`), the operator's records of them (`ledger`), the
agent's objects (`agents`), a database's schedules, retention and health (`schedules`),
ManagedBackups and their Jobs (`runs`), restores (`restore`), and what happens when a
database goes (`purge`). The decisions are pure, in `vauban.reconcile.backup` and
`vauban.reconcile.restore`; the agent does the data path in Jobs of the operator's namespace.
"""
