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
    for (const id of ["transport", "rtt", "loss", "cwnd", "mtu", "sent", "received"]) set(id, "–");
    set("remote", "(not connected)");
    return;
  }
  set("transport", path.transport);
  set("rtt", `${path.rtt_ms < 10 ? path.rtt_ms.toFixed(1) : Math.round(path.rtt_ms)} ms`);
  const share = path.sent_packets ? ((100 * path.lost_packets) / path.sent_packets).toFixed(2) : "0.00";
  set("loss", `${path.lost_packets} of ${path.sent_packets} (${share}%)`);
  set("cwnd", bytes(path.congestion_window));
  set("mtu", `${path.mtu} B`);
  set("sent", bytes(path.sent_bytes));
  set("received", bytes(path.received_bytes));
  set("remote", path.remote);
}

// A session's state in a few words, as the header's pill and detail say it.
function stateText(state) {
  switch (state.kind) {
    case "online":
      return `online for ${duration(state.for_ms)}`;
    case "connecting":
      return state.last_error ? `connecting (last attempt: ${state.last_error})` : "connecting…";
    case "reconnecting":
      return `reconnecting in ${Math.ceil(state.in_ms / 1000)} s: ${state.reason}`;
    default:
      return "stopped";
  }
}

function renderFleet(fleet) {
  $("fleet-section").hidden = fleet.length === 0;
  const body = $("fleet").tBodies[0];
  body.replaceChildren();
  for (const member of fleet) {
    const row = body.insertRow();
    cell(row, member.relay);
    cell(row, stateText(member.state));
    cell(row, member.transport || "–");
    cell(row, `${member.links_up}/${member.links_wanted}`, "num");
  }
}

function renderTunnels(tunnels) {
  const body = $("tunnels").tBodies[0];
  body.replaceChildren();
  for (const t of tunnels) {
    const row = body.insertRow();
    cell(row, t.name);
    const url = cell(row, t.url, "url");
    if (t.udp) {
      const note = document.createElement("div");
      note.className = "muted udp";
      note.textContent = `${udpRoom(t.udp)} · packets in ${t.udp.to_local} · out ${t.udp.to_visitor}${dropped(t.udp)}`;
      url.append(note);
    }
    cell(row, t.local, "addr");
    cell(row, t.open, "num");
    cell(row, t.total, "num");
    cell(row, t.failed, "num");
    cell(row, bytes(t.to_local), "num");
    cell(row, bytes(t.to_visitor), "num");
  }
  $("no-tunnels").hidden = tunnels.length > 0;
}

function udpRoom(udp) {
  return udp.max_payload === null ? "UDP payload size known once online" : `UDP payload up to ${udp.max_payload} bytes`;
}

function dropped(packets) {
  const count = packets.oversize + packets.queue_full + packets.local_unreachable;
  if (count === 0) return "";
  const reasons = [
    [packets.oversize, "oversize"],
    [packets.queue_full, "queue full"],
    [packets.local_unreachable, "local unreachable"],
  ].filter(([n]) => n > 0);
  return ` · ${count} dropped (${reasons.map(([n, why]) => `${n} ${why}`).join(", ")})`;
}

function renderFlows(flows, unknownFlow) {
  const body = $("flows").tBodies[0];
  body.replaceChildren();
  for (const f of flows) {
    const row = body.insertRow();
    row.dataset.id = f.id;
    row.dataset.state = f.state;
    cell(row, f.visitor, "addr visitor");
    cell(row, f.tunnel);
    cell(row, new Date(f.opened_at_ms).toLocaleTimeString());
    cell(row, duration(f.duration_ms), "num");
    cell(row, f.flow.to_local, "num packets-to-local");
    cell(row, f.flow.to_visitor, "num packets-to-visitor");
    cell(row, bytes(f.to_local), "num to-local");
    cell(row, bytes(f.to_visitor), "num to-visitor");
    const lost = cell(row, f.flow.oversize + f.flow.queue_full + f.flow.local_unreachable, "num dropped");
    lost.title = dropped(f.flow).replace(/^ · /, "");
    const state = cell(row, f.reason ? `${f.state}: ${f.reason}` : f.state, "state reason");
    state.title = f.reason ?? "";
  }
  $("flows-section").hidden = flows.length === 0;
  $("unknown-flow").hidden = !unknownFlow;
  $("unknown-flow").textContent = `${unknownFlow} UDP packets from the relay found no flow and were dropped.`;
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

let selected = null;

function statusClass(status) {
  if (status === null || status === undefined) return "";
  if (status >= 500) return "status-error";
  if (status >= 400) return "status-warn";
  return "status-ok";
}

function renderRequests(requests) {
  const body = $("request-list").tBodies[0];
  body.replaceChildren();
  for (const r of requests) {
    const row = body.insertRow();
    row.dataset.id = r.id;
    if (r.id === selected) row.className = "selected";
    cell(row, new Date(r.started_at).toLocaleTimeString());
    cell(row, r.tunnel);
    cell(row, r.replay_of ? `${r.method} (replay)` : r.method, "method");
    cell(row, r.path, "path");
    const status = cell(row, r.status ?? "…", `num status ${statusClass(r.status)}`);
    status.title = r.error ?? "";
    cell(row, r.duration_ms === null ? "…" : duration(r.duration_ms), "num");
    cell(row, bytes(r.request_bytes), "num");
    cell(row, bytes(r.response_bytes), "num");
    row.onclick = () => showRequest(r.id);
  }
  $("no-requests").hidden = requests.length > 0;
}

function headerRows(id, headers) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  for (const [name, value] of headers) {
    const row = body.insertRow();
    cell(row, name);
    cell(row, value);
  }
}

