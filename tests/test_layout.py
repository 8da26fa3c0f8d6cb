"""One owner for the Redis layout (issue 10): only engine/ (Python) and lua/ know a key or a
hash field's format; persistence/, web/ and scripts/ ask the engine (engine/reads.py) or use
its helpers (engine/keys.py, engine/outbox.py, engine/partition.py, engine/records.py,
engine/snapshot.py, engine/restore.py, engine/bookkeeping.py), which run every Redis command
on the engine's keys (scripts are called through engine/specs.py). And
the helpers that both the async engine and the sync worker run agree with what they replace."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from engine import invariants, keys, outbox, partition, records, restore, snapshot
from engine.invariants import evaluate, judge

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ("web", "persistence", "scripts")

RULES = {
    # the API's engine handed its raw client to someone
    "engine.redis": re.compile(r"\bengine\.redis\b"),
    # a command run on some object's raw client: svc.engine.redis.xrange(...)
    "a raw client's command": re.compile(
        r"\.redis\.(pipeline|ping|get|set|delete|exists|incr\w*|decr\w*|p?expire\w*|p?ttl|strlen"
        r"|scan_iter|lock|register_script|eval\w*|[xhz][a-z_]+)\("
    ),
    # the stock hash's field names (engine/keys.py stock_fields builds them)
    "a stock field literal": re.compile(r"""(?<![\w])[fr]{0,2}["'][ar]\|"""),
    # the worker's own keys (engine/keys.py builds every key)
    "a key literal": re.compile(r"""["']inv:"""),
    # one key picked from a partition's keys for a command of one's own
    "a partition key picked by name": re.compile(r"\bpartition_keys\([^()]*\)\.\w"),
}


def _sources() -> list[Path]:
    return sorted(p for top in OUTSIDE for p in (ROOT / top).rglob("*.py"))


def test_the_sources_outside_engine_are_found() -> None:
    found = {p.relative_to(ROOT).parts[0] for p in _sources()}
    assert found == set(OUTSIDE)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_only_the_engine_knows_the_redis_layout(rule: str) -> None:
    pattern = RULES[rule]
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offending, f"{rule} outside engine/ and lua/:\n" + "\n".join(offending)


def test_the_rules_catch_what_they_forbid() -> None:
    assert RULES["engine.redis"].search("await svc.engine.redis.ping()")
    assert RULES["a raw client's command"].search("await svc.engine.redis.xrevrange(k, count=1)")
    assert not RULES["a raw client's command"].search("except redis.exceptions.RedisError:")
    assert not RULES["a raw client's command"].search("self.redis.start()")  # a test server
    assert RULES["a stock field literal"].search("""f"a|{product}|{warehouse}" """)
    assert RULES["a stock field literal"].search("""name = 'r|' + product""")
    assert not RULES["a stock field literal"].search("""article = "an" if x else "a" """)
    assert RULES["a key literal"].search('LAST_DRAIN_KEY = "inv:drain:last"')
    picked = RULES["a partition key picked by name"]
    assert picked.search("    key = partition_keys(letter.partition).dead_letters")
    assert picked.search("    lock = client.lock(partition_keys(p).drain_lock, timeout=lease)")
    assert not picked.search("    k = partition_keys(p)")


# A Redis command (a method of redis-py's client, pipelines alike) run on one of the engine's
# keys: `pipe.hgetall(k.products)`, `client.hset(keys.LAST_DRAIN, ...)`,
# `client.lock(partition_keys(p).drain_lock)`. The engine's helpers run those
# (engine/snapshot.py, engine/restore.py, engine/outbox.py, engine/bookkeeping.py). Building a
# script's KEYS from partition_keys (`specs.X.build(stock=k.stock, ...)`, `plan.key(k.order(o))`)
# is no command and stays legal; `append` is a list's method far more often than APPEND.
COMMANDS = {name for name in dir(redis.Redis) if not name.startswith("_")} - {"append"}


def _engine_key(node: ast.AST) -> bool:
    """`k.<key>`, `keys.<CONSTANT>` or `partition_keys(...)`, anywhere in an expression."""
    return any(_is_engine_key(sub) for sub in ast.walk(node))


def _is_engine_key(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id == "k" or (node.value.id == "keys" and node.attr.isupper())
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "partition_keys"
    )


def commands_on_engine_keys(source: str) -> list[int]:
    """The lines of the Redis commands run on an engine key."""
    return sorted(
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in COMMANDS
        and any(_engine_key(a) for a in [*node.args, *(kw.value for kw in node.keywords)])
    )


