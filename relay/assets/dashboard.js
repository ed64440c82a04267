// The relay's dashboard: polls the admin API once a second and draws what it answers. A
// tunnel's rate is the difference between two successive byte totals, which include what
// open connections have carried so far, so a long transfer shows while it runs.
"use strict";

const POLL_MS = 1000;
const TOKENS_EVERY = 10;
const WINDOW_S = 60;
const COLORS = ["#3b6fd8", "#e0823d", "#2a9d8f", "#c2457e", "#7b61c9", "#8a9a2b", "#d1495b", "#4a90a4"];
const SVG = "http://www.w3.org/2000/svg";
const GRAPH = { width: 1000, height: 220, left: 76, right: 14, top: 12, bottom: 26 };

/** Per tunnel ("token/name"): its colour, last total, and recent rates. */
const series = new Map();
/** Per session: its QUIC byte counts at the last poll, for a rate that moves mid-transfer. */
const wire = new Map();
let polls = 0;

const seconds = () => Date.now() / 1000;

async function json(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path} answered ${response.status}`);
  return response.json();
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i += 1) n /= 1024;
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

const rate = (n) => `${bytes(n)}/s`;

function age(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h}h ${m % 60}m` : `${Math.floor(h / 24)}d ${h % 24}h`;
}

function td(text, className) {
  const cell = document.createElement("td");
  cell.textContent = text;
  if (className) cell.className = className;
  return cell;
}

