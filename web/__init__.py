"""HTTP API (Starlette) — arrives with the HTTP issue."""