// JSON is shown indented, other text as it is, binary as hex.
function bodyText(view) {
  if (view.size === 0) return "(empty)";
  let text = view.text ?? view.hex;
  if (view.text !== null) {
    try {
      text = JSON.stringify(JSON.parse(view.text), null, 2);
    } catch {
      // Not JSON: shown as sent.
    }
  }
  return view.truncated ? `${text}\n… (${bytes(view.size)} in all; the start is kept)` : text;
}

async function showRequest(id) {
  selected = id;
  for (const row of $("request-list").tBodies[0].rows) row.className = Number(row.dataset.id) === id ? "selected" : "";
  const answer = await fetch(`/api/requests/${id}`);
  if (!answer.ok) {
    $("replay-result").textContent = await answer.text();
    return;
  }
  const r = await answer.json();
  $("request-detail").hidden = false;
  $("detail-title").textContent = `${r.method} ${r.path}`;
  const outcome = r.error ? `failed: ${r.error}` : r.status ? `${r.status}` : "waiting for the response";
  const took = r.duration_ms === null ? "" : ` in ${duration(r.duration_ms)}`;
  const from = r.visitor ? ` from ${r.visitor}` : r.replay_of ? ` (replay of #${r.replay_of})` : "";
  $("detail-summary").textContent = `#${r.id} on ${r.tunnel}${from}: ${outcome}${took}`;
  headerRows("detail-request-headers", r.request_headers);
  headerRows("detail-response-headers", r.response_headers);
  $("detail-request-size").textContent = `(${bytes(r.request_body.size)})`;
  $("detail-response-size").textContent = `(${bytes(r.response_body.size)})`;
  $("detail-request-body").textContent = bodyText(r.request_body);
  $("detail-response-body").textContent = bodyText(r.response_body);
  $("replay-method").value = r.method;
  $("replay-path").value = r.path;
  $("replay-headers").value = r.request_headers.map(([name, value]) => `${name}: ${value}`).join("\n");
  // A binary or cut-off body is replayed as kept unless it is replaced here.
  const editable = r.request_body.text !== null && !r.request_body.truncated;
  $("replay-body").value = editable ? r.request_body.text : "";
  $("replay-body").placeholder = editable ? "body" : "binary or long body: replayed as kept unless you type a new one";
  $("replay-body").dataset.editable = editable ? "yes" : "";
  $("replay-result").textContent = "";
}

async function replay(event) {
  event.preventDefault();
  const headers = $("replay-headers")
    .value.split("\n")
    .filter((line) => line.includes(":"))
    .map((line) => [line.slice(0, line.indexOf(":")).trim(), line.slice(line.indexOf(":") + 1).trim()]);
  const edit = { method: $("replay-method").value, path: $("replay-path").value, headers };
  const body = $("replay-body");
  if (body.dataset.editable || body.value !== "") edit.body = body.value;
  const answer = await fetch(`/api/requests/${selected}/replay`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(edit),
  });
  $("replay-result").textContent = answer.ok ? `sent as #${(await answer.json()).id}` : await answer.text();
}

$("replay").addEventListener("submit", replay);

function render(snapshot) {
  $("relay").textContent = snapshot.relay;
  $("version").textContent = `agent ${snapshot.version}`;
  renderState(snapshot.state);
  renderPath(snapshot.path);
  renderFleet(snapshot.fleet ?? []);
  renderTunnels(snapshot.tunnels);
  // A UDP flow is listed with the flows, not with the connections.
  renderConnections(snapshot.connections.filter((c) => !c.flow));
  renderFlows(snapshot.connections.filter((c) => c.flow), snapshot.udp_unknown_flow ?? 0);
  renderRequests(snapshot.requests ?? []);
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
