"""Request bodies of the token endpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from web import passwords


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=passwords.MAX_LENGTH)

    @field_validator("username")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        # No stored name has one, and Postgres can't even compare text that does.
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh: str = Field(min_length=1, max_length=4096)
