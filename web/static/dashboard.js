// The operations page: sign in as staff (POST /api/token/), then poll GET /api/ops/dashboard/
// every two seconds and fill the page. Values go in with textContent only, never as HTML.
(function () {
  "use strict";

  var API = "/api/ops/dashboard/";
  var POLL_MS = 2000;
  var store = window.sessionStorage;
  var timer = null;

  function $(id) { return document.getElementById(id); }

  function text(value) { return value === null || value === undefined ? "–" : String(value); }

  function setText(id, value) { $(id).textContent = text(value); }

  function setStatus(message, state) {
    var el = $("status");
    el.textContent = message;
    el.setAttribute("data-state", state);
  }

  function show(which) {
    $("login").hidden = which !== "login";
    $("board").hidden = which !== "board";
    $("logout").hidden = which !== "board";
  }

  function ms(value) {
    if (value === null || value === undefined) { return "–"; }
    return value < 1000 ? value + " ms" : (value / 1000).toFixed(1) + " s";
  }

  function when(isoTime) {
    if (!isoTime) { return "–"; }
    var d = new Date(isoTime);
    var seconds = Math.round((Date.now() - d) / 1000);
    var relative = seconds < 0 ? "in " + -seconds + " s" : seconds + " s ago";
    return d.toLocaleTimeString() + " (" + relative + ")";
  }

  // Fill a table body: one row per item, a cell per column function (a value, or
  // {text, cls} for a styled cell); an empty list shows `empty`.
  function fill(id, items, columns, empty) {
    var body = $(id);
    body.textContent = "";
    if (!items || items.length === 0) {
      var row = body.insertRow();
      var cell = row.insertCell();
      cell.colSpan = columns.length;
      cell.className = "none";
      cell.textContent = empty;
      return;
    }
    items.forEach(function (item) {
      var row = body.insertRow();
      columns.forEach(function (column) {
        var value = column(item);
        var cell = row.insertCell();
        if (value !== null && typeof value === "object") {
          cell.textContent = text(value.text);
          if (value.cls) { cell.className = value.cls; }
        } else {
          cell.textContent = text(value);
        }
      });
    });
  }

  // Draw a sparkline into an <svg viewBox="0 0 300 60">: one polyline per run of values
  // (null: a gap), scaled to the largest value, and that value as a label.
  function spark(id, values) {
    var svg = $(id);
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var ns = svg.namespaceURI;
    var top = Math.max.apply(null, values.map(function (v) { return v || 0; }).concat([1]));
    var step = values.length > 1 ? 300 / (values.length - 1) : 300;
    var run = [];
    function flush() {
      if (run.length) {
        var line = document.createElementNS(ns, "polyline");
        line.setAttribute("points", run.join(" "));
        line.setAttribute("class", "line");
        svg.appendChild(line);
      }
      run = [];
    }
    values.forEach(function (v, i) {
      if (v === null || v === undefined) { flush(); return; }
      run.push((i * step).toFixed(1) + "," + (58 - (v / top) * 54).toFixed(1));
    });
    flush();
    var label = document.createElementNS(ns, "text");
    label.setAttribute("x", "2");
    label.setAttribute("y", "10");
    label.setAttribute("class", "top");
    label.textContent = "max " + top;
    svg.appendChild(label);
  }

  function render(d) {
    var r = d.reservations;
    setText("reservations-live", r.live);
    setText("reservations-due", r.due);
    setText("reservations-expired", r.expired_last_minute);
    setText("reservations-committed", r.committed_last_minute);
    setText("reservations-swept", r.expired_by_sweep_total);

    fill("partitions", d.partitions, [
      function (p) { return p.partition; },
      function (p) { return p.backlog; },
      function (p) { return ms(p.oldest_event_age_ms); },
      function (p) { return p.events_applied; },
      function (p) { return p.last_drain ? when(p.last_drain.at) : "none yet"; },
      function (p) { return p.last_drain ? p.last_drain.applied : null; },
      function (p) { return p.last_drain ? ms(p.last_drain.lag_p50_ms) : null; },
      function (p) { return p.last_drain ? ms(p.last_drain.lag_p99_ms) : null; },
      function (p) { return p.last_drain ? ms(p.last_drain.lag_max_ms) : null; },
      function (p) { return p.dead_letter_stream; },
      function (p) {
        return p.redis_behind
          ? { text: "paused: Redis is behind the database since " + when(p.redis_behind.since) +
              "; run inventory reconcile --fix", cls: "error" }
          : "draining";
      },
    ], "no partitions");

    var dead = d.dead_letters;
    setText("dead-unresolved", dead ? dead.unresolved : null);
    fill("dead-letters", dead ? dead.latest : [], [
      function (x) { return when(x.at); },
      function (x) { return x.partition; },
      function (x) { return x.event_id; },
      function (x) { return x.type; },
      function (x) { return { text: x.error, cls: "error" }; },
    ], dead ? "none" : "unknown: the database did not answer");

    var q = d.queues;
    var unknown = "unknown: RQ's registries could not be read";
    fill("workers", q ? q.workers : [], [
      function (w) { return w.name; },
      function (w) { return w.state; },
      function (w) { return w.queues.join(", "); },
      function (w) { return w.current_job; },
      function (w) { return when(w.last_heartbeat); },
      function (w) { return w.successful_jobs; },
      function (w) { return w.failed_jobs; },
    ], q ? "no worker is running: start inventory worker" : unknown);
    fill("queues", q ? q.queues : [], [
      function (x) { return x.name; },
      function (x) { return x.queued; },
      function (x) { return x.started; },
      function (x) { return x.scheduled; },
      function (x) { return x.deferred; },
      function (x) { return x.failed; },
      function (x) { return x.finished; },
    ], q ? "no queues" : unknown);
    fill("periodic", q ? q.periodic : [], [
      function (x) { return x.id; },
      function (x) { return x.next_run_at ? when(x.next_run_at) : "not registered"; },
      function (x) { return { text: x.overdue_s + " s", cls: x.overdue_s > 5 ? "overdue" : "" }; },
    ], q ? "none" : unknown);
    fill("failed-jobs", q ? q.failed_jobs : [], [
      function (x) { return when(x.ended_at); },
      function (x) { return x.id; },
      function (x) { return x.function; },
      function (x) { return { text: x.error, cls: "error" }; },
    ], q ? "none" : unknown);

    fill("low-stock", d.low_stock, [
      function (x) { return x.product; },
      function (x) { return x.sku; },
      function (x) { return x.name; },
      function (x) { return x.available === 0 ? { text: "0 (sold out)", cls: "sold-out" } : x.available; },
      function (x) { return x.reserved; },
      function (x) { return x.total; },
      function (x) { return x.waiting; },
      function (x) { return x.handed_off_last_minute; },
      function (x) { return x.limits_refused_last_minute; },
    ], d.problems.database ? "unknown: the database did not answer" : "no products in the catalog");

    var points = d.trends.points;
    spark("trend-events", points.map(function (p) { return p.events_per_second; }));
    spark("trend-lag", points.map(function (p) { return p.drain_lag_p99_ms; }));
    var latest = points.length ? points[points.length - 1] : null;
    setText("trend-events-now", latest ? "now " + latest.events_per_second + "/s" : null);
    var lags = points.filter(function (p) { return p.drain_lag_p99_ms !== null; });
    setText("trend-lag-now", lags.length ? "last " + ms(lags[lags.length - 1].drain_lag_p99_ms) : "no drain yet");

    var rec = $("reconcile");
    var c = d.reconcile;
    if (!c) {
      rec.textContent = "No result yet: the scheduler runs the check every minute.";
      rec.removeAttribute("data-ok");
    } else {
      var kinds = Object.keys(c.kinds).map(function (k) { return k + " " + c.kinds[k]; }).join(", ");
      rec.textContent = (c.ok ? "OK: no drift" : "DRIFT: " + c.drift + " difference(s)" + (kinds ? " (" + kinds + ")" : "")) +
        " over " + c.stock_rows + " stock rows, backlog " + c.backlog + " at the check; checked " + when(c.checked_at) + ".";
      rec.setAttribute("data-ok", c.ok ? "true" : "false");
    }

    var problems = Object.keys(d.problems).filter(function (k) { return d.problems[k]; });
    $("problems").hidden = problems.length === 0;
    var list = $("problem-list");
    list.textContent = "";
    problems.forEach(function (k) {
      var item = document.createElement("li");
      item.textContent = k + ": " + d.problems[k];
      list.appendChild(item);
    });
  }

  async function postJson(url, body) {
    var response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    var json = null;
    try { json = await response.json(); } catch (e) { json = null; }
    return { status: response.status, body: json };
  }

  function message(body, fallback) {
    return body && body.error ? body.error.message + " (" + body.error.code + ")" : fallback;
  }

  // The token's claims, to tell a customer at once that this page is for staff; the server
  // checks again on every call.
  function claims(token) {
    try {
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    } catch (e) {
      return {};
    }
  }

  function signOut(why) {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    store.removeItem("access");
    store.removeItem("refresh");
    $("login-error").textContent = why || "";
    setStatus("not signed in", "idle");
    show("login");
  }

  async function refresh() {
    var token = store.getItem("refresh");
    if (!token) { return false; }
    var answer = await postJson("/api/token/refresh/", { refresh: token });
    if (answer.status !== 200) { return false; }
    store.setItem("access", answer.body.data.access);
    store.setItem("refresh", answer.body.data.refresh);  // each refresh token works once
    return true;
  }

  function schedule() { timer = setTimeout(poll, POLL_MS); }

  async function poll(retried) {
    timer = null;
    var token = store.getItem("access");
    if (!token) { signOut(""); return; }
    var response;
    try {
      response = await fetch(API, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    } catch (e) {
      setStatus("the server did not answer; retrying", "bad");
      schedule();
      return;
    }
    var body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (response.status === 401) {
      if (retried !== true && await refresh()) { poll(true); return; }
      signOut("Your session has ended: sign in again.");
      return;
    }
    if (response.status === 403) { signOut("This page is for staff accounts only."); return; }
    if (!response.ok || !body || !body.data) {
      setStatus(message(body, "HTTP " + response.status) + "; retrying", "bad");
      schedule();
      return;
    }
    render(body.data);
    setStatus("updated " + new Date(body.data.at).toLocaleTimeString(), "ok");
    schedule();
  }

  async function signIn(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    var answer;
    try {
      answer = await postJson("/api/token/", { username: $("username").value, password: $("password").value });
    } catch (e) {
      $("login-error").textContent = "The server did not answer.";
      return;
    }
    if (answer.status !== 200) {
      $("login-error").textContent = message(answer.body, "Sign-in failed (HTTP " + answer.status + ").");
      return;
    }
    var data = answer.body.data;
    if (claims(data.access).staff !== true) {
      signOut("This page is for staff accounts only.");
      return;
    }
    store.setItem("access", data.access);
    store.setItem("refresh", data.refresh);
    $("password").value = "";
    show("board");
    setStatus("loading", "idle");
    poll();
  }

  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", function () { signOut(""); });
  if (store.getItem("access")) {
    show("board");
    poll();
  } else {
    show("login");
  }
})();