def test_only_the_engine_runs_commands_on_its_keys() -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {lines[number - 1].strip()}"
        for path in _sources()
        for lines in [path.read_text(encoding="utf-8").splitlines()]
        for number in commands_on_engine_keys("\n".join(lines))
    ]
    assert not offending, "Redis commands on the engine's keys outside engine/:\n" + "\n".join(
        offending
    )


def test_the_command_rule_catches_what_it_forbids() -> None:
    forbidden = [
        "pipe.hgetall(k.products)",
        'pipe.hget(k.order(o), "status")',
        "client.hset(keys.LAST_DRAIN, str(partition), json.dumps(record))",
        "client.set(\n    keys.LAST_RECONCILE, text, ex=keys.LAST_RECONCILE_TTL_S\n)",
        "client.xadd(\n    k.dead_letters,\n    {'event_id': e.event_id},\n)",
        "client.lock(partition_keys(p).drain_lock, timeout=lease)",
        "client.transaction(fill, k.stock, k.products)",
        "client.scan_iter(match=partition_keys(p).any_order, count=1000)",
        "late = {o for o in orders if client.exists(k.order(o))}",
    ]
    for line in forbidden:
        assert commands_on_engine_keys(line), line
    allowed = [
        "keys, args = specs.TRIM_OUTBOX.build(outbox=k.outbox, applied=k.applied)",
        "plan.add('orders', [oid, plan.key(k.order(oid)), '', record, ttl])",
        "items.append(('records', k.order(row.id), [record, until]))",
        "lock = outbox.drain_lock(client, p, timeout=lease)",
        "RECONCILE_TTL_MS = keys.LAST_RECONCILE_TTL_S * 1000",
        "outbox.dead_letter(client, partition, e, error)",
    ]
    for line in allowed:
        assert not commands_on_engine_keys(line), line


# -- the shared helpers ---------------------------------------------------------------------


def test_event_ids_name_partition_and_stream_id() -> None:
    assert keys.event_id(3, "1700000000000-7") == "p3-1700000000000-7"
    event = outbox.OutboxEvent(3, "1700000000000-7", "reservation_created", {"ts": 1})
    assert event.event_id == keys.event_id(3, "1700000000000-7")


def test_stream_ids_order_by_time_then_sequence() -> None:
    assert outbox.sid("1700000000000-7") == (1700000000000, 7)
    assert outbox.sid("5") == (5, 0)
    assert outbox.sid("10-0") > outbox.sid("9-99")
    assert outbox.stream_ms("1700000000000-7") == 1700000000000
    assert outbox.range_start("-") == "-"
    assert outbox.range_start("5-1") == "(5-1"


