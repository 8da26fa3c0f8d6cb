"""Durable write-through to Postgres — arrives with the durable write-through issue."""
