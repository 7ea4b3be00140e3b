"""The only package that talks to the Kubernetes API (besides kopf's own watching).

Every write is server-side apply with the field manager `vauban`, or an Event.
"""
