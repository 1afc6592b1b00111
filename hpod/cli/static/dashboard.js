// hpod's read-only dashboard: three views (the studies, one study, one trial), each fetched as
// JSON from /api/... and fetched again, shortly after, whenever the event stream (/api/events,
// Server-Sent Events fed by the daemon's `events` long poll) tells of a change. No build step:
// plain JavaScript and uPlot (static/uPlot.iife.min.js).
"use strict";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const live = document.getElementById("live");
// Set once per page load: a test tells a live update from a reload by it.
window.hpodLoadId = Math.random().toString(36).slice(2);
window.hpodRefreshes = 0;

const charts = {};

function esc(value) {
  return String(value ?? "-").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function fmt(value) {
  if (value === null || value === undefined) return "-";
  if (typeof value === "object" && value.$float) return value.$float;
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Number(value.toPrecision(6)).toString();
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function fmtTime(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "-";
}

function fmtConfig(config) {
  return Object.entries(config || {}).map(([k, v]) => `${esc(k)}=${esc(fmt(v))}`).join(" ");
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// -- routing ----------------------------------------------------------------------------------

function route() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "study" && parts.length === 4 && parts[2] === "trial") {
    return { view: "trial", study: parts[1], trial: Number(parts[3]) };
  }
  if (parts[0] === "study" && parts.length === 2) return { view: "study", study: parts[1] };
  return { view: "studies" };
}

const here = route();

// -- the event stream: a refetch shortly after each event ---------------------------------------

let pending = null;
let inflight = false;
let again = false;
let notShown = false;
// The study page's curve points so far: each refetch asks only for those past the last one.
let points = [];
function refreshSoon() {
  if (inflight) { again = true; return; } // one fetch at a time; one more once it is back
  if (pending !== null) return;
  pending = setTimeout(() => { pending = null; refresh(); }, 150);
}

function follow() {
  const query = new URLSearchParams({ tail: "1" });
  if (here.study) query.set("study", here.study);
  const source = new EventSource(`/api/events?${query}`);
  source.onopen = () => { live.textContent = "live"; live.className = "on"; };
  source.addEventListener("joined", refreshSoon);
  source.addEventListener("problem", (message) => {
    live.textContent = JSON.parse(message.data);
    live.className = "";
    if (notShown) source.close(); // a study this user may not read: nothing to follow
  });
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = ""; };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    live.textContent = `live · event #${event.id} ${event.kind}`;
    live.className = "on";
    if (here.view !== "trial" || event.trial === here.trial || event.trial === null) refreshSoon();
  };
}

async function refresh() {
  inflight = true;
  try {
    if (here.view === "studies") renderStudies(await api("/api/studies"));
    else if (here.view === "study") {
      const after = points.length ? points[points.length - 1].id : 0;
      const body = await api(`/api/study/${encodeURIComponent(here.study)}?after=${after}`);
      if (body.curves_after === after) points = points.concat(body.curves);
      body.curves = points;
      renderStudy(body);
    }
    else renderTrial(await api(`/api/study/${encodeURIComponent(here.study)}/trial/${here.trial}`));
    window.hpodRefreshes += 1;
  } catch (error) {
    notShown = true;
    main.innerHTML = `<section><h1>Not shown</h1><p id="error">${esc(error.message)}</p></section>`;
  } finally {
    inflight = false;
    if (again) { again = false; refreshSoon(); }
  }
}

// -- colours: viridis, by rank (0: the best) -----------------------------------------------------

const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [180, 222, 44]];
function rankColour(rank, count) {
  const t = count > 1 ? rank / (count - 1) : 0;
  const x = t * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  const c = VIRIDIS[i].map((v, k) => Math.round(v + f * (VIRIDIS[i + 1][k] - v)));
  return `rgb(${c.join(",")})`;
}

