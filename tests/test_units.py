"""Pure unit tests, no Redis: the state table, keys, invariants, input checks, replies.
(Settings have their own module, test_settings.py.)"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import errors, replies
from engine.invariants import evaluate
from engine.keys import new_id, partition_keys, partition_of
from engine.models import CallContext, LineRequest, Movement, ProductStock, StockLevel
from engine.states import STOCK_RETURNING, TERMINAL, TRANSITIONS, OrderStatus, allowed, lua_prelude
from engine.validation import (
    MAX_LINES,
    MAX_QUANTITY,
    NAME,
    RECORD_ID,
    compact_json,
    dumps,
    fingerprint_text,
    lines_json,
    merge_lines,
)

# -- states -----------------------------------------------------------------------------


def test_terminal_statuses_are_delivered_and_cancelled() -> None:
    assert set(TRANSITIONS) == set(OrderStatus)
    assert set(TERMINAL) == {OrderStatus.DELIVERED, OrderStatus.CANCELLED}
    assert STOCK_RETURNING == OrderStatus.CANCELLED
    for status in OrderStatus:
        assert allowed(status) == TRANSITIONS[status]
        assert status not in allowed(status)


def test_every_status_can_reach_an_end() -> None:
    for start in OrderStatus:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL, start


def test_lua_prelude_renders_the_whole_table() -> None:
    prelude = lua_prelude()
    rendered = dict(re.findall(r"local (\w+) = \{(.*)\}\n", prelude))
    # Lua table constructors: ['status'] = {'next', ...} and ['status'] = true
    entries = re.findall(r"\['(\w+)'\] = \{([^}]*)\}", rendered["TRANSITIONS"])
    table = {s: re.findall(r"'(\w+)'", nxt) for s, nxt in entries}
    assert table == {s.value: [n.value for n in TRANSITIONS[s]] for s in OrderStatus}
    terminal = dict(re.findall(r"\['(\w+)'\] = (\w+)", rendered["TERMINAL"]))
    assert terminal == {"delivered": "true", "cancelled": "true"}
    assert "local STOCK_RETURNING = 'cancelled'" in prelude


# -- keys -------------------------------------------------------------------------------


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the text between the first '{' and the next '}'."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start + 1)]


@pytest.mark.parametrize("partition", [0, 1, 7, 15])
def test_every_key_carries_its_partitions_hash_tag(partition: int) -> None:
    k = partition_keys(partition)
    names = [k.stock, k.products, k.live, k.expiry, k.outbox, k.dead_letters]
    names += [k.reservation("ab" * 16), k.order("cd" * 16), k.unused_idempotency]
    names += [k.idempotency("alice", "reserve", "}{p9}{"), k.idempotency("{p9}", "x", "")]
    for name in names:
        assert name.startswith(f"inv:{{p{partition}}}:")
        assert hash_tag(name) == f"p{partition}"
        assert name.count("{") == 1, name
    assert len(set(names)) == len(names)
    # the scripts name an expired reservation's record from this prefix (lua/holds.lua)
    assert k.reservation("ab" * 16) == k.records + "ab" * 16
    assert hash_tag(k.records + "x") == f"p{partition}"


def test_idempotency_keys_are_per_actor_operation_and_key() -> None:
    k = partition_keys(0)
    base = k.idempotency("alice", "reserve", "k1")
    assert base == k.idempotency("alice", "reserve", "k1")
    others = {
        k.idempotency("bob", "reserve", "k1"),
        k.idempotency("alice", "release", "k1"),
        k.idempotency("alice", "reserve", "k2"),
        k.idempotency("alice\x00reserve", "k1", ""),
    }
    assert base not in others
    assert len(others) == 4


def test_partition_of_is_stable() -> None:
    # pinned: a change of hash would strand every record in the wrong partition
    assert [partition_of("sku-1", n) for n in range(1, 9)] == [0, 0, 1, 2, 0, 4, 1, 6]
    assert [partition_of("widget", n) for n in range(1, 9)] == [0, 0, 2, 0, 0, 2, 0, 0]
    assert partition_of("anything at all", 1) == 0


@pytest.mark.parametrize("partitions", [*range(1, 9), 64, 1000, 5000])
def test_new_id_lands_in_its_partition(partitions: int) -> None:
    drawn = set()
    for partition in range(min(partitions, 64)):
        for _ in range(5):
            record_id = new_id(partition, partitions)
            assert RECORD_ID.fullmatch(record_id)
            assert partition_of(record_id, partitions) == partition
            drawn.add(record_id)
    assert len(drawn) == 5 * min(partitions, 64)
    if partitions > 64:  # the highest partitions too
        assert partition_of(new_id(partitions - 1, partitions), partitions) == partitions - 1


# -- invariants -------------------------------------------------------------------------


def live_entry(owner: str, *lines: tuple[str, str, int]) -> str:
    return json.dumps({"owner": owner, "lines": [list(x) for x in lines]})


def consistent() -> tuple[dict[str, str], dict[str, str], list[str]]:
    stock = {"a|p1|w1": "4", "r|p1|w1": "5", "a|p1|w2": "0", "r|p1|w2": "2", "a|p2|w1": "9"}
    live = {
        "r1": live_entry("alice", ("p1", "w1", 3), ("p1", "w2", 2)),
        "r2": live_entry("bob", ("p1", "w1", 2)),
    }
    return stock, live, ["r1", "r2"]


def test_invariants_pass_on_a_consistent_snapshot() -> None:
    report = evaluate(3, *consistent())
    assert report.ok, report.problems
    assert (report.partition, report.live_reservations) == (3, 2)
    assert report.counters[("p1", "w1")].total == 9
    assert report.counters[("p2", "w1")].reserved == 0
    assert evaluate(0, {}, {}, []).ok


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"stock": {"a|p2|w1": "-1"}}, "p2@w1: available is -1 < 0"),
        ({"stock": {"r|p1|w2": "-2"}}, "p1@w2: reserved is -2 < 0"),
        ({"stock": {"r|p1|w1": "6"}}, "p1@w1: reserved is 6 but live reservations hold 5"),
        ({"live": {"r3": live_entry("eve", ("p2", "w1", 1))}}, "reserved is 0 but live"),
        ({"live": {"r3": live_entry("eve", ("p9", "w1", 1))}}, "p9@w1: live reservations hold 1"),
        ({"expiry": ["r1"]}, "expiry index and live reservations differ: 1 ids"),
        ({"expiry": ["r1", "r2", "gone"]}, "expiry index and live reservations differ"),
        # a field only a hand could write: reported, not a crash of `inventory check`
        ({"stock": {"": "5"}}, "the stock hash's field '' is no counter"),
        ({"stock": {"x|p1|w1": "5"}}, "'x|p1|w1' is no counter"),
        ({"stock": {"a|p1": "5"}}, "'a|p1' is no counter"),
        ({"stock": {"a|p2|w1": "lots"}}, "'a|p2|w1' is no counter"),
    ],
)
def test_invariants_catch_each_kind_of_drift(change: dict[str, Any], problem: str) -> None:
    stock, live, expiry = consistent()
    stock.update(change.get("stock", {}))
    live.update(change.get("live", {}))
    if "r3" in live:
        expiry.append("r3")
    expiry = change.get("expiry", expiry)
    report = evaluate(0, stock, live, expiry)
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems


# -- validation -------------------------------------------------------------------------


def test_merge_lines_sums_repeats_in_first_seen_order() -> None:
    merged = merge_lines(
        [
            LineRequest("b", 1),
            LineRequest("a", 2, "w1"),
            LineRequest("b", 3),
            LineRequest("a", 4),
            LineRequest("a", 5, "w1"),
        ]
    )
    assert merged == [("b", "", 4), ("a", "w1", 7), ("a", "", 4)]
    assert merge_lines([LineRequest("a", MAX_QUANTITY)]) == [("a", "", MAX_QUANTITY)]
    # Each line is bounded, not their sum.
    assert merge_lines([LineRequest("a", MAX_QUANTITY)] * 2) == [("a", "", 2 * MAX_QUANTITY)]


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([], "lines"),
        ([LineRequest("a", 1)] * (MAX_LINES + 1), "lines"),
        ([LineRequest("a|b", 1)], "product"),
        ([LineRequest("-a", 1)], "product"),
        ([LineRequest("a" * 65, 1)], "product"),
        ([LineRequest("a", 1, "w|1")], "warehouse"),
        ([LineRequest("a", 0)], "quantity"),
        ([LineRequest("a", False)], "quantity"),
        ([LineRequest("a", 2.0)], "quantity"),  # type: ignore[arg-type]
    ],
)
def test_merge_lines_refuses_bad_lines(lines: list[LineRequest], field: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        merge_lines(lines)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_merge_lines_accepts_the_limits() -> None:
    lines = [LineRequest(f"p{i}", 1) for i in range(MAX_LINES)]
    assert len(merge_lines(lines)) == MAX_LINES
    assert merge_lines([LineRequest("A" + "x" * 63, 1, "w.1:z-_")])[0][1] == "w.1:z-_"


# -- models and replies -----------------------------------------------------------------


def test_model_arithmetic() -> None:
    m = Movement(
        "p", "w", available_before=5, available_after=2, reserved_before=1, reserved_after=4
    )
    assert (m.total_delta, m.reserved_delta) == (0, 3)
    stock = ProductStock("p", 100, "USD", (StockLevel("a", 0, 3, 1), StockLevel("b", 1, 2, 0)))
    assert (stock.available, stock.reserved, stock.total) == (5, 1, 6)
    assert CallContext("alice").scope == "alice"
    assert CallContext("alice", staff=True).scope == ""


def test_every_refusal_code_becomes_its_typed_error() -> None:
    sample: dict[str, Any] = {
        "product": "p",
        "warehouse": "w",
        "reservation": "r",
        "order": "o",
        "lines": [{"product": "p", "requested": 2, "available": 1}],
        "expires_at": 5,
        "status": "released",
        "max_expires_at": 9,
        "current": "pending",
        "requested": "shipped",
        "expected": "pending",
        "allowed": {},
        "currencies": ["USD", "EUR"],
    }
    # the limits' refusals (lua/limits.lua) count what was requested
    counted: dict[str, Any] = {"rule": "min_quantity", "min_quantity": 3, "limit": 2,
                               "held": 1, "live": 20, "requested": 1, "available": 0,
                               "entry": "e"}  # fmt: skip
    limits = ("limit_exceeded", "invalid_quantity", "too_many_reservations", "in_stock",
              "already_waiting")  # fmt: skip
    for code in replies.REFUSALS:
        with pytest.raises(errors.EngineError) as info:
            replies.raise_for({"err": code, **sample, **(counted if code in limits else {})})
        expected = "id_collision" if code in ("reservation_exists", "order_exists") else code
        assert info.value.code == expected
    replies.raise_for({"ok": True})
    with pytest.raises(errors.EngineError, match="unknown refusal"):
        replies.raise_for({"err": "no_such_code"})


@given(
    st.lists(
        st.tuples(
            st.from_regex(NAME, fullmatch=True),
            st.one_of(st.none(), st.from_regex(NAME, fullmatch=True)),
            st.integers(1, MAX_QUANTITY),
        ),
        min_size=1,
        max_size=MAX_LINES,
    )
)
def test_lines_are_written_as_the_json_encoder_writes_them(
    lines: list[tuple[str, str | None, int]],
) -> None:
    """The hot path writes merged lines itself: the same text as json.dumps (so the
    fingerprints of idempotent calls, which hash it, stay what they were)."""
    merged = merge_lines([LineRequest(p, q, w) for p, w, q in lines])
    assert lines_json(merged) == dumps(merged)


_FINGERPRINTED = st.recursive(
    st.one_of(st.text(), st.integers(min_value=-(2**80), max_value=2**80)),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=12,
)


@given(operation=st.text(max_size=12), payload=st.lists(_FINGERPRINTED, max_size=5))
def test_the_fingerprint_text_is_json_dumps_text_whatever_it_holds(
    operation: str, payload: list[Any]
) -> None:
    # an idempotency record made before orjson wrote the text must still match its retry
    value = [operation, payload]
    assert fingerprint_text(value) == json.dumps(value, separators=(",", ":"), sort_keys=True)


_EVENT_JSON = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.text(), st.integers(min_value=-(2**80), max_value=2**80)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


@given(_EVENT_JSON)
def test_the_drains_json_text_is_json_dumps_compact_text(value: Any) -> None:
    """The drain writes a reply and an audit value's JSON by orjson: the very text json.dumps
    writes compact (what it wrote before, for replies), whatever the values events hold."""
    assert compact_json(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_the_fingerprint_text_of_a_reservation_is_orjson_s_where_it_agrees() -> None:
    value = ["reserve", ['[["p1","",1]]', 900000, "1"]]
    assert fingerprint_text(value) == '["reserve",["[[\\"p1\\",\\"\\",1]]",900000,"1"]]'
    for odd in ("caf\u00e9", "del\x7f", "nul\x00", 2**64):
        assert fingerprint_text(["x", [odd]]) == json.dumps(["x", [odd]], separators=(",", ":"))
