// The agent's web inspector in a browser: the page loads everything from the agent, and a
// connection made through the tunnel appears in its list, with its bytes, within a second.
import assert from "node:assert/strict";
import net from "node:net";
import { echoServer, exchange, field, launch, screenshot, startAgent, startRelay } from "./lib.mjs";

export async function inspectorListsATunnelConnectionWithItsBytesLive() {
  const relay = await startRelay();
  const agent = await startAgent(relay, await echoServer(), ["--inspect", "127.0.0.1:0"]);
  const url = field(await agent.lineWith("inspector:"), "inspector:");
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
    assert.match(await page.innerText("#requests"), /once HTTP tunnels exist/);

    // A visitor still connected is listed as open, above the closed one.
    const held = net.connect(agent.publicPort, "127.0.0.1");
    try {
      const open = page.locator('#connections tbody tr[data-state="open"]');
      await open.first().waitFor({ timeout: 1_000 });
      assert.equal(await page.locator("#connections tbody tr").first().getAttribute("data-state"), "open");
      assert.equal(await open.locator(".to-local").innerText(), "…");
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
