"""Talking to database servers. Only this package opens database connections."""
