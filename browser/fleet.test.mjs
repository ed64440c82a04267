// The agent's inspector with a fleet of two relays on one etcd: the agent dials one, and the
// "Also via" table lists the other, online, with its transport and links; visitors through
// either relay reach the local server and count in the tunnel's one row. etcd comes from
// testkit's etcd-env; a relay built without the etcd store (no protoc) makes it say it is
// skipped.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import dgram from "node:dgram";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { STEP_MS, binaryPath, echoServer, exchange, launch, screenshot, startReady } from "./lib.mjs";

/** A port on `host` free for UDP a moment ago: the relay's QUIC port. */
function freeUdpPort(host) {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket("udp4");
    socket.on("error", reject);
    socket.bind(0, host, () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

/** A relay of the fleet on `host`, its agent port advertised to agents in the roster. */
async function startFleetRelay(etcd, host) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "burrow-browser-"));
  const port = await freeUdpPort(host);
  const relay = await startReady("relay", [
    "--listen", `${host}:${port}`, "--advertise", `${host}:${port}`, "--public-bind", host,
    "--store", etcd.url, "--data-dir", dataDir, "--admin-listen", "off",
  ]);
  relay.address = relay.ready.quic;
  relay.fingerprint = relay.ready.fingerprint;
  return relay;
}

export async function inspectorListsTheFleetsOtherRelayOnline() {
  const etcd = await startReady("etcd-env", []);
  etcd.url = etcd.ready.url;
  const processes = [];
  let browser;
  try {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "burrow-browser-"));
    let token;
    try {
      token = execFileSync(binaryPath("relay"), ["token", "add", "alice", "--store", etcd.url, "--data-dir", dataDir], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
      }).trim();
    } catch (error) {
      if (!String(error.stderr).includes("cargo feature `etcd`")) throw error;
      console.log("skipped  fleet.test.mjs: the relay was built without the etcd store (needs protoc)");
      return;
    }
    const dialed = await startFleetRelay(etcd, "127.0.0.1");
    processes.push(dialed);
    const other = await startFleetRelay(etcd, "127.0.0.2");
    processes.push(other);
    const agent = await startReady(
      "agent",
      ["--relay", dialed.address, "--fingerprint", dialed.fingerprint, "--local", String(await echoServer()),
        "--inspect", "127.0.0.1:0"],
      { BURROW_TOKEN: token },
    );
    processes.push(agent);
    const publicPort = Number(new URL(agent.ready.tunnels[0].url).port);

    browser = await launch();
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    const problems = [];
    page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
    await page.goto(agent.ready.inspector);
    await page.waitForSelector("#state.online", { timeout: STEP_MS });
    const row = page.locator("#fleet tbody tr", { hasText: other.address });
    await row.filter({ hasText: "online for" }).waitFor({ timeout: STEP_MS });
    assert.equal(await page.locator("#fleet tbody tr").count(), 1, "one other relay in the fleet");
    assert.match(await row.innerText(), /\tQUIC\t/);
    assert.match(await row.locator("td.num").innerText(), /^[1-9]\d*\/[1-9]\d*$/);

    for (const host of ["127.0.0.1", "127.0.0.2"]) {
      const text = `hello via ${host}`;
      assert.equal(await exchange(publicPort, text, host), text);
    }
    // Both visitors are the one tunnel's: its row's total reaches 2.
    await page.waitForFunction(
      () => document.querySelector("#tunnels tbody tr")?.cells[4]?.textContent === "2",
      null,
      { timeout: 2_500 },
    );
    await screenshot(page, "agent-inspector-fleet");
    assert.deepEqual(problems, []);
  } finally {
    await browser?.close();
    for (const child of processes.reverse()) child.kill();
    // Stopped by signal so that it stops etcd too.
    etcd.kill("SIGTERM");
  }
}
