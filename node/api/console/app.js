// The Clawbernetes console: a login prompt, then the node's snapshots streamed live
// (GET /v1/console/events with the bearer token). Every string from the fleet (node names,
// models, regions, images) is written as text, never as markup.
//
// Inside OpenClaw's Control UI (the plugin's Fleet tab, `window.clawConsoleHost === "tab"`) there
// is no sign-in: the gateway has authenticated the viewer, and the plugin writes each snapshot of
// the bridge into the page as it streams it (`clawConsole.push`). A workload's output is asked of
// the plugin's logs route with the tab's own capability (`window.clawConsoleTab`); nothing else is
// asked from inside the tab, and it has no actions.
"use strict";

const ROW = 30; // px, as in app.css
const SPARK = 60; // readings kept per GPU
const TOKEN_KEY = "claw-console-token";

// Inside the tab the frame has no origin of its own, and no storage.
const inTab = window.clawConsoleHost === "tab";

const state = {
  token: inTab ? null : sessionStorage.getItem(TOKEN_KEY),
  snapshot: null,
  readings: new Map(), // uuid -> {util: [], temp: [], mem: []}
  tables: new Map(),
  snapshots: 0,
  tab: "fleet",
  logs: null, // {workload, abort}
  armed: null, // {key, until}: an action clicked once, waiting for its confirming click
};
// For tests and curious operators: how many snapshots this page has shown since it loaded. In the
// Fleet tab the plugin's stream calls `push` with each snapshot and `lost` when the bridge does
// not answer.
window.clawConsole = {
  loadedAt: Date.now(),
  snapshots: () => state.snapshots,
  push: (snapshot) => inTab && show(snapshot),
  lost: (message) => inTab && setLive(false, String(message).slice(0, 200)),
};

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  return `${Math.floor(s / 3600)}h`;
}

function when(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–";
}

// ---- sign-in and the live stream ----

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  setLive(false, "offline");
}

function setLive(on, text) {
  const live = $("live");
  live.className = `pill ${on ? "on" : "off"}`;
  live.textContent = text;
}

/** Reads server-sent events from `path` with the token, calling `onEvent(data)` for each; answers
 * the response's status (0 when the node could not be reached). */
