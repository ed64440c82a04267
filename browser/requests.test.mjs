// HTTP requests in the agent's inspector: a request made through an HTTP tunnel appears in
// the list within a second, its detail shows the headers and the JSON body it carried, and
// replay sends it to the local server again.
import assert from "node:assert/strict";
import http from "node:http";
import { STEP_MS, launch, screenshot, startAgent, startRelay } from "./lib.mjs";

/** A local web app that counts the requests it gets and answers each with JSON. */
function countingApp() {
  const app = { hits: [] };
  const server = http.createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      app.hits.push({ method: request.method, url: request.url, body, probe: request.headers["x-probe"] });
      response.setHeader("Content-Type", "application/json");
      response.end(JSON.stringify({ ok: true, hit: app.hits.length, echoed: body }));
    });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      app.port = server.address().port;
      server.unref();
      resolve(app);
    });
  });
}

/** A request to the relay's HTTP port for `host`, as a browser elsewhere would send it. */
function visit(relayHttp, host, path, body) {
  const [ip, port] = [relayHttp.slice(0, relayHttp.lastIndexOf(":")), relayHttp.slice(relayHttp.lastIndexOf(":") + 1)];
  return new Promise((resolve, reject) => {
    const request = http.request(
      { host: ip, port, path, method: "POST", headers: { Host: host, "Content-Type": "application/json", "X-Probe": "from-the-test" } },
      (response) => {
        let text = "";
        response.on("data", (chunk) => (text += chunk));
        response.on("end", () => resolve({ status: response.statusCode, text }));
      },
    );
    request.on("error", reject);
    request.setTimeout(STEP_MS, () => request.destroy(new Error("no answer in time")));
    request.end(body);
  });
}

export async function inspectorListsHttpRequestsShowsTheirDetailAndReplaysThem() {
  const relay = await startRelay({
    BURROW_RELAY_DOMAIN: "burrow.test",
    BURROW_RELAY_HTTP_LISTEN: "127.0.0.1:0",
    BURROW_RELAY_HTTPS_LISTEN: "off",
  });
  const relayHttp = relay.ready.http;
  const app = await countingApp();
  const agent = await startAgent(relay, app.port, ["--http", "myapp", "--inspect", "127.0.0.1:0"]);
  assert.equal(agent.url, `http://myapp.burrow.test:${relayHttp.split(":").pop()}`);
  const inspector = agent.ready.inspector;
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 1100 } });
    const problems = [];
    page.on("pageerror", (e) => problems.push(`script error: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
    page.on("request", (r) => new URL(r.url()).origin !== new URL(inspector).origin && problems.push(`fetched ${r.url()}`));
    await page.goto(inspector);
    await page.waitForSelector("#state.online", { timeout: STEP_MS });
    assert.match(await page.innerText("#tunnels"), /http:\/\/myapp\.burrow\.test:\d+/);

    const answer = await visit(relayHttp, "MyApp.burrow.test", "/orders?page=2", '{"item":"tea","count":3}');
    assert.equal(answer.status, 200);
    assert.equal(JSON.parse(answer.text).hit, 1);
    const sent = Date.now();
    const row = page.locator("#request-list tbody tr");
    await row.first().waitFor({ timeout: 1_000 });
    const seenAfter = Date.now() - sent;
    assert.ok(seenAfter <= 1_000, `the request showed up after ${seenAfter} ms`);
    // The row is listed when the request starts; its status follows with the answer's end,
    // which the page may learn from its next update.
    await page.waitForFunction(
      () => /200/.test(document.querySelector("#request-list tbody tr")?.innerText ?? ""),
      null,
      { timeout: 1_000 },
    );
    const listed = await row.first().innerText();
    assert.match(listed, /POST[\s\S]*\/orders\?page=2[\s\S]*200/);

    await row.first().click();
    await page.waitForSelector("#request-detail:not([hidden])", { timeout: 1_000 });
    await page.waitForFunction(() => document.querySelector("#detail-title").textContent.includes("/orders"));
    const requestHeaders = await page.innerText("#detail-request-headers");
    assert.match(requestHeaders, /x-probe\s+from-the-test/);
    assert.match(requestHeaders, /x-forwarded-for\s+127\.0\.0\.1/);
    assert.match(await page.innerText("#detail-response-headers"), /content-type\s+application\/json/);
    assert.match(await page.innerText("#detail-request-body"), /"item": "tea",\n\s+"count": 3/, "pretty JSON");
    assert.match(await page.innerText("#detail-response-body"), /"hit": 1/);

    // Replay with the body edited: the local server gets it a second time.
    await page.fill("#replay-body", '{"item":"coffee","count":1}');
    await page.click("#replay-button");
    await page.waitForFunction(() => document.querySelector("#replay-result").textContent.startsWith("sent as #"), null, {
      timeout: STEP_MS,
    });
    assert.equal(app.hits.length, 2, "the replay reached the local server");
    assert.deepEqual(app.hits[1], {
      method: "POST",
      url: "/orders?page=2",
      body: '{"item":"coffee","count":1}',
      probe: "from-the-test",
    });
    const replayRow = page.locator("#request-list tbody tr", { hasText: "(replay)" });
    await replayRow.first().waitFor({ timeout: 1_000 });
    await screenshot(page, "agent-inspector-http-requests");
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    agent.kill();
    relay.kill();
  }
}