function num(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function ranks(trials, maximize) {
  const scored = trials.filter((t) => num(t.objective) !== null);
  scored.sort((a, b) => (maximize ? b.objective - a.objective : a.objective - b.objective) || a.trial - b.trial);
  const out = new Map();
  scored.forEach((t, i) => out.set(t.trial, i));
  return out;
}

// -- charts -----------------------------------------------------------------------------------

function chart(id, opts, data) {
  const el = document.getElementById(id);
  if (!el) return;
  const width = Math.max(320, el.clientWidth - 10);
  const old = charts[id];
  if (old && old.root.isConnected && old.series.length === opts.series.length) {
    old.setData(data);
    return;
  }
  if (old) old.destroy();
  charts[id] = new uPlot({ width, height: 280, ...opts }, data, el);
}

function verticalLines(levels) {
  return (u) => {
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "rgba(90,90,90,0.7)";
    ctx.setLineDash([5, 4]);
    for (const level of levels) {
      const x = u.valToPos(level, "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  };
}

function objectiveChart(id, points, created, maximize, metric) {
  const rows = points.filter((p) => num(p.value) !== null && num(p.at) !== null)
    .map((p) => [p.at - created, p.value]).sort((a, b) => a[0] - b[0]);
  const xs = rows.map((r) => r[0]);
  const ys = rows.map((r) => r[1]);
  const best = [];
  for (const y of ys) best.push(best.length ? (maximize ? Math.max(best[best.length - 1], y) : Math.min(best[best.length - 1], y)) : y);
  chart(id, {
    scales: { x: { time: false } },
    axes: [{ label: "seconds since the study started" }, { label: metric }],
    series: [
      {},
      { label: `${metric} (each report)`, stroke: "rgba(31,119,180,0.8)", paths: () => null, points: { show: true, size: 5, fill: "rgba(31,119,180,0.5)" } },
      { label: "best so far", stroke: "#d62728", width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
    ],
  }, [xs, ys, best]);
}

function curvesChart(id, points, order, resource, metric, levels) {
  const byTrial = new Map();
  for (const p of points) {
    if (num(p.value) === null || num(p.resource) === null) continue;
    if (!byTrial.has(p.trial)) byTrial.set(p.trial, new Map());
    byTrial.get(p.trial).set(p.resource, p.value);
  }
  const xs = [...new Set(points.map((p) => p.resource).filter((r) => num(r) !== null))].sort((a, b) => a - b);
  const trials = [...byTrial.keys()].sort((a, b) => a - b);
  const count = order.size;
  const series = [{ label: resource }];
  const data = [xs];
  for (const t of trials) {
    const rank = order.has(t) ? order.get(t) : count;
    series.push({
      label: `trial ${t}`,
      stroke: order.has(t) ? rankColour(rank, count) : "#bbb",
      width: rank === 0 ? 2.5 : 1,
      spanGaps: true,
      points: { show: true, size: 4 },
    });
    data.push(xs.map((x) => (byTrial.get(t).has(x) ? byTrial.get(t).get(x) : null)));
  }
  chart(id, {
    scales: { x: { time: false } },
    legend: { show: false },
    axes: [{ label: resource }, { label: metric }],
    series,
    hooks: { draw: [verticalLines(levels)] },
  }, data);
}

// -- views ------------------------------------------------------------------------------------

function renderStudies(body) {
  crumbs.innerHTML = "";
  const rows = body.studies.map((s) => {
    const counts = s.trials || {};
    const done = ["completed", "stopped", "failed"].reduce((n, k) => n + (counts[k] || 0), 0);
    const best = s.best ? `${esc(fmt(s.best.objective))} (trial ${esc(s.best.trial)})` : "-";
    return `<tr data-study="${esc(s.study)}"><td><a href="/study/${encodeURIComponent(s.study)}">${esc(s.study)}</a></td>
      <td>${esc(s.name)}</td><td class="state-${esc(s.state)}">${esc(s.state)}</td>
      <td>${done}/${esc(s.total_trials ?? "-")}</td><td>${best}</td><td>${esc(s.owner_name ?? s.owner)}</td>
      <td>${esc(fmtTime(s.created))}</td></tr>`;
  }).join("");
  main.innerHTML = `<section><h1>Studies</h1>${body.studies.length ? `<table id="studies">
    <tr><th>study</th><th>name</th><th>state</th><th>done</th><th>best</th><th>owner</th><th>created</th></tr>
    ${rows}</table>` : '<p id="studies" class="muted">no studies you may read</p>'}</section>`;
}

function renderStudy(body) {
  const s = body.study;
  const objective = s.objective || {};
  const metric = objective.metric || (objective.metrics ? objective.metrics[0].name : "objective");
  const mode = objective.mode || (objective.metrics ? objective.metrics[0].mode : "min");
  const maximize = String(mode).startsWith("max");
  const resource = objective.resource || "resource";
  const order = ranks(body.trials, maximize);
  const best = body.best;
  const lastId = body.curves.length ? body.curves[body.curves.length - 1].id : 0;
  crumbs.innerHTML = `/ <a href="/study/${encodeURIComponent(s.study)}">${esc(s.study)}</a>`;
  document.title = `hpod: ${s.study}`;
  const limits = Object.entries(s.limits || {}).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("");
  const rungs = (s.rungs || []).map((r) => `<tr><td>${esc(r.bracket)}</td><td>${esc(fmt(r.level))}</td><td>${esc(r.reached)}</td>
      <td>${esc(r.running)}</td><td>${esc(r.paused)}</td><td>${esc(r.promoted)}</td><td>${r.top ? "top" : esc(r.quota)}</td></tr>`).join("");
  const gpus = (body.report.gpus || []).map((g) => `<tr><td>${esc(g.index)}</td><td>${esc(g.name)}</td>
      <td>${esc((g.trials || []).join(", "))}</td><td>${esc(g.utilization)}%</td>
      <td>${esc(g.memory_used_mib)}/${esc(g.memory_total_mib)} MiB</td></tr>`).join("");
  const devices = s.devices ? `${esc(s.devices.kind)}: ${esc(s.devices.reason)}` : "-";
  const trials = body.trials.map((t) => `<tr data-trial="${t.trial}" class="${best && best.trial === t.trial ? "best" : ""}">
      <td><a href="/study/${encodeURIComponent(s.study)}/trial/${t.trial}">${t.trial}</a></td>
      <td class="state-${esc(t.state)}">${esc(t.state)}</td><td>${esc(order.has(t.trial) ? order.get(t.trial) + 1 : "-")}</td>
      <td>${esc(fmt(t.resource))}</td><td>${esc(fmt(t.objective))}</td><td>${esc(t.runs)}</td>
      <td><code>${fmtConfig(t.config)}</code></td></tr>`).join("");
  const bestHtml = best
    ? `<div class="value" data-trial="${best.trial}" data-objective="${esc(JSON.stringify(best.objective))}">${esc(fmt(best.objective))}</div>
       <div>${esc(mode)} ${esc(metric)}, trial <a href="/study/${encodeURIComponent(s.study)}/trial/${best.trial}">${best.trial}</a>
       at ${esc(resource)} ${esc(fmt(best.resource))}${best.window > 1
         ? ` (mean of its last ${esc(best.window)} reports; last ${esc(fmt(best.last))})` : ""}</div><div><code>${fmtConfig(best.config)}</code></div>`
    : '<div class="value muted" data-trial="" data-objective="">no result yet</div>';
  const structure = `
    <section><h1>${esc(s.name)} <span class="muted">${esc(s.study)}</span>
      <span id="state" class="state-${esc(s.state)}">${esc(s.state)}</span></h1>
      <div class="grid"><div id="best"></div><table class="kv" id="summary"></table></div></section>
    <div class="grid">
      <section><h2>Objective over time</h2><div id="chart-objective"></div></section>
      <section><h2>Learning curves <span class="muted">(colour: rank, darkest best; dashed: rungs)</span></h2><div id="chart-curves"></div></section>
    </div>
    <div class="grid">
      <section><h2>Rungs</h2><div id="rungs"></div></section>
      <section><h2>GPU use</h2><div id="gpus"></div></section>
    </div>
    <section><h2>Trials</h2><div id="trials"></div></section>`;
  if (!document.getElementById("chart-curves")) main.innerHTML = structure;
  const state = document.getElementById("state");
  state.textContent = s.state;
  state.className = `state-${s.state}`;
  document.getElementById("best").innerHTML = bestHtml;
  document.getElementById("summary").innerHTML = `
    <tr><td>state</td><td>${esc(s.state)}${s.end_reason ? ` (${esc(s.end_reason)})` : ""}</td></tr>
    <tr><td>owner</td><td>${esc(s.owner_name ?? s.owner)}</td></tr>
    <tr><td>created</td><td>${esc(fmtTime(s.created))}</td></tr>
    <tr><td>trials</td><td>${esc(Object.entries(s.trials || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "none yet")}</td></tr>
    <tr><td>elapsed</td><td>${esc(fmt(s.elapsed))} s</td></tr>${limits}
    <tr><td>reports</td><td id="reports" data-count="${body.curves.length}" data-last-report="${lastId}">${body.curves.length}</td></tr>`;
  document.getElementById("rungs").innerHTML = rungs
    ? `<table><tr><th>bracket</th><th>level</th><th>reached</th><th>running</th><th>paused</th><th>promoted</th><th>quota</th></tr>${rungs}</table>`
    : '<p class="muted">no rungs (fifo)</p>';
  document.getElementById("gpus").innerHTML = gpus
    ? `<table><tr><th>GPU</th><th>name</th><th>trials</th><th>util</th><th>memory</th></tr>${gpus}</table>`
    : `<p class="muted">no GPU held now; ${devices}</p>`;
  document.getElementById("trials").innerHTML = `<table id="trials-table"><tr><th>trial</th><th>state</th><th>rank</th>
    <th>${esc(resource)}</th><th>${esc(metric)}</th><th>runs</th><th>config</th></tr>${trials}</table>`;
  const levels = [...new Set((s.rungs || []).map((r) => r.level))];
  objectiveChart("chart-objective", body.curves, s.created, maximize, metric);
  curvesChart("chart-curves", body.curves, order, resource, metric, levels);
}

function renderTrial(body) {
  const t = body.trial;
  const s = body.study;
  const objective = s.objective || {};
  const metric = objective.metric || (objective.metrics ? objective.metrics[0].name : "objective");
  const resource = objective.resource || "resource";
  crumbs.innerHTML = `/ <a href="/study/${encodeURIComponent(s.study)}">${esc(s.study)}</a> / trial ${t.trial}`;
  document.title = `hpod: ${s.study} trial ${t.trial}`;
  const config = Object.entries(t.config || {}).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(fmt(v))}</td></tr>`).join("");
  const metrics = Object.entries(t.metrics || {}).map(([k, m]) => `<tr><td>${esc(k)}</td><td>${esc(fmt(m.last))}</td>
      <td>${esc(fmt(m.min))}</td><td>${esc(fmt(m.max))}</td><td>${esc(m.count)}</td></tr>`).join("");
  if (!document.getElementById("chart-curve")) {
    main.innerHTML = `<section><h1>Trial ${t.trial} <span class="muted">${esc(s.study)}</span>
        <span id="state" class="state-${esc(t.state)}">${esc(t.state)}</span></h1>
        <div class="grid"><table class="kv" id="config"></table><table id="metrics"></table></div></section>
      <section><h2>Learning curve <span class="muted">(${esc(metric)} by ${esc(resource)})</span></h2><div id="chart-curve"></div></section>
      <section><h2>stderr (last 100 lines)</h2><pre class="log" id="log"></pre></section>`;
  }
  document.getElementById("state").textContent = t.state;
  document.getElementById("state").className = `state-${t.state}`;
  document.getElementById("config").innerHTML = `<tr><th colspan="2">config</th></tr>${config}
    <tr><td>resource</td><td>${esc(fmt(t.resource))}</td></tr><tr><td>objective</td><td>${esc(fmt(t.objective))}</td></tr>
    <tr><td>runs</td><td>${esc(t.runs)}</td></tr>${t.error ? `<tr><td>error</td><td>${esc(t.error)}</td></tr>` : ""}`;
  document.getElementById("metrics").innerHTML = `<tr><th>metric</th><th>last</th><th>min</th><th>max</th><th>reports</th></tr>${metrics}`;
  const log = document.getElementById("log");
  log.textContent = body.log || "(empty)";
  const rows = body.curve.filter((p) => num(p.value) !== null && num(p.resource) !== null);
  chart("chart-curve", {
    scales: { x: { time: false } },
    axes: [{ label: resource }, { label: metric }],
    series: [{}, { label: metric, stroke: "#3b528b", width: 2, points: { show: true, size: 5 } }],
  }, [rows.map((p) => p.resource), rows.map((p) => p.value)]);
}

refresh().then(follow);
