// The agent's web inspector in a browser: the page loads everything from the agent, and a
// connection made through the tunnel appears in its list, with its bytes, within a second;
// an open connection shows its bytes so far.
import assert from "node:assert/strict";
import { echoServer, echoedAndHeld, exchange, launch, screenshot, startAgent, startRelay } from "./lib.mjs";

/** Bytes move without a change event; the snapshot sent every second carries them. */
const BYTES_SHOW_WITHIN_MS = 2_500;

export async function inspectorListsATunnelConnectionWithItsBytesLive() {
  const relay = await startRelay();
  const agent = await startAgent(relay, await echoServer(), ["--inspect", "127.0.0.1:0"]);
  const url = agent.ready.inspector;
  const origin = new URL(url).origin;
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    const problems = [];
    page.on("requestfailed", (r) => problems.push(`${r.url()}: ${r.failure()?.errorText}`));
    page.on("request", (r) => new URL(r.url()).origin !== origin && problems.push(`fetched ${r.url()}`));
    page.on("response", (r) => r.status() >= 400 && problems.push(`${r.url()}: ${r.status()}`));
    page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));

    await page.goto(url);
    await page.waitForSelector("#state.online", { timeout: 20_000 });
    assert.match(await page.innerText("#tunnels"), new RegExp(`tcp://127\\.0\\.0\\.1:${agent.publicPort}`));
    assert.match(await page.innerText("#rtt"), /\d ms/);
    assert.equal(await page.locator("#connections tbody tr").count(), 0);

    const text = "hello through the tunnel";
    assert.equal(await exchange(agent.publicPort, text), text);
    const sent = Date.now();
    const row = page.locator('#connections tbody tr[data-state="closed"]');
    await row.first().waitFor({ timeout: 1_000 });
    const seenAfter = Date.now() - sent;
    assert.ok(seenAfter <= 1_000, `the connection showed up after ${seenAfter} ms`);
    assert.equal(await row.count(), 1);
    assert.equal(await row.locator(".to-local").innerText(), "24 B");
    assert.equal(await row.locator(".to-visitor").innerText(), "24 B");
    assert.match(await row.locator(".visitor").innerText(), /^127\.0\.0\.1:\d+$/);
    assert.match(await page.innerText("#tunnels tbody"), /\b1\b[\s\S]*24 B/);
    assert.match(await page.innerText("#requests"), /No requests yet/);

    // A visitor still connected is listed as open, above the closed one, with its bytes so
    // far; the tunnel's totals include them.
    const held = await echoedAndHeld(agent.publicPort, 1 << 20);
    try {
      const open = page.locator('#connections tbody tr[data-state="open"]');
      await open.first().waitFor({ timeout: 1_000 });
      assert.equal(await page.locator("#connections tbody tr").first().getAttribute("data-state"), "open");
      await page.waitForFunction(
        () => {
          const row = document.querySelector('#connections tbody tr[data-state="open"]');
          return row?.querySelector(".to-local").textContent === "1.0 MiB"
            && row.querySelector(".to-visitor").textContent === "1.0 MiB";
        },
        null,
        { timeout: BYTES_SHOW_WITHIN_MS },
      );
      assert.match(await page.innerText("#tunnels tbody"), /\b1\b[\s\S]*1\.0 MiB\s+1\.0 MiB/);
      // Past the highlight a new row gets, so the screenshot shows the rows as they stay.
      await page.waitForTimeout(1_500);
      await screenshot(page, "agent-inspector");
    } finally {
      held.destroy();
    }
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    agent.kill();
    relay.kill();
  }
}
