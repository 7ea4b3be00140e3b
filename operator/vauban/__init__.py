"""Vauban: a Kubernetes operator for managed PostgreSQL databases on a sovereign cloud."""

__version__ = "0.1.0"
