"""Each script's spec (engine/specs.py) against its Lua header: the same KEYS and ARGV, named
alike, in the same order. And the builder: named values in, positional lists out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import pytest

from engine import specs
from engine.script_spec import ScriptSpec
from engine.scripts import HELPERS, NAMES

# A definition opens its header line ("-- KEYS[2] products ..."), or follows another on the
# same line after a gap of two spaces or more; "(unused when ARGV[6] is '')" is a mention.
_DEFINITION = re.compile(r"(?:^--\s+|\s{2,})(KEYS|ARGV)\[(\d+)( \+ i)?\]\s+")


@dataclass
class Header:
    keys: list[str]  # the first word of each KEYS[i]'s description
    args: list[str]  # the whole description of each ARGV[i] on its line
    more_keys: tuple[int, str] | None  # KEYS[n + i]: (n, description)


def header(name: str) -> Header:
    """The KEYS and ARGV a script's opening comment defines, in their numbered order."""
    text = resources.files("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")
    found: dict[str, dict[int, str]] = {"KEYS": {}, "ARGV": {}}
    more: tuple[int, str] | None = None
    for line in text.splitlines():
        if not line.startswith("--"):
            break  # the header ends at the first line of code
        matches = list(_DEFINITION.finditer(line))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
            kind, n, variable, description = m[1], int(m[2]), m[3], line[m.end() : end].strip()
            if variable:
                more = (n, description)
                continue
            assert n not in found[kind], f"{name}.lua defines {kind}[{n}] twice"
            found[kind][n] = description
    for kind, defined in found.items():
        assert sorted(defined) == list(range(1, len(defined) + 1)), f"{name}.lua {kind} gaps"
    return Header(
        keys=[found["KEYS"][n].split()[0] for n in sorted(found["KEYS"])],
        args=[found["ARGV"][n] for n in sorted(found["ARGV"])],
        more_keys=more,
    )


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def names(spec_name: str, description: str) -> bool:
    """Whether a spec's name is said by the header's description of that position: its words
    appear there in order ('idempotency_ttl' in "idempotency record ttl (ms)")."""
    said = iter(_words(description))
    return all(word in said for word in _words(spec_name))


@pytest.mark.parametrize("name", NAMES)
def test_every_spec_matches_its_scripts_header(name: str) -> None:
    spec, h = specs.SPECS[name], header(name)
    assert spec.name == name
    assert list(spec.keys) == h.keys, f"{name}: KEYS in the header are {h.keys}"
    assert len(spec.args) == len(h.args), f"{name}: the header has {len(h.args)} ARGV"
    for i, (arg, description) in enumerate(zip(spec.args, h.args, strict=True), start=1):
        assert names(arg, description), f"{name}: ARGV[{i}] is {description!r}, spec says {arg}"
    if h.more_keys is None:
        assert not spec.more_keys, f"{name}: the header takes no keys beyond KEYS[{len(h.keys)}]"
    else:
        n, description = h.more_keys
        assert n == len(spec.keys), f"{name}: variable keys start after KEYS[{n}]"
        assert spec.more_keys, f"{name}: the header takes more keys: {description}"
        assert names(spec.more_keys, description), description


def test_every_script_has_a_spec_and_every_header_is_read() -> None:
    assert list(specs.SPECS) == list(NAMES)
    lua = {p.name[:-4] for p in resources.files("lua").iterdir() if p.name.endswith(".lua")}
    assert lua - set(HELPERS) == set(NAMES)
    # the parser finds what a known header says, so a match above means something
    assert header("trim_outbox") == Header(
        keys=["outbox", "applied"],
        args=["id of the last event of the committed batch (stream id 'ms-seq')"],
        more_keys=None,
    )
    assert len(header("reserve").args) == 16
    repair = header("repair").more_keys
    assert repair == (8, "the record or idempotency keys the plan names by their index i (1-based)")


def test_the_name_check_tells_neighbours_apart() -> None:
    assert names("idempotency_ttl", "idempotency record ttl (ms)")
    assert names("create_only", "'1' = a create: only a new product is set up")
    assert not names("ttl_idempotency", "idempotency record ttl (ms)")
    assert not names("owner", "actor (user id)")
    assert not names("request_id", "request fingerprint ('' = no idempotency key)")


def test_build_puts_named_values_in_header_order() -> None:
    keys, args = specs.TRIM_OUTBOX.build(outbox="o", applied="a", last_event="1-0")
    assert (keys, args) == (["o", "a"], ["1-0"])
    keys, args = specs.REPAIR.build(
        "r1",
        "r2",
        stock="s",
        products="p",
        live="l",
        expiry="e",
        outbox="o",
        applied="a",
        behind="b",
        held="h",
        plan="{}",
        actor="system",
        request_id="run",
    )
    assert keys == ["s", "p", "l", "e", "o", "a", "b", "h", "r1", "r2"]
    assert args == ["{}", "system", "run"]


def test_build_refuses_a_missing_an_unknown_or_a_misplaced_value() -> None:
    rate = specs.RATE_LIMIT
    assert rate.build(bucket="k", rate="1.0", burst=5) == (["k"], ["1.0", 5])
    with pytest.raises(TypeError, match=r"missing \['burst'\], unknown \[\]"):
        rate.build(bucket="k", rate="1.0")
    with pytest.raises(TypeError, match=r"unknown \['brust'\]"):
        rate.build(bucket="k", rate="1.0", burst=5, brust=5)
    with pytest.raises(TypeError, match="key bucket must be a str"):
        rate.build(bucket=7, rate="1.0", burst=5)
    with pytest.raises(TypeError, match="no keys beyond 1"):
        rate.build("extra", bucket="k", rate="1.0", burst=5)


def test_a_spec_names_each_parameter_once() -> None:
    for spec in specs.SPECS.values():
        every = [*spec.keys, *spec.args]
        assert len(every) == len(set(every)), spec.name
        assert isinstance(spec, ScriptSpec)
