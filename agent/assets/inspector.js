// The inspector page: renders each snapshot the agent sends on /api/events. Text goes in
// through textContent only, since visitor addresses and failure reasons come from outside.
"use strict";

const $ = (id) => document.getElementById(id);
const seen = new Set();

function bytes(n) {
  const units = ["KiB", "MiB", "GiB", "TiB"];
  if (n < 1024) return `${n} B`;
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit + 1 < units.length) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s === 0) return `${ms} ms`;
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderState(state) {
  const pill = $("state");
  pill.className = `pill ${state.kind}`;
  const detail = $("state-detail");
  switch (state.kind) {
    case "online":
      pill.textContent = "online";
      detail.textContent = `for ${duration(state.for_ms)}`;
      break;
    case "connecting":
      pill.textContent = "connecting…";
      detail.textContent = state.last_error
        ? `${duration(state.for_ms)} (retry ${state.retry}; last attempt: ${state.last_error})`
        : duration(state.for_ms);
      break;
    case "reconnecting":
      pill.textContent = `reconnecting in ${Math.ceil(state.in_ms / 1000)} s`;
      detail.textContent = `attempt ${state.attempt}: ${state.reason}`;
      break;
    default:
      pill.textContent = "stopped";
      detail.textContent = state.error ?? "";
  }
}

function renderPath(path) {
  const set = (id, text) => ($(id).textContent = text);
  if (!path) {
    for (const id of ["rtt", "loss", "cwnd", "mtu", "sent", "received"]) set(id, "–");
    set("remote", "(not connected)");
    return;
  }
  set("rtt", `${path.rtt_ms < 10 ? path.rtt_ms.toFixed(1) : Math.round(path.rtt_ms)} ms`);
  const share = path.sent_packets ? ((100 * path.lost_packets) / path.sent_packets).toFixed(2) : "0.00";
  set("loss", `${path.lost_packets} of ${path.sent_packets} (${share}%)`);
  set("cwnd", bytes(path.congestion_window));
  set("mtu", `${path.mtu} B`);
  set("sent", bytes(path.sent_bytes));
  set("received", bytes(path.received_bytes));
  set("remote", path.remote);
}

function renderTunnels(tunnels) {
  const body = $("tunnels").tBodies[0];
  body.replaceChildren();
  for (const t of tunnels) {
    const row = body.insertRow();
    cell(row, t.name);
    cell(row, t.url, "url");
    cell(row, t.local, "addr");
    cell(row, t.open, "num");
    cell(row, t.total, "num");
    cell(row, t.failed, "num");
    cell(row, bytes(t.to_local), "num");
    cell(row, bytes(t.to_visitor), "num");
  }
  $("no-tunnels").hidden = tunnels.length > 0;
}

function renderConnections(connections) {
  const body = $("connections").tBodies[0];
  body.replaceChildren();
  for (const c of connections) {
    const row = body.insertRow();
    row.dataset.id = c.id;
    row.dataset.state = c.state;
    if (!seen.has(c.id)) {
      // Highlight a connection the first time it appears, except on the first render.
      if (body.dataset.ready) row.className = "fresh";
      seen.add(c.id);
    }
    cell(row, c.visitor, "addr visitor");
    cell(row, c.tunnel);
    cell(row, new Date(c.opened_at_ms).toLocaleTimeString());
    cell(row, duration(c.duration_ms), "num");
    cell(row, bytes(c.to_local), "num to-local");
    cell(row, bytes(c.to_visitor), "num to-visitor");
    const state = cell(row, c.reason ? `${c.state}: ${c.reason}` : c.state, "state reason");
    state.title = c.reason ?? "";
  }
  body.dataset.ready = "yes";
  $("no-connections").hidden = connections.length > 0;
}

function render(snapshot) {
  $("relay").textContent = snapshot.relay;
  $("version").textContent = `agent ${snapshot.version}`;
  renderState(snapshot.state);
  renderPath(snapshot.path);
  renderTunnels(snapshot.tunnels);
  renderConnections(snapshot.connections);
  document.body.dataset.updated = String(Date.now());
}

function connect() {
  const events = new EventSource("/api/events");
  const link = $("link");
  events.onmessage = (event) => {
    render(JSON.parse(event.data));
    link.textContent = "live";
    link.className = "muted";
  };
  events.onerror = () => {
    link.textContent = "lost the agent; retrying…";
    link.className = "lost";
  };
}

connect();
