"""The library's source is the same in every process, so its version (and so every function
name) is stable; and it is assembled as lua/ lays it out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from engine import specs
from engine.script_spec import ScriptSpec
from engine.scripts import NAMES, library, prepare


def test_the_library_does_not_depend_on_the_process() -> None:
    lib = library()
    code = (
        "import json; from engine.scripts import library; "
        "lib = library(); print(json.dumps([lib.name, lib.source]))"
    )
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out) == [lib.name, lib.source]


def test_the_library_is_named_and_versioned_by_its_content() -> None:
    lib = library()
    assert re.fullmatch(r"[0-9a-f]{12}", lib.version)
    assert lib.name == f"inventory_{lib.version}"
    first, second, _ = lib.source.split("\n", 2)
    assert first == f"#!lua name={lib.name}"
    assert second == f"local VERSION = '{lib.version}'"
    assert lib.function("reserve") == f"reserve_{lib.version}"
    # one function per file of lua/ but lib.lua, each registered once, none read-only today;
    # each write that names its partition's behind flag waits until this Redis is checked
    # (lib.lua `verified`), but the repair and the check itself
    for name in NAMES:
        assert lib.source.count(f"local function op_{name}(KEYS, ARGV)\n") == 1
        at = specs.fence(specs.SPECS[name])
        assert lib.source.count(f"register('{name}', op_{name}, false, {at or 'nil'})") == 1
    fenced = {name for name in NAMES if specs.fence(specs.SPECS[name])}
    assert fenced == set(NAMES) - {"cart", "repair", "verify", "trim_outbox", "rate_limit"} - {
        "rate_limit_settle"
    }


def test_a_call_is_built_without_io() -> None:
    call = prepare(specs.TRIM_OUTBOX, outbox="o", applied="a", last_event="1-0")
    assert call.function == library().function("trim_outbox")
    assert (call.keys, call.args) == (["o", "a"], ["1-0"])
    assert not call.read_only  # FCALL
    read = ScriptSpec("trim_outbox", ("outbox", "applied"), ("last_event",), read_only=True)
    assert prepare(read, outbox="o", applied="a", last_event="1-0").read_only  # FCALL_RO