class Recorder:
    """Stands for a redis-py pipeline or client: records the commands queued on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def command(*args: Any, **kwargs: Any) -> Recorder:
            self.calls.append((name, args, kwargs))
            return self

        return command


def test_one_drain_request_flag_for_the_api_and_the_worker() -> None:
    pipe = Recorder()
    outbox.ask_drain(pipe, 2)
    outbox.drain_started(pipe, 2)
    flag = keys.partition_keys(2).drain_requested
    assert pipe.calls == [
        ("set", (flag, "1"), {"nx": True, "ex": outbox.DRAIN_REQUEST_TTL_S}),
        ("delete", (flag,), {}),
    ]


def test_the_tail_read_queues_and_parses_in_step() -> None:
    pipe = Recorder()
    outbox.queue_tail(pipe, 1, "5-0", 10)
    k = keys.partition_keys(1)
    assert [c[0] for c in pipe.calls] == ["xrange", "xrange", "get", "exists", "xinfo_stream"]
    assert len(pipe.calls) == outbox.TAIL_REPLIES
    assert pipe.calls[0] == ("xrange", (k.outbox, "(5-0", "+"), {"count": 10})
    entry = ("6-0", {"type": "stock_adjusted", "data": '{"ts": 6}'})
    tail = outbox.parse_tail(1, [[entry], [], "4-0", 0, {"last-generated-id": "6-0"}])
    assert [e.event_id for e in tail.events] == ["p1-6-0"]
    assert (tail.at_checkpoint, tail.applied, tail.flagged, tail.last_id) == (
        False,
        "4-0",
        False,
        "6-0",
    )
    gone = outbox.parse_tail(1, [[], [], None, 1, ResponseError("ERR no such key")])
    assert gone.last_id is None
    assert gone.flagged
    with pytest.raises(ResponseError):
        outbox.parse_tail(1, [ResponseError("LOADING"), [], None, 0, {"last-generated-id": "0"}])


def test_the_partition_state_is_judged_as_the_raw_check_judges_it() -> None:
    pipe = Recorder()
    partition.queue_state(pipe, 0)
    assert len(pipe.calls) == partition.STATE_REPLIES
    a, r = keys.stock_fields("p1", "w1")
    stock = {a: "3", r: "2"}
    live = {"r1": records.live_entry("alice", [["p1", "w1", 2]])}
    state = partition.parse_state([stock, live, [("r1", 1700000000000.0)]])
    assert state.counters == {("p1", "w1"): (3, 2)}
    assert state.expiry == {"r1": 1700000000000}
    assert judge(0, state) == evaluate(0, stock, live, ["r1"])
    assert judge(0, state).ok
    assert partition.time_ms(["1700000000", "123456"]) == 1700000000123


def test_a_product_meta_lists_warehouses_by_priority_then_name() -> None:
    meta = records.product_meta(100, "EUR", [("b", 1), ("a", 1), ("c", 0)])
    assert meta == {"price": 100, "currency": "EUR", "warehouses": [["c", 0], ["a", 1], ["b", 1]]}


def test_the_snapshot_queues_and_parses_in_step() -> None:
    pipe = Recorder()
    snapshot.queue_snapshot(pipe, 1, "5-0", ["o1", "o2"])
    k = keys.partition_keys(1)
    assert len(pipe.calls) == 1 + partition.STATE_REPLIES + outbox.TAIL_REPLIES + 2 + 2
    assert pipe.calls[-2:] == [
        ("hget", (k.order("o1"), "status"), {}),
        ("hget", (k.order("o2"), "status"), {}),
    ]
    a, r = keys.stock_fields("p1", "w1")
    meta = records.product_meta(100, "EUR", [("w1", 0)])
    replies: list[Any] = [
        ["1700000000", "5000"],
        {a: "3", r: "0"},
        {},
        [],
        *[[], [("5-0", {"type": "x", "data": "{}"})], "5-0", 0, {"last-generated-id": "5-0"}],
        2,
        {"p1": records.compact(meta)},
        "pending",
        None,
    ]
    snap = snapshot.parse_snapshot(1, ["o1", "o2"], replies)
    assert snap.now_ms == 1700000000005
    assert snap.state.counters == {("p1", "w1"): (3, 0)}
    assert (snap.tail.at_checkpoint, snap.tail.last_id, snap.dead) == (True, "5-0", 2)
    assert snap.products == {"p1": meta}
    assert snap.orders == {"o1": "pending", "o2": None}
    with pytest.raises(ResponseError):
        snapshot.parse_snapshot(1, [], [*replies[:-3], ResponseError("LOADING"), {}])


def test_a_restore_plan_becomes_the_values_the_scripts_write() -> None:
    plan = restore.RestorePlan()
    plan.add_product("p1", records.product_meta(100, "EUR", [("w1", 0), ("w2", 1)]))
    plan.counters[("p1", "w1")] = (3, 2)
    record = records.reservation_fields("alice", 1, 1000, [["p1", "w1", 2]], "req")
    plan.reservations["r1"] = restore.LiveReservation("alice", [["p1", "w1", 2]], record)
    assert invariants.judge(0, plan.state()).ok
    pipe = Recorder()
    restore.queue_restore(pipe, 0, plan, "7-0", ("0-0", None), 50)
    k = keys.partition_keys(0)
    written = {args[0]: args[1:] or kw for name, args, kw in pipe.calls if name != "delete"}
    a1, r1 = keys.stock_fields("p1", "w1")
    a2, r2 = keys.stock_fields("p1", "w2")
    assert written[k.stock] == {"items": [a1, 3, r1, 2, a2, 0, r2, 0]}
    assert written[k.live] == {"items": ["r1", records.live_entry("alice", [["p1", "w1", 2]])]}
    assert written[k.expiry] == ({"r1": 1000},)
    assert ("pexpireat", (k.reservation("r1"), 1050), {}) in pipe.calls
    assert (
        "xadd",
        (k.outbox, {"type": "rebuild"}),
        {"id": "7-0", "maxlen": 0, "approximate": False},
    ) in pipe.calls
    assert ("set", (k.applied, "7-0"), {}) in pipe.calls
    assert pipe.calls[-1] == ("delete", (k.behind,), {})
