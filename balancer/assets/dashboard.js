// balancer dashboard: polls /api/v1/status every second, keeps five minutes
// of history in this tab and draws it. Every value from the daemon reaches
// the page through textContent or an SVG attribute, never as markup: backend
// names come from config files and from the control API.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 2500;
  const HISTORY_MS = 5 * 60 * 1000;
  // The charts span the history, at least this much, at most HISTORY_MS.
  const MIN_SPAN_MS = 60 * 1000;
  // A gap longer than this (no snapshot: disconnected) breaks the lines.
  const GAP_MS = 3500;
  // The namespace name createElementNS needs; nothing is fetched from it.
  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART_W = 1000;
  const CHART_H = 150;
  const SPARK_W = 150;
  const SPARK_H = 30;
  const PALETTE = ["#2f6fde", "#e0793a", "#14a38b", "#b04fc9", "#d4a72c", "#d0453b", "#4f9fd6", "#7a8a3a"];

  const $ = (id) => document.getElementById(id);

  // One entry per snapshot: { t, down, up, backends: Map(name -> point) }
  // with point = { down, up, rate, latency } (rates in bytes/s, null when
  // unknown).
  let history = [];
  let previous = null;
  const rows = new Map();
  const colours = new Map();
  let failingSince = null;

  // ---- formatting ---------------------------------------------------------

  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

  function bytes(n) {
    if (n === null || n === undefined || !Number.isFinite(n)) return "–";
    if (n < 1024) return `${Math.round(n)} B`;
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < UNITS.length - 1) {
      value /= 1024;
      unit += 1;
    }
    const digits = value < 10 ? 2 : value < 100 ? 1 : 0;
    return `${value.toFixed(digits)} ${UNITS[unit]}`;
  }

  const rate = (n) => (n === null || n === undefined ? "–" : `${bytes(n)}/s`);

  function count(n) {
    return Number.isFinite(n) ? n.toLocaleString("en-US") : "–";
  }

  function millis(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
    return ms < 10 ? `${ms.toFixed(2)} ms` : ms < 100 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
  }

  function duration(secs) {
    if (!Number.isFinite(secs)) return "–";
    const s = Math.floor(secs);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${m}m`;
    if (m > 0) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB", { hour12: false });

  function colour(name) {
    if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
    return colours.get(name);
  }

  // ---- history -------------------------------------------------------------

  function sameRun(a, b) {
    return a !== null && a.pid === b.pid && a.started_unix_ms === b.started_unix_ms;
  }

  // Bytes per second of one counter between two snapshots, or null when it
  // cannot be told (first sample, counter went back, no time passed).
  function delta(now, before, elapsedMs) {
    if (before === undefined || elapsedMs <= 0 || now < before) return null;
    return ((now - before) * 1000) / elapsedMs;
  }

  function ingest(snap) {
    if (!sameRun(previous, snap)) {
      history = [];
      previous = null;
    }
    const before = new Map();
    if (previous !== null) {
      for (const b of previous.backends) before.set(b.name, b);
    }
    const elapsed = previous === null ? 0 : snap.written_unix_ms - previous.written_unix_ms;
    if (previous !== null && elapsed <= 0) return;
    const point = { t: snap.written_unix_ms, down: null, up: null, backends: new Map() };
    for (const b of snap.backends) {
      const old = before.get(b.name);
      const down = delta(b.bytes_down, old && old.bytes_down, elapsed);
      const up = delta(b.bytes_up, old && old.bytes_up, elapsed);
      point.backends.set(b.name, {
        down,
        up,
        rate: down === null || up === null ? null : down + up,
        latency: b.latency_ema_ms,
      });
      if (down !== null) point.down = (point.down || 0) + down;
      if (up !== null) point.up = (point.up || 0) + up;
    }
    history.push(point);
    const horizon = snap.written_unix_ms - HISTORY_MS;
    while (history.length > 0 && history[0].t < horizon) history.shift();
    previous = snap;
  }

  function peak(values) {
    let max = null;
    for (const v of values) if (v !== null && (max === null || v > max)) max = v;
    return max;
  }

  // The smallest 1, 2 or 5 times a power of ten at or above `v`.
  function niceCeiling(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // The same in the binary unit `bytes()` will show it in (20 MiB, not
  // 19.1 MiB).
  function niceBytes(v) {
    if (!(v > 0)) return 1;
    let scale = 1;
    while (v / scale >= 1024 && scale < Math.pow(1024, UNITS.length - 1)) scale *= 1024;
    return niceCeiling(v / scale) * scale;
  }

  // [start, end] of the charts: the history so far, in whole minutes.
  function span() {
    const t1 = history.length > 0 ? history[history.length - 1].t : 0;
    const have = history.length > 0 ? t1 - history[0].t : 0;
    const minutes = Math.ceil(Math.max(MIN_SPAN_MS, Math.min(HISTORY_MS, have)) / 60000);
    return [t1 - minutes * 60000, t1, minutes];
  }

  // ---- SVG -------------------------------------------------------------------

  function svg(tag, attrs) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  // Paths of a line and of the area under it, split where a value is missing
  // or snapshots are further apart than GAP_MS.
  function paths(points, t0, t1, yMax, w, h) {
    const x = (t) => (((t - t0) / Math.max(1, t1 - t0)) * w).toFixed(1);
    const y = (v) => (h - 2 - (Math.min(v, yMax) / yMax) * (h - 4)).toFixed(1);
    let line = "";
    let area = "";
    let run = [];
    const flush = () => {
      if (run.length > 0) {
        const seg = run.map(([t, v], i) => `${i === 0 ? "M" : "L"}${x(t)} ${y(v)}`).join(" ");
        line += `${seg} `;
        area += `M${x(run[0][0])} ${h} ${seg.replace(/^M/, "L")} L${x(run[run.length - 1][0])} ${h} Z `;
      }
      run = [];
    };
    let lastT = null;
    for (const [t, v] of points) {
      if (v === null || v === undefined || (lastT !== null && t - lastT > GAP_MS)) flush();
      if (v !== null && v !== undefined) run.push([t, v]);
      lastT = t;
    }
    flush();
    return { line: line.trim(), area: area.trim() };
  }

  function drawChart(el, series, yMax) {
    el.replaceChildren();
    el.setAttribute("viewBox", `0 0 ${CHART_W} ${CHART_H}`);
    for (const f of [0.25, 0.5, 0.75]) {
      const gy = (CHART_H * f).toFixed(1);
      el.append(svg("line", { class: "grid", x1: 0, x2: CHART_W, y1: gy, y2: gy }));
    }
    el.append(svg("line", { class: "grid", x1: 0, x2: CHART_W, y1: CHART_H - 0.5, y2: CHART_H - 0.5 }));
    if (history.length === 0) return;
    const [t0, t1] = span();
    for (const s of series) {
      const p = paths(s.points, t0, t1, yMax, CHART_W, CHART_H);
      if (s.area && p.area) el.append(paintable(svg("path", { class: `area ${s.cls || ""}`, d: p.area }), s.colour, true));
      if (p.line) el.append(paintable(svg("path", { class: `line ${s.cls || ""}`, d: p.line }), s.colour, false));
    }
  }

  function paintable(el, colour, fill) {
    if (colour) el.setAttribute(fill ? "fill" : "stroke", colour);
    return el;
  }

  function drawSpark(el, points, colour, label, format) {
    el.replaceChildren();
    el.setAttribute("viewBox", `0 0 ${SPARK_W} ${SPARK_H}`);
    el.setAttribute("preserveAspectRatio", "none");
    el.append(svg("line", { class: "base", x1: 0, x2: SPARK_W, y1: SPARK_H - 0.5, y2: SPARK_H - 0.5 }));
    const max = peak(points.map(([, v]) => v));
    const title = svg("title", {});
    title.textContent = `${label}: peak ${max === null ? "–" : format(max)} over the last ${span()[2]} min`;
    el.append(title);
    if (history.length === 0 || max === null) return;
    const [t0, t1] = span();
    const p = paths(points, t0, t1, max > 0 ? max * 1.1 : 1, SPARK_W, SPARK_H);
    // `colour` is a class (theme colour) or a literal colour (per backend).
    const cls = colour.startsWith("#") ? "" : ` ${colour}`;
    if (p.area) el.append(paintable(svg("path", { class: `area${cls}`, d: p.area }), cls ? null : colour, true));
    if (p.line) el.append(paintable(svg("path", { class: `line${cls}`, d: p.line }), cls ? null : colour, false));
  }

  // ---- DOM -------------------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function set(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function makeRow(name) {
    const tr = el("tr");
    tr.dataset.backend = name;
    const cells = {};
    const td = (cls) => {
      const cell = el("td", cls);
      tr.append(cell);
      return cell;
    };
    const who = td("c-backend");
    const swatch = el("span", "swatch");
    swatch.style.backgroundColor = colour(name);
    cells.name = el("span", "name c-name", name);
    cells.address = el("span", "small mono c-address");
    who.append(swatch, cells.name, cells.address);
    cells.state = td("c-state");
    cells.active = td("r c-active");
    cells.total = td("r c-total");
    const success = td("r");
    cells.success = el("span", "c-success");
    cells.failures = el("span", "small c-failures");
    success.append(cells.success, cells.failures);
    cells.latency = td("r c-latency");
    const bytesCell = td("r");
    cells.bytesDown = el("span", "c-bytes-down");
    cells.bytesUp = el("span", "c-bytes-up");
    const bytesSmall = el("span", "small");
    bytesSmall.append(el("span", "", "↑ "), cells.bytesUp);
    // Under sockmap: the mean skb the verdict redirected each way.
    cells.perSkb = el("span", "small c-per-skb");
    cells.perSkb.title = "mean bytes per skb the sockmap verdict redirected (up · down): sockmap pays per skb";
    bytesCell.append(el("span", "", "↓ "), cells.bytesDown, bytesSmall, cells.perSkb);
    const rateCell = td("r");
    cells.rateDown = el("span", "c-rate-down");
    cells.rateSmall = el("span", "small");
    cells.rateUp = el("span", "c-rate-up");
    cells.peak = el("span", "c-peak");
    cells.rateSmall.append(cells.rateUp, el("span", "sep", "·"), cells.peak);
    rateCell.append(cells.rateDown, cells.rateSmall);
    cells.sparkRate = svg("svg", { class: "spark", "aria-label": "throughput" });
    td("c-spark-rate").append(cells.sparkRate);
    cells.sparkLatency = svg("svg", { class: "spark", "aria-label": "latency" });
    td("c-spark-latency").append(cells.sparkLatency);
    return { tr, cells };
  }

  const ADVICE =
    "its downloads come through the sockmap verdict in small skbs, and sockmap pays per skb: " +
    "engine: splice on this backend's entry would move more";

  function stateBadges(cell, b) {
    const want = [[b.state, b.state.replace("_", "-")]];
    if (b.draining) want.push(["admin", "draining (removed)"]);
    else if (b.admin && b.admin !== "enabled") want.push(["admin", b.admin]);
    if (b.splice_advised) want.push(["advice", "splice advised"]);
    const have = Array.from(cell.children).map((c) => `${c.className}|${c.textContent}`).join(",");
    const next = want.map(([cls, text]) => `badge ${cls}|${text}`).join(",");
    if (have === next) return;
    cell.replaceChildren(
      ...want.map(([cls, text]) => {
        const badge = el("span", `badge ${cls}`, text);
        if (cls === "advice") badge.title = ADVICE;
        return badge;
      }),
    );
  }

  // "↑ 43 KiB · ↓ 1.00 KiB" under sockmap, what carries a splice backend,
  // nothing under splice.
  function perSkbText(b, engine) {
    if (engine !== "sockmap") return "";
    if (b.engine === "splice") return "engine: splice";
    const skb = b.sockmap;
    if (!skb) return "";
    const mean = (n, skbs) => (skbs > 0 ? bytes(n / skbs) : "–");
    return `per skb ↑ ${mean(skb.bytes_up, skb.skbs_up)} · ↓ ${mean(skb.bytes_down, skb.skbs_down)}`;
  }

  function successClass(r) {
    if (r === null || r === undefined) return "c-success";
    return `c-success ${r >= 0.99 ? "rate-good" : r >= 0.9 ? "rate-warn" : "rate-bad"}`;
  }

  function renderRows(snap) {
    const tbody = document.querySelector("#backends tbody");
    const seen = new Set();
    const latest = history.length > 0 ? history[history.length - 1] : null;
    snap.backends.forEach((b, i) => {
      seen.add(b.name);
      let row = rows.get(b.name);
      if (row === undefined) {
        row = makeRow(b.name);
        rows.set(b.name, row);
      }
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
      const c = row.cells;
      set(c.address, b.scope ? `${b.address} · scope ${b.scope}` : b.address);
      stateBadges(c.state, b);
      set(c.active, count(b.active));
      set(c.total, count(b.attempts));
      set(c.success, b.success_rate === null ? "–" : `${(b.success_rate * 100).toFixed(1)}%`);
      c.success.className = successClass(b.success_rate);
      c.success.title = b.success_rate === null ? "unknown: no outcome in the window yet" : "share of successes in the outcome window";
      const failed = Object.values(b.failures || {}).reduce((a, n) => a + n, 0);
      set(c.failures, `${count(failed)} failed`);
      set(c.latency, millis(b.latency_ema_ms));
      set(c.bytesUp, bytes(b.bytes_up));
      set(c.bytesDown, bytes(b.bytes_down));
      set(c.perSkb, perSkbText(b, snap.engine));
      const now = latest && latest.backends.get(b.name);
      set(c.rateDown, `↓ ${rate(now ? now.down : null)}`);
      set(c.rateUp, `↑ ${rate(now ? now.up : null)}`);
      const points = history.map((h) => {
        const p = h.backends.get(b.name);
        return [h.t, p ? p.rate : null];
      });
      const latencies = history.map((h) => {
        const p = h.backends.get(b.name);
        return [h.t, p ? p.latency : null];
      });
      set(c.peak, `peak ${rate(peak(points.map(([, v]) => v)))}`);
      drawSpark(c.sparkRate, points, "series-down", "throughput", rate);
      drawSpark(c.sparkLatency, latencies, colour(b.name), "latency", millis);
    });
    for (const [name, row] of rows) {
      if (!seen.has(name)) {
        row.tr.remove();
        rows.delete(name);
      }
    }
    $("empty").hidden = snap.backends.length > 0;
  }

  function renderHeader(snap) {
    set($("instance"), snap.instance);
    set($("engine"), snap.engine);
    set($("pid"), String(snap.pid));
    set($("uptime"), duration(snap.uptime_secs));
    document.title = `balancer · ${snap.instance}`;
    const n = snap.backends.length;
    const by = (s) => snap.backends.filter((b) => b.state === s).length;
    const held = snap.backends.filter((b) => b.draining || b.disabled).length;
    set($("t-backends"), count(n));
    const parts = [`${by("closed")} closed`, `${by("open")} open`];
    if (by("half_open") > 0) parts.push(`${by("half_open")} half-open`);
    if (by("unknown") > 0) parts.push(`${by("unknown")} unknown`);
    if (held > 0) parts.push(`${held} held`);
    set($("t-backends-sub"), parts.join(" · "));
    set($("t-active"), count(snap.backends.reduce((a, b) => a + b.active, 0)));
    set($("t-accepted"), `${count(snap.counters.accepted)} accepted`);
    const latest = history.length > 0 ? history[history.length - 1] : null;
    const down = latest ? latest.down : null;
    const up = latest ? latest.up : null;
    set($("t-rate"), rate(down === null || up === null ? null : down + up));
    set($("t-rate-sub"), `↓ ${rate(down)} · ↑ ${rate(up)}`);
    const totalUp = snap.backends.reduce((a, b) => a + b.bytes_up, 0);
    const totalDown = snap.backends.reduce((a, b) => a + b.bytes_down, 0);
    set($("t-bytes"), bytes(totalUp + totalDown));
    set($("t-bytes-sub"), `↑ ${bytes(totalUp)} · ↓ ${bytes(totalDown)}`);
    set($("t-retries"), `${count(snap.counters.retries)} retries`);
    const handshakes = Object.values(snap.counters.handshake_failures || {}).reduce((a, v) => a + v, 0);
    set($("t-exhausted"), `${count(snap.counters.exhausted)} exhausted · ${count(handshakes)} bad handshakes`);
  }

  function renderCharts(snap) {
    const downs = history.map((h) => [h.t, h.down]);
    const ups = history.map((h) => [h.t, h.up]);
    const top = peak(downs.concat(ups).map(([, v]) => v));
    const rateMax = niceBytes(top === null ? 0 : top * 1.05);
    const from = `−${span()[2]} min`;
    set($("c-rate-from"), from);
    set($("c-latency-from"), from);
    set($("c-rate-max"), rate(top === null || top === 0 ? null : rateMax));
    set($("c-rate-peak"), `peak ${rate(top)}`);
    drawChart($("chart-rate"), [
      { points: downs, cls: "series-down", area: true },
      { points: ups, cls: "series-up", area: true },
    ], rateMax);

    const series = snap.backends.map((b) => ({
      name: b.name,
      points: history.map((h) => {
        const p = h.backends.get(b.name);
        return [h.t, p ? p.latency : null];
      }),
      colour: colour(b.name),
    }));
    const latTop = peak(series.flatMap((s) => s.points.map(([, v]) => v)));
    const latMax = niceCeiling(latTop === null ? 0 : latTop * 1.05);
    set($("c-latency-max"), latTop === null ? "" : millis(latMax));
    set($("c-latency-peak"), `peak ${millis(latTop)}`);
    drawChart($("chart-latency"), series, latMax);
    const legend = $("c-latency-legend");
    const names = series.map((s) => s.name).join("\u0000");
    if (legend.dataset.names !== names) {
      legend.dataset.names = names;
      legend.replaceChildren(...series.map((s) => {
        const item = el("span", "item");
        const key = el("span", "key");
        key.style.backgroundColor = s.colour;
        item.append(key, el("span", "", s.name));
        return item;
      }));
    }
  }

  function connected(snap) {
    failingSince = null;
    $("banner").hidden = true;
    document.body.classList.remove("stale");
    $("live").className = "live ok";
    set($("live-text"), `live · ${clock(snap.written_unix_ms)}`);
  }

  function disconnected(error) {
    if (failingSince === null) failingSince = Date.now();
    $("banner").hidden = false;
    // The figures below are the last ones seen: dim them.
    document.body.classList.add("stale");
    const why = error && error.name === "AbortError" ? "no answer within 2.5 s" : String(error && error.message ? error.message : error);
    set($("banner-detail"), `cannot reach /api/v1/status since ${clock(failingSince)} (${why})`);
    $("live").className = "live down";
    set($("live-text"), "disconnected");
  }

  function check(snap) {
    if (!snap || !Array.isArray(snap.backends) || typeof snap.written_unix_ms !== "number" || !snap.counters) {
      throw new Error("unexpected answer from /api/v1/status");
    }
    return snap;
  }

  async function poll() {
    const started = Date.now();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const res = await fetch("/api/v1/status", {
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: abort.signal,
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const snap = check(await res.json());
      ingest(snap);
      renderHeader(snap);
      renderRows(snap);
      renderCharts(snap);
      connected(snap);
    } catch (error) {
      disconnected(error);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
    }
  }

  poll();
})();
