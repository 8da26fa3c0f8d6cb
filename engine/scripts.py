"""The Lua scripts: their source, built once, and their registration on a client.

A script's source is the prelude rendered from `engine.states`, then `lua/lib.lua`, then
the script's own file. `register_script` sends EVALSHA and reloads on NOSCRIPT, so no
script text travels per call. What each script takes is declared in `engine.specs`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from engine.specs import SPECS, ScriptSpec
from engine.states import lua_prelude

NAMES: tuple[str, ...] = tuple(SPECS)


def _read(name: str) -> str:
    return resources.files("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


@cache
def source(name: str) -> str:
    if name not in NAMES:
        raise KeyError(f"no script named {name!r}")
    return f"{lua_prelude()}\n{_read('lib')}\n-- {name}.lua\n{_read(name)}"


class Scripts:
    """The scripts registered on one client; `call` runs one and decodes its JSON reply."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(source(name)) for name in NAMES
        }

    async def run(
        self, spec: ScriptSpec, /, *more_keys: str, **values: str | int
    ) -> dict[str, Any]:
        """Run `spec`'s script with its parameters by name (ScriptSpec.build)."""
        keys, args = spec.build(*more_keys, **values)
        return await self.call(spec.name, keys, args)

    async def call(self, name: str, keys: list[str], args: list[str | int]) -> dict[str, Any]:
        raw = await self._scripts[name](keys=keys, args=args)
        reply: dict[str, Any] = json.loads(raw)
        return reply

    async def load(self) -> dict[str, str]:
        """Load every script into the server now (e.g. at start-up); returns name -> SHA1."""
        loaded: dict[str, str] = {}
        for name, script in self._scripts.items():
            loaded[name] = await self._client.script_load(source(name))
            script.sha = loaded[name]
        return loaded