/** Replaces a table's rows with one per item, or a line saying there are none. */
function fill(id, items, row, none) {
  const body = document.querySelector(`#${id} tbody`);
  const rows = items.map(row);
  if (rows.length === 0) {
    const empty = td(none, "empty");
    empty.colSpan = document.querySelectorAll(`#${id} thead th`).length;
    const tr = document.createElement("tr");
    tr.append(empty);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function tr(...cells) {
  const row = document.createElement("tr");
  row.append(...cells);
  return row;
}

/** The session's QUIC bytes per second each way since the last poll, as "↑ … ↓ …". */
function wireRate(agent, t) {
  const last = wire.get(agent.session);
  wire.set(agent.session, { t, sent: agent.quic_bytes_sent, received: agent.quic_bytes_received });
  if (!last) return "–";
  const dt = Math.max(0.001, t - last.t);
  return `↑ ${rate((agent.quic_bytes_received - last.received) / dt)} ↓ ${rate((agent.quic_bytes_sent - last.sent) / dt)}`;
}

function agentRow(agent, t) {
  const loss = agent.sent_packets === 0 ? 0 : (100 * agent.lost_packets) / agent.sent_packets;
  const tunnels = agent.tunnels.map((t) => `${t.name} ${t.url ?? `:${t.port}`}`).join(", ");
  return tr(
    td(agent.token),
    td(`#${agent.session}`),
    td(agent.remote),
    td(agent.transport),
    td(age(seconds() - agent.connected_since)),
    td(`${agent.rtt_ms.toFixed(1)} ms`, "num"),
    td(`${loss.toFixed(loss < 1 ? 2 : 1)} %`, "num"),
    td(bytes(agent.cwnd), "num"),
    td(wireRate(agent, t), "num"),
    td(tunnels),
  );
}

function tunnelRow(tunnel) {
  const key = `${tunnel.token}/${tunnel.name}`;
  const known = series.get(key);
  const name = td(tunnel.name);
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = known.color;
  name.prepend(swatch);
  const state = document.createElement("span");
  state.className = `state ${tunnel.state}`;
  state.textContent = tunnel.state;
  const stateCell = td("");
  stateCell.append(state);
  const latest = known.points.at(-1);
  const row = tr(
    name,
    td(tunnel.token),
    td(tunnel.url ?? String(tunnel.port), tunnel.url ? "" : "num"),
    stateCell,
    td(String(tunnel.open_visitors), "num"),
    td(String(tunnel.visitors_total), "num"),
    td(bytes(tunnel.bytes_visitor_to_local), "num bytes-to-local"),
    td(bytes(tunnel.bytes_local_to_visitor), "num bytes-to-visitor"),
    td(latest ? rate(latest.rate) : "–", "num"),
  );
  row.dataset.tunnel = key;
  return row;
}

function connectionRow(visitor) {
  const since = age(seconds() - visitor.opened_at);
  return tr(
    td(visitor.peer),
    td(visitor.token),
    td(visitor.tunnel),
    td(String(visitor.port), "num"),
    td(since),
    td(bytes(visitor.bytes_visitor_to_local), "num bytes-to-local"),
    td(bytes(visitor.bytes_local_to_visitor), "num bytes-to-visitor"),
  );
}

function tokenRow(token) {
  const created = token.created ? new Date(token.created * 1000).toISOString().slice(0, 10) : "from the relay's config";
  return tr(td(token.name), td(token.limited ? token.ports : `any (${token.ports})`), td(created));
}

function day(unix) {
  return unix ? new Date(unix * 1000).toISOString().slice(0, 16).replace("T", " ") : "–";
}

function certificateRow(certificate) {
  return tr(
    td(certificate.names.join(", ")),
    td(certificate.challenge),
    td(certificate.state, `state-${certificate.state}`),
    td(day(certificate.not_after)),
    td(day(certificate.next_attempt)),
    td(certificate.last_error || "", "error"),
  );
}

/** Adds this poll's rate to each tunnel's history and drops what left the window. */
function record(tunnels, t) {
  for (const tunnel of tunnels) {
    const key = `${tunnel.token}/${tunnel.name}`;
    const total = tunnel.bytes_visitor_to_local + tunnel.bytes_local_to_visitor;
    let known = series.get(key);
    if (!known) {
      known = { color: COLORS[series.size % COLORS.length], points: [] };
      series.set(key, known);
    } else {
      // A total that went down belongs to a tunnel the relay forgot and started again.
      known.points.push({ t, rate: Math.max(0, total - known.total) / Math.max(0.001, t - known.t) });
    }
    known.total = total;
    known.t = t;
  }
  for (const [key, known] of series) {
    known.points = known.points.filter((p) => p.t > t - WINDOW_S);
    if (known.t < t - WINDOW_S) series.delete(key);
  }
}

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

/** Rounds up to 1, 2 or 5 times a power of two's worth of bytes, for readable grid lines. */
function ceiling(max) {
  let step = 1024;
  while (step * 5 < max) step *= 2;
  for (const k of [1, 2, 5]) if (step * k >= max) return step * k;
  return step * 5;
}

function draw(t) {
  const g = GRAPH;
  const plotW = g.width - g.left - g.right;
  const plotH = g.height - g.top - g.bottom;
  const top = ceiling(Math.max(0, ...[...series.values()].flatMap((s) => s.points.map((p) => p.rate))));
  const x = (time) => g.left + (plotW * (time - (t - WINDOW_S))) / WINDOW_S;
  const y = (value) => g.top + plotH - (plotH * value) / top;
  const parts = [];
  for (const fraction of [0, 0.5, 1]) {
    const level = y(top * fraction);
    parts.push(svg("line", { class: "grid", x1: g.left, x2: g.width - g.right, y1: level, y2: level }));
    parts.push(svg("text", { class: "axis", x: g.left - 8, y: level + 4, "text-anchor": "end" }, rate(top * fraction)));
  }
  for (const [label, at, anchor] of [["60 s ago", t - WINDOW_S, "start"], ["30 s", t - WINDOW_S / 2, "middle"], ["now", t, "end"]]) {
    parts.push(svg("text", { class: "axis", x: x(at), y: g.height - 6, "text-anchor": anchor }, label));
  }
  let moving = false;
  for (const known of series.values()) {
    if (known.points.length === 0) continue;
    moving ||= known.points.some((p) => p.rate > 0);
    const points = known.points.map((p) => `${x(p.t).toFixed(1)},${y(p.rate).toFixed(1)}`).join(" ");
    const base = `${x(known.points.at(-1).t).toFixed(1)},${y(0)} ${x(known.points[0].t).toFixed(1)},${y(0)}`;
    parts.push(svg("polygon", { class: "area", fill: known.color, points: `${points} ${base}` }));
    parts.push(svg("polyline", { class: "line", stroke: known.color, points }));
    // The latest rate as a dot: it shows even while a new tunnel has only one point.
    const latest = known.points.at(-1);
    parts.push(svg("circle", { class: "head", fill: known.color, cx: x(latest.t), cy: y(latest.rate), r: 3.5 }));
  }
  if (!moving) {
    const label = series.size === 0 ? "no tunnels" : "no traffic in the last minute";
    parts.push(svg("text", { class: "idle", x: g.left + plotW / 2, y: g.top + plotH / 2, "text-anchor": "middle" }, label));
  }
  document.getElementById("graph").replaceChildren(...parts);
  const legend = [...series].map(([key, known]) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = known.color;
    item.append(swatch, key);
    return item;
  });
  document.getElementById("legend").replaceChildren(...legend);
}

function totals(agents, tunnels, connections) {
  let now = 0;
  for (const known of series.values()) now += known.points.at(-1)?.rate ?? 0;
  document.getElementById("agent-count").textContent = agents.length;
  document.getElementById("tunnel-count").textContent = tunnels.length;
  document.getElementById("visitor-count").textContent = connections.length;
  document.getElementById("rate-total").textContent = rate(now);
}

function status(text, className) {
  const line = document.getElementById("status");
  line.textContent = text;
  line.className = `status ${className}`;
}

async function poll() {
  try {
    const views = ["agents", "tunnels", "connections"];
    if (polls % TOKENS_EVERY === 0) views.push("tokens", "certificates");
    const [agents, tunnels, connections, tokens, certificates] = await Promise.all(
      views.map((view) => json(`api/${view}`)),
    );
    const t = seconds();
    record(tunnels, t);
    fill("agents", agents, (agent) => agentRow(agent, t), "no agent connected");
    for (const session of wire.keys()) if (!agents.some((a) => a.session === session)) wire.delete(session);
    fill("tunnels", tunnels, tunnelRow, "no tunnel open");
    fill("connections", connections, connectionRow, "no open connection");
    if (tokens) fill("tokens", tokens, tokenRow, "no token");
    if (certificates) fill("certificates", certificates, certificateRow, "none: ACME is off (acme.email)");
    draw(t);
    totals(agents, tunnels, connections);
    status(`live · ${new Date().toLocaleTimeString()}`, "ok");
  } catch (error) {
    status(`cannot reach the relay: ${error.message}`, "bad");
  }
  polls += 1;
  setTimeout(poll, POLL_MS);
}

poll();
