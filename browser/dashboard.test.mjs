// The relay's dashboard in a browser: it loads with no failed request, shows the agent and
// its tunnel, and traffic through the tunnel shows on it within about two seconds, that of
// a connection still open included. With an admin token, the browser gets in with the token
// as its Basic password.
import assert from "node:assert/strict";
import { STEP_MS, echoServer, echoedAndHeld, exchange, launch, screenshot, startAgent, startRelay } from "./lib.mjs";

const ADMIN_TOKEN = "browser-admin-token-0123456789";
/** The dashboard polls once a second; traffic must show by the second poll after it. */
const TRAFFIC_SHOWS_WITHIN_MS = 2_500;

/** Collects every failed request, error answer, console error and script error of `page`. */
function failuresOf(page) {
  const failures = [];
  page.on("requestfailed", (r) => failures.push(`${r.url()}: ${r.failure()?.errorText}`));
  page.on("response", (r) => r.status() >= 400 && failures.push(`${r.url()}: ${r.status()}`));
  page.on("console", (m) => m.type() === "error" && failures.push(`console: ${m.text()}`));
  page.on("pageerror", (e) => failures.push(`script: ${e.message}`));
  return failures;
}

const TUNNEL_ROW = '#tunnels tr[data-tunnel^="configured/"]';

export async function dashboardShowsTheAgentItsTunnelAndNewTraffic() {
  const relay = await startRelay();
  const agent = await startAgent(relay, await echoServer());
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    const failures = failuresOf(page);
    await page.goto(`${relay.admin}/`);
    const row = page.locator(TUNNEL_ROW);
    await row.waitFor({ timeout: STEP_MS });
    assert.match(await page.innerText("#agents tbody"), /configured.*127\.0\.0\.1:\d+.*tcp-\d+ :\d+/s);
    assert.match(await row.innerText(), new RegExp(`tcp-\\d+\\s+configured\\s+${agent.publicPort}\\s+serving`));
    assert.equal(await row.locator(".bytes-to-local").innerText(), "0 B");
    assert.equal(await page.locator("#graph .idle").textContent(), "no traffic in the last minute");

    const text = "through the tunnel ".repeat(100);
    assert.equal(await exchange(agent.publicPort, text), text);
    const sent = Date.now();
    await page.waitForFunction(
      (selector) => document.querySelector(`${selector} .bytes-to-local`).textContent === "1.9 KiB",
      TUNNEL_ROW,
      { timeout: TRAFFIC_SHOWS_WITHIN_MS },
    );
    console.log(`        traffic showed ${Date.now() - sent} ms after the visitor closed`);
    await page.locator("#graph .idle").waitFor({ state: "detached", timeout: TRAFFIC_SHOWS_WITHIN_MS });
    assert.match(await page.innerText("#legend"), /configured\/tcp-\d+/);
    assert.match(await page.innerText("#status"), /^live/);

    // A connection still open: its bytes so far show in its row and in the tunnel's totals.
    const held = await echoedAndHeld(agent.publicPort, 1 << 20);
    try {
      const since = Date.now();
      await page.waitForFunction(
        (selector) => {
          const visitor = document.querySelector("#connections tbody tr .bytes-to-local");
          return document.querySelector(`${selector} .bytes-to-local`).textContent === "1.0 MiB"
            && visitor?.textContent === "1.0 MiB"
            && document.querySelector("#connections tbody tr .bytes-to-visitor").textContent === "1.0 MiB";
        },
        TUNNEL_ROW,
        { timeout: TRAFFIC_SHOWS_WITHIN_MS },
      );
      console.log(`        an open connection's bytes showed ${Date.now() - since} ms after its echo`);
      assert.equal(await page.locator(`${TUNNEL_ROW} td`).nth(4).innerText(), "1");
      // Two polls more, so the picture shows the rate rise and fall rather than one dot.
      const points = await page.evaluate(() => document.querySelector("#graph polyline").points.numberOfItems);
      await page.waitForFunction(
        (before) => document.querySelector("#graph polyline").points.numberOfItems >= before + 2,
        points,
      );
      await screenshot(page, "relay-dashboard");
    } finally {
      held.destroy();
    }
    assert.deepEqual(failures, []);
  } finally {
    await browser.close();
    agent.kill();
    relay.kill();
  }
}

export async function dashboardOpensWithTheAdminTokenAsBasicPassword() {
  const relay = await startRelay({ BURROW_RELAY_ADMIN_TOKEN: ADMIN_TOKEN });
  const browser = await launch();
  try {
    // A page would show the browser's password prompt here; the request alone shows why.
    const stranger = await browser.newPage();
    const denied = await stranger.request.get(`${relay.admin}/`);
    assert.equal(denied.status(), 401);
    assert.match(denied.headers()["www-authenticate"], /Basic/);

    const context = await browser.newContext({ httpCredentials: { username: "operator", password: ADMIN_TOKEN } });
    const page = await context.newPage();
    const failures = failuresOf(page);
    const answered = await page.goto(`${relay.admin}/`);
    assert.equal(answered.status(), 200);
    await page.locator("#status.ok").waitFor({ timeout: STEP_MS });
    assert.equal(await page.innerText("#agents tbody"), "no agent connected");
    assert.deepEqual(failures, []);
  } finally {
    await browser.close();
    relay.kill();
  }
}
