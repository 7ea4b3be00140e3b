"""Backups' data path: the agent that dumps, encrypts and stores a database (and restores and
verifies it), and the object store API the operator uses to list and delete backups.

Format and threat notes: docs/backups.md."""
