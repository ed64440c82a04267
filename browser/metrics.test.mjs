// The relay's admin endpoint from a browser: the health page renders, and the metrics count
// what went through the tunnel.
import assert from "node:assert/strict";
import { echoServer, exchange, launch, screenshot, startAgent, startRelay } from "./lib.mjs";

export async function healthPageRendersAndMetricsCountTheTunnelsBytes() {
  const relay = await startRelay();
  const agent = await startAgent(relay, await echoServer());
  assert.equal(await exchange(agent.publicPort, "hello through the tunnel"), "hello through the tunnel");
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await page.goto(`${relay.admin}/healthz`);
    assert.match(await page.innerText("body"), /ok/);
    await screenshot(page, "relay-healthz");
    // The counters settle once the relay has seen the visitor close.
    let metrics = "";
    for (const started = Date.now(); !/^burrow_visitors 0$/m.test(metrics); ) {
      assert.ok(Date.now() - started < 20_000, `the visitor never closed:\n${metrics}`);
      metrics = await (await page.request.get(`${relay.admin}/metrics`)).text();
    }
    assert.match(metrics, /^burrow_sessions 1$/m);
    assert.match(metrics, /^burrow_bytes_total\{direction="visitor_to_local"\} 24$/m);
  } finally {
    await browser.close();
    agent.kill();
    relay.kill();
  }
}
