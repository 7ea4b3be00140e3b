"""ManagedDatabases, by concern: the reconcile kopf calls and what lets an event pass
(`lifecycle`), the admin's connection to the server and its failures (`connection`),
provisioning (`provision`, the executor of the plan `vauban.reconcile.provision` decides),
a namespace no longer admitted (`suspension`), the periodic read of sizes and sessions
(`usage`), and deletion (`deletion`). What the object's own status says is read in
`stored`. The decisions are pure, in `vauban.reconcile.database` and
`vauban.reconcile.provision`; the SQL is `vauban.engines.postgres.plan`'s.
"""