async function stream(path, onEvent, signal) {
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` }, cache: "no-store", signal });
  } catch {
    return 0;
  }
  if (!response.ok || !response.body) return response.status;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data: "))
          .map((line) => line.slice(6))
          .join("\n");
        if (data) onEvent(JSON.parse(data));
      }
    }
  } catch {
    // The node went away, or the stream was closed on purpose.
  }
  return response.status;
}

async function connect() {
  if (!state.token) return showLogin();
  const status = await stream("/v1/console/events", show);
  if (status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    return showLogin("That token or key is not (or no longer) valid on this node.");
  }
  setLive(false, status === 0 || status === 200 ? "disconnected" : `error ${status}`);
  setTimeout(connect, 2000);
}

/** Shows one answer of a workload's output: its lines, or why there are none. */
function showTail(pre, tail) {
  if (tail.error) return pre.replaceChildren(el("span", tail.error, "muted"));
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.replaceChildren(...tail.lines.map((l) => el("div", l.line, l.stream === "stderr" ? "stderr" : "")));
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

/** In the Fleet tab: asks the plugin's logs route for the output, with this tab's capability
 * (the frame has no credentials to send), every two seconds until another workload is chosen. */
async function followInTab(workload, pre, signal) {
  const tab = window.clawConsoleTab || {};
  while (!signal.aborted) {
    let tail;
    try {
      const response = await fetch(tab.logs, {
        method: "POST",
        headers: { "Content-Type": "text/plain" },
        body: JSON.stringify({ tab: tab.capability, workload }),
        credentials: "omit",
        cache: "no-store",
        signal,
      });
      tail = await response.json();
    } catch {
      if (signal.aborted) return;
      tail = { error: "the gateway did not answer" };
    }
    showTail(pre, tail);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

/** Shows `workload`'s output, kept up to date, under the workloads table. */
function openLogs(workload, node) {
  if (state.logs) state.logs.abort.abort();
  const abort = new AbortController();
  state.logs = { workload, abort };
  const title = $("logs-title");
  const pre = $("logs");
  title.hidden = false;
  pre.hidden = false;
  title.textContent = `Output of ${workload} on ${node}, as the node reports it (newest 200 lines, live)`;
  pre.replaceChildren(el("span", "…", "muted"));
  if (inTab) {
    followInTab(workload, pre, abort.signal);
  } else {
    const follow = async () => {
      await stream(`/v1/console/logs?workload=${encodeURIComponent(workload)}`, (tail) => showTail(pre, tail), abort.signal);
      if (!abort.signal.aborted) setTimeout(follow, 2000);
    };
    follow();
  }
  if (state.snapshot) render();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("token").value = "";
  $("login").hidden = true;
  connect();
});

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => {
    state.tab = button.dataset.tab;
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b === button);
    for (const view of document.querySelectorAll("[data-view]")) view.hidden = view.dataset.view !== state.tab;
    if (state.snapshot) render();
  });
}

// ---- actions (operate role; not in the Fleet tab, which the gateway opens read-only) ----

function mayOperate(s) {
  return !inTab && (s.signed_in.role === "operate" || s.signed_in.role === "admin");
}

function notice(text, ok) {
  const p = $("notice");
  p.hidden = false;
  p.className = ok ? "ok" : "error";
  p.textContent = text;
}

/** A button for `action` (the body of POST /v1/console/act) that asks for a second click. */
function actionButton(label, action) {
  const key = JSON.stringify(action);
  const armed = state.armed?.key === key && state.armed.until > Date.now();
  const button = el("button", armed ? `confirm: ${label}` : label, armed ? "act armed" : "act");
  button.dataset.action = action.action;
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    if (!(state.armed?.key === key && state.armed.until > Date.now())) {
      state.armed = { key, until: Date.now() + 5000 };
      return render();
    }
    state.armed = null;
    button.disabled = true;
    try {
      const response = await fetch("/v1/console/act", {
        method: "POST",
        headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
        body: key,
      });
      const answer = await response.json().catch(() => ({}));
      if (response.ok) notice(`Done: ${label}.`, true);
      else notice(`Refused: ${answer.error?.message || `error ${response.status}`}`);
    } catch {
      notice("The node did not answer.");
    }
    render();
  });
  return button;
}

// ---- virtualised tables: only the rows in view exist in the page ----

function table(id, columns, template) {
  let t = state.tables.get(id);
  if (!t) {
    const root = $(id);
    const head = el("div", null, "head");
    head.style.gridTemplateColumns = template;
    for (const c of columns) head.append(el("div", c));
    const body = el("div", null, "body");
    const spacer = el("div");
    body.append(spacer);
    root.replaceChildren(head, body);
    t = { body, spacer, template, rows: [], draw: null };
    body.addEventListener("scroll", () => paint(t));
    state.tables.set(id, t);
  }
  return t;
}

function fill(id, columns, template, rows, draw) {
  const t = table(id, columns, template);
  t.rows = rows;
  t.draw = draw;
  paint(t);
}

function paint(t) {
  const { body, spacer, rows } = t;
  spacer.style.height = `${rows.length * ROW}px`;
  body.style.height = `${Math.min(rows.length, 20) * ROW + (rows.length ? 0 : ROW)}px`;
  const first = Math.max(0, Math.floor(body.scrollTop / ROW) - 5);
  const last = Math.min(rows.length, first + Math.ceil((body.clientHeight || 600) / ROW) + 10);
  const shown = [];
  for (let i = first; i < last; i++) {
    const row = el("div", null, "row");
    row.style.gridTemplateColumns = t.template;
    row.style.top = `${i * ROW}px`;
    t.draw(rows[i], row);
    shown.push(row);
  }
  if (!rows.length) shown.push(el("div", "nothing here yet", "empty"));
  body.replaceChildren(spacer, ...shown);
}

// ---- rendering ----

function show(snapshot) {
  state.snapshot = snapshot;
  state.snapshots += 1;
  for (const r of snapshot.readings || []) {
    const kept = state.readings.get(r.uuid) || { util: [], temp: [], mem: [] };
    const push = (list, v) => {
      list.push(v ?? 0);
      if (list.length > SPARK) list.shift();
    };
    push(kept.util, r.utilization_gpu_pct);
    push(kept.temp, r.temperature_c);
    push(kept.mem, r.memory_total_bytes ? (100 * (r.memory_used_bytes || 0)) / r.memory_total_bytes : 0);
    state.readings.set(r.uuid, kept);
  }
  // GPUs that left the fleet take their history with them (a missed reading or two keeps it).
  const read = snapshot.readings || [];
  if (state.readings.size > 2 * read.length + 64) {
    const current = new Set(read.map((r) => r.uuid));
    for (const uuid of state.readings.keys()) if (!current.has(uuid)) state.readings.delete(uuid);
  }
  $("login").hidden = true;
  $("app").hidden = false;
  setLive(true, `live · ${new Date(snapshot.at_ms).toLocaleTimeString()}`);
  render();
}

function render() {
  const s = state.snapshot;
  const local = s.nodes.find((n) => n.local);
  const who = s.signed_in.name ? `API key ${s.signed_in.name} (${s.signed_in.role})` : s.signed_in.with;
  const where = s.scope === "bridge" ? `the fleet through its bridge · ${s.nodes.length} nodes · ` : local ? `${local.name} · ${s.nodes.length} nodes · ` : "";
  $("where").textContent = `${where}signed in with ${who}`;
  $("readings-title").textContent = s.scope === "bridge" ? "Live GPU readings, every node" : "This node's GPUs";
  $("workloads-title").firstChild.textContent = s.scope === "bridge" ? "Workloads in the fleet " : "Workloads on this node ";
  $("workloads-title").lastChild.textContent = "(click one for its output)";
  const withheld = $("withheld");
  withheld.hidden = !s.withheld.length;
  withheld.textContent = s.withheld.length ? `Not shown to this key: ${s.withheld.join("; ")}.` : "";
  const actions = $("node-actions");
  actions.hidden = !(mayOperate(s) && local);
  if (!actions.hidden) {
    actions.replaceChildren(
      el("span", `This node (${local.name}): `, "muted"),
      local.cordoned ? actionButton("uncordon", { action: "uncordon" }) : actionButton("cordon", { action: "cordon" }),
    );
  }
  if (state.tab === "fleet") renderFleet(s);
  if (state.tab === "gpus") renderGpus(s);
  if (state.tab === "workloads") renderWorkloads(s);
  if (state.tab === "market") renderMarket(s);
}

function status(node, s) {
  if (node.cordoned) return "cordoned";
  if (node.local || node.announced_ms == null) return "healthy";
  return s.at_ms - node.announced_ms > s.silent_after_ms ? "silent" : "healthy";
}

function renderFleet(s) {
  const cards = [
    ["nodes", s.nodes.length],
    ["GPUs", s.nodes.reduce((n, node) => n + node.gpus.length, 0)],
    ["free GPUs", s.nodes.reduce((n, node) => n + node.gpus.filter((g) => !g.allocated).length, 0)],
    ["simulated GPUs", s.nodes.reduce((n, node) => n + node.gpus.filter((g) => g.simulated).length, 0)],
  ];
  $("fleet-cards").replaceChildren(
    ...cards.map(([label, n]) => {
      const card = el("div", null, "card");
      card.append(el("div", n, "n"), el("div", label, "muted"));
      return card;
    }),
  );
  const nodes = [...s.nodes].sort((a, b) => (b.local - a.local) || a.name.localeCompare(b.name));
  fill("nodes", ["node", "peer", "region", "GPUs free/all", "models", "workloads", "reachability", "status", "version"],
    "1.3fr 1.6fr .8fr .9fr 2fr .7fr .8fr 1fr .6fr", nodes, (n, row) => {
      row.dataset.peer = n.peer_id;
      const name = el("div", n.name);
      if (n.local) name.append(el("span", "this node", "tag"));
      const free = n.gpus.filter((g) => !g.allocated).length;
      const gpus = el("div", `${free}/${n.gpus.length}`);
      if (n.gpus.some((g) => g.simulated)) gpus.append(el("span", "simulated", "tag sim"));
      const models = [...new Set(n.gpus.map((g) => g.model))].join(", ") || "–";
      const st = status(n, s);
      const cell = el("div", st === "silent" ? `silent ${ago(s.at_ms - n.announced_ms)}` : st, `status-${st}`);
      cell.dataset.status = st;
      row.append(name, el("div", n.peer_id, "mono"), el("div", n.region || "–"), gpus, el("div", models),
        el("div", n.running_workloads), el("div", n.reachability), cell, el("div", n.software_version));
    });
}

function spark(values, max) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${SPARK} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", values.map((v, i) => `${i + SPARK - values.length},${100 - (100 * Math.min(v, max)) / max}`).join(" "));
  svg.append(line);
  return svg;
}

/** Gauges for a few GPUs; beyond GAUGES readings they go into the GPU table's columns. */
const GAUGES = 16;

function sparkCell(list, max, unit) {
  const cell = el("div", null, "spark");
  cell.append(spark(list, max), el("span", list.length ? `${Math.round(list.at(-1))}${unit}` : "–"));
  return cell;
}

function renderGpus(s) {
  const simulated = new Set(s.nodes.flatMap((n) => n.gpus.filter((g) => g.simulated).map((g) => g.uuid)));
  const gpuOf = new Map(s.nodes.flatMap((n) => n.gpus.map((g) => [g.uuid, { node: n.name, model: g.model }])));
  const readings = s.readings || [];
  const gauged = readings.length <= GAUGES;
  $("readings-title").hidden = !gauged;
  $("readings").hidden = !gauged;
  if (gauged) {
    const gauges = readings.map((r) => {
      const kept = state.readings.get(r.uuid) || { util: [], temp: [], mem: [] };
      const box = el("div", null, "gauge");
      const gpu = gpuOf.get(r.uuid);
      const node = s.scope === "bridge" && gpu ? `${gpu.node} · ` : "";
      const title = el("div", `${node}GPU ${r.index} · ${gpu?.model ?? r.uuid}`, "title");
      if (simulated.has(r.uuid)) title.append(el("span", "simulated", "tag sim"));
      box.append(title);
      if (r.utilization_gpu_pct == null && r.temperature_c == null) {
        box.append(el("div", simulated.has(r.uuid) ? "simulated: no readings" : "NVML gives no readings", "muted"));
        return box;
      }
      for (const [label, list, max, unit] of [["util", kept.util, 100, "%"], ["temp", kept.temp, 100, "°C"], ["mem", kept.mem, 100, "%"]]) {
        const line = el("div", null, "spark");
        line.append(el("span", label), spark(list, max), el("span", `${Math.round(list.at(-1) ?? 0)}${unit}`));
        box.append(line);
      }
      return box;
    });
    if (!gauges.length) gauges.push(el("p", s.scope === "bridge" ? "No GPU readings from the fleet." : "No GPU on this node.", "muted"));
    $("readings").replaceChildren(...gauges);
  }
  const read = new Set(readings.filter((r) => r.utilization_gpu_pct != null || r.temperature_c != null).map((r) => r.uuid));
  const gpus = s.nodes.flatMap((n) => n.gpus.map((g) => ({ node: n.name, ...g })));
  fill("gpus", ["node", "GPU", "model", "memory", "state", "util", "temp", "mem used"], "1.1fr 1.8fr 1.7fr .6fr .7fr 1fr 1fr 1fr", gpus, (g, row) => {
    const model = el("div", g.model);
    if (g.simulated) model.append(el("span", "simulated", "tag sim"));
    row.append(el("div", g.node), el("div", g.uuid, "mono"), model, el("div", `${Math.round(g.memory_mib / 1024)} GiB`),
      el("div", g.allocated ? "allocated" : "free"));
    const kept = state.readings.get(g.uuid);
    if (kept && read.has(g.uuid)) {
      row.append(sparkCell(kept.util, 100, "%"), sparkCell(kept.temp, 100, "°C"), sparkCell(kept.mem, 100, "%"));
    } else {
      const none = g.simulated ? "simulated" : "–";
      row.append(el("div", none, "muted"), el("div", none, "muted"), el("div", none, "muted"));
    }
  });
}

function renderWorkloads(s) {
  $("deployments-note").textContent = s.scope === "bridge" ? "(replicas running in the fleet)" : "(replicas running on this node)";
  fill("deployments", ["deployment", "revision", "image", "strategy", "running / replicas", "state", "revision signed"],
    "1.2fr .6fr 1.8fr .8fr .9fr .7fr 1.3fr", s.deployments || [], (d, row) => {
      row.dataset.deployment = d.name;
      row.append(el("div", d.name), el("div", d.revision), el("div", d.image), el("div", d.strategy.replace("_", "-")),
        el("div", `${d.running} / ${d.replicas}`), el("div", d.paused ? "paused" : "active"), el("div", when(d.signed_at_ms)));
    });
  const operate = mayOperate(s);
  fill("workloads", ["node", "id", "name", "image", "state", "GPUs", "created", "reason", ""], "1fr 1fr 1fr 1.6fr .8fr .5fr 1.3fr 1.4fr .8fr", s.workloads,
    (w, row) => {
      row.dataset.workload = w.id;
      row.classList.toggle("selected", state.logs?.workload === w.id);
      row.addEventListener("click", () => openLogs(w.id, w.node));
      row.append(el("div", w.node), el("div", w.id, "mono"), el("div", w.name || "–"), el("div", w.image), el("div", w.state),
        el("div", w.gpus.length), el("div", when(w.created_ms)), el("div", w.reason || ""));
      const cell = el("div");
      if (operate && w.state === "running") cell.append(actionButton("stop", { action: "stop_workload", workload: w.id }));
      row.append(cell);
    });
}

function renderMarket(s) {
  renderHistory(s.history);
  const offers = s.offers?.offers || [];
  fill("offers", ["node", "model", "GPUs", "price/GPU-h", "hours", "reputation"], "1.2fr 2fr .5fr .8fr .8fr .7fr", offers, (o, row) => {
    const model = el("div", o.gpu_model);
    if (o.simulated) model.append(el("span", "simulated", "tag sim"));
    row.append(el("div", o.node || o.provider), model, el("div", o.gpus), el("div", `${o.price_per_gpu_hour} MOLT`),
      el("div", `${o.min_hours}–${o.max_hours}`), el("div", o.reputation));
  });
  const leases = s.leases?.leases || [];
  const operate = mayOperate(s);
  fill("leases", ["lease", "side", "state", "amount", "paid", "escrow vault", "settlement", ""], "1.1fr .6fr .8fr .7fr .7fr 2fr 2fr .6fr", leases,
    (l, row) => {
      row.dataset.lease = l.lease_id;
      row.append(el("div", l.lease_id, "mono"), el("div", l.side), el("div", l.state), el("div", l.amount ?? "–"),
        el("div", l.to_provider ?? "–"), el("div", l.vault ?? "–", "mono"), el("div", l.settlement_signature ?? "–", "mono"));
      const cell = el("div");
      if (operate && l.side === "buyer" && l.state === "running") cell.append(actionButton("end", { action: "end_lease", lease_id: l.lease_id }));
      row.append(cell);
    });
}

function renderHistory(history) {
  const days = history?.days || [];
  const root = $("history");
  if (!days.length) return root.replaceChildren(el("p", "No settled lease in the last 30 days.", "muted"));
  const groups = new Map();
  for (const d of days) {
    const key = `${d.gpu_model}${d.region ? ` · ${d.region}` : ""}${d.simulated ? " (simulated)" : ""}`;
    groups.set(key, [...(groups.get(key) || []), d]);
  }
  const charts = [];
  for (const [label, list] of groups) {
    const box = el("div", null, "chart");
    const last = list.at(-1);
    box.append(el("div", `${label}: median ${last.p50}, ${last.trades} leases on ${last.day}`));
    const w = 600;
    const h = 140;
    const max = Math.max(...list.map((d) => Number(d.max))) * 1.1 || 1;
    const x = (i) => (list.length === 1 ? w / 2 : 90 + (i * (w - 120)) / (list.length - 1));
    const y = (v) => h - 20 - ((h - 30) * Number(v)) / max;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const ns = "http://www.w3.org/2000/svg";
    const band = document.createElementNS(ns, "polygon");
    band.setAttribute("class", "band");
    band.setAttribute("points", [...list.map((d, i) => `${x(i)},${y(d.max)}`), ...list.map((d, i) => `${x(i)},${y(d.min)}`).reverse()].join(" "));
    const median = document.createElementNS(ns, "polyline");
    median.setAttribute("class", "median");
    median.setAttribute("points", list.map((d, i) => `${x(i)},${y(d.p50)}`).join(" "));
    svg.append(band, median);
    for (const [value, label] of [[max / 1.1, `${(max / 1.1).toFixed(2)} MOLT`], [0, "0"]]) {
      const tick = document.createElementNS(ns, "text");
      tick.setAttribute("x", 2);
      tick.setAttribute("y", y(value) + 4);
      tick.textContent = label;
      svg.append(tick);
    }
    list.forEach((d, i) => {
      const range = document.createElementNS(ns, "line");
      range.setAttribute("class", "range");
      range.setAttribute("x1", x(i));
      range.setAttribute("x2", x(i));
      range.setAttribute("y1", y(d.min));
      range.setAttribute("y2", y(d.max));
      svg.append(range);
      const dot = document.createElementNS(ns, "circle");
      dot.setAttribute("cx", x(i));
      dot.setAttribute("cy", y(d.p50));
      dot.setAttribute("r", 3);
      dot.setAttribute("fill", "currentColor");
      const tip = document.createElementNS(ns, "title");
      tip.textContent = `${d.day}: min ${d.min}, median ${d.p50}, p90 ${d.p90}, max ${d.max} (${d.trades} leases)`;
      dot.append(tip);
      const day = document.createElementNS(ns, "text");
      day.setAttribute("x", x(i) - 28);
      day.setAttribute("y", h - 4);
      day.textContent = d.day;
      svg.append(dot, day);
    });
    box.append(svg);
    charts.push(box);
  }
  root.replaceChildren(...charts);
}

if (inTab) setLive(false, "waiting for the bridge…");
else connect();
