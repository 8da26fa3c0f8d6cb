"""`inventory bench`: the high-concurrency benchmark, ours against two PostgreSQL designs, and
what a reservation costs in CPU.

Scenarios (`--scenario`, several with commas, or `all`):
- `flash-sale`: one product, S units, N buyers each on a real HTTP connection of their own,
  released together (`--rounds` times, a fresh product each); then the same N connections
  hammering one hot product (saturation) and a fixed offered rate. Ours
  (`POST /api/reservations/`), the bare endpoint (the same script, none of the API around it)
  and the row-lock baseline (`POST /bench/rowlock/reservations/`) in the same server.
- `catalog`: 10,000 products, carts of 1 to 3 lines spread over them, ours against the baseline,
  at saturation and at a fixed rate.
- `lifecycle`: reserve → commit → confirmed → processing → shipped → delivered, a share
  released and a share left to expire; latency per step.
- `engine`: reservations without HTTP, in this process: redis-py calling the reserve script
  directly (and decoding its JSON answer), the engine's wrapper (taking turns with redis-py,
  the best of 3 rounds each), and the row-lock transaction through a psycopg pool.
- `drain`: the outbox into PostgreSQL: throughput from a backlog, lag under a steady load.
- `cost`: CPU per reservation at one concurrency (`--cost-connections`): the API server's
  (`/proc`) and Redis's (`INFO cpu`, `INFO commandstats`) for the full API, the bare endpoint
  and a reference script doing only a reservation's work (`reference.lua`); the drain's own
  cost per event and its events/s against the API's.
- `fair-sale`: a drop with `max_per_customer: 1` and a waitlist, in this process: `--buyers`
  (at least twice `--stock`) each press "buy" twice at once; those without a unit join the
  waitlist; half the holders walk away while the rest buy, each walk-away's unit handed to the
  head of the line in the release's own step; checked: every unit sold once, one per customer,
  hand-offs in joining order; measured: the hand-off (the walk-away's release) latency.
- `cluster` (also `--cluster`): the engine in this process on local Redis Clusters it starts
  and stops itself (none of the services below): 3 primaries with every key in one slot, then
  spread over the 64 partitions, then 3 primaries with a replica each, without and with
  REDIS_WAIT_REPLICAS=1; reservations/s, latency, and Redis's CPU per reservation on each
  primary.

Two PostgreSQL baselines (`--baselines`), each behind the same HTTP stack at both durabilities:
`row-lock` (the original design's locked transaction, `rowlock.py`) and `single-statement`
(one autocommit statement, `statement.py`). Our writes carry an Idempotency-Key. After each
scenario: Redis's invariants, and the outbox drained to the end and the database copy's counters
compared with Redis's; `exact_counts` (false: exit 1) sums them up with the sales' counts.

Everything runs on services this command starts on 127.0.0.1 in a temporary folder: Redis
(append-only file, `appendfsync` named per row; `--fsync everysec,always` measures both),
PostgreSQL with its durable defaults (fsync and synchronous commit on, as the baseline would
run in production), and `inventory serve --bench` (uvicorn, `--workers`). A drainer process
writes our events through to PostgreSQL while we are measured, and reports the outbox lag.

The load comes from `scripts/bench/loadgen.py`: asyncio + uvloop over raw keep-alive connections,
requests encoded before the clock starts, in `--load-procs` processes of its own
(`--load-cpus`/`--server-cpus` pin them). Every figure is from this run, on this machine;
ratios compare rows measured minutes apart under the same conditions.

Output: a table per scenario on stderr, progress while it runs, and a JSON line last on stdout;
`--plot FILE.png` draws throughput and latency percentiles per scenario against the baseline.

The package: `options` (what a run is asked, the systems compared), `stack` (the services),
`loadgen` (the load generator), `measure` (offering load, summarising it, the outbox lag),
`scenarios` (over HTTP), `inprocess` (without: `engine`, `drain` with `drain`'s
processes), `cluster` and `cluster_http` (on clusters of its own: in-process, and the catalog
over HTTP) and `cost`, `report` (targets, tables, Markdown, plot), `harness` (a run),
`rowlock` and `statement` (the baselines) and `app` (`inventory serve
--bench`: the API with the benchmark's endpoints plugged in from outside). The command line is
`scripts/cli/bench.py`.
"""
