"""Alembic migrations of persistence.schema.metadata; run them through persistence.migrate."""
