// Trusted HTTPS as a teammate meets it: headless Chromium that trusts only the ACME CA's root
// (Pebble, on loopback) opens https://NAME.DOMAIN of a tunnel and shows the page, with no
// certificate warning; the relay got the certificate at that first visit (TLS-ALPN-01), and
// its dashboard lists it.
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { STEP_MS, TOKEN, launch, screenshot, startAgent, startReady } from "./lib.mjs";

const PAGE_TEXT = "A dev server, trusted by the browser";

export async function chromiumOpensATunnelWithACertificateFromTheAcmeCa() {
  const [httpPort, httpsPort] = [await freePort(), await freePort()];
  const pebble = await startReady("pebble-env", ["--http-port", `${httpPort}`, "--tls-port", `${httpsPort}`]);
  try {
    const relay = await startAcmeRelay(pebble.ready, httpPort, httpsPort);
    const agent = await startAgent(relay, await pageServer(), ["--http", "myapp"]);
    assert.equal(agent.url, `https://myapp.burrow.test:${httpsPort}`);
    const browser = await launch({ trustedRoots: [pebble.ready.issuer_root], resolve: { "*.burrow.test": "127.0.0.1" } });
    try {
      const page = await browser.newPage();
      const response = await page.goto(`${agent.url}/`, { timeout: STEP_MS });
      assert.equal(response.status(), 200);
      assert.equal(await page.innerText("h1"), PAGE_TEXT);
      const security = await response.securityDetails();
      assert.equal(security?.subjectName, "myapp.burrow.test");
      assert.match(security?.issuer ?? "", /Pebble/);
      await screenshot(page, "acme-trusted-tunnel");

      // The dashboard lists the certificate the visit got.
      await page.goto(`http://${relay.ready.admin}/`, { timeout: STEP_MS });
      const row = page.locator("#certificates tbody tr", { hasText: "myapp.burrow.test" });
      await row.waitFor({ timeout: STEP_MS });
      assert.match(await row.innerText(), /myapp\.burrow\.test\s+tls-alpn-01\s+valid\s+20\d\d-/);
      await screenshot(page, "acme-dashboard-certificates");
    } finally {
      await browser.close();
      agent.kill("SIGTERM");
      relay.kill("SIGTERM");
    }
  } finally {
    // Stopped by signal so that it stops Pebble too.
    pebble.kill("SIGTERM");
  }
}

async function startAcmeRelay(ca, httpPort, httpsPort) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "burrow-browser-acme-"));
  const [dataDir, config] = [path.join(dir, "data"), path.join(dir, "relay.toml")];
  writeFileSync(
    config,
    `[acme]\nemail = "ops@burrow.test"\ndirectory = "${ca.directory}"\nca_root = "${ca.ca_root}"\n`,
  );
  const relay = await startReady(
    "relay",
    [
      ...["--config", config, "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1"],
      ...["--admin-listen", "127.0.0.1:0", "--domain", "burrow.test"],
      ...["--http-listen", `127.0.0.1:${httpPort}`, "--https-listen", `127.0.0.1:${httpsPort}`],
    ],
    { BURROW_RELAY_TOKEN: TOKEN },
  );
  relay.address = relay.ready.quic;
  relay.fingerprint = relay.ready.fingerprint;
  return relay;
}

/** A web server on 127.0.0.1 answering every request with a small page; resolves to its port. */
function pageServer() {
  return new Promise((resolve) => {
    const server = http.createServer((_request, response) => {
      response.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      response.end(`<!doctype html><title>myapp</title><h1>${PAGE_TEXT}</h1>`);
    });
    server.listen(0, "127.0.0.1", () => resolve(server.address().port));
    server.unref();
  });
}

/** A TCP port free on 127.0.0.1 now, for the relay to bind and Pebble to validate on. */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}
