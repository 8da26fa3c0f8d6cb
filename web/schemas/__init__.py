"""The shapes of request and response bodies (pydantic models), by area."""
