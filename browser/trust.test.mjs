// The browser launcher's trust store: Chromium opens an HTTPS page whose certificate chains
// to a root the test gave it, for a name that resolves only inside the test, and refuses the
// same page when it was not given that root. Its own CA and server, no relay: the ACME test
// uses the same launcher with Pebble's issuer root.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { STEP_MS, launch, screenshot } from "./lib.mjs";

const NAME = "app.burrow.test";
const RESOLVE = { "*.burrow.test": "127.0.0.1" };
const PAGE_TEXT = "served over HTTPS by a certificate of the test's own CA";

export async function chromiumTrustsAGivenRootForAnHttpsPage() {
  const { dir, server, port } = await pageServer();
  const browser = await launch({ trustedRoots: [path.join(dir, "ca.pem")], resolve: RESOLVE });
  // The server holds its key, Chromium's NSS database the CA: the files are done with.
  rmSync(dir, { recursive: true, force: true });
  try {
    const page = await browser.newPage();
    const response = await page.goto(`https://${NAME}:${port}/`, { timeout: STEP_MS });
    assert.equal(response.status(), 200);
    assert.equal(await page.innerText("h1"), PAGE_TEXT);
    const security = await response.securityDetails();
    assert.equal(security?.subjectName, NAME);
    assert.equal(security?.issuer, "burrow browser test CA");
    await screenshot(page, "trusted-root-https");
  } finally {
    await browser.close();
    server.close();
  }
}

export async function chromiumRefusesTheSamePageWithoutTheRoot() {
  const { dir, server, port } = await pageServer();
  rmSync(dir, { recursive: true, force: true });
  const browser = await launch({ resolve: RESOLVE });
  try {
    const page = await browser.newPage();
    await assert.rejects(page.goto(`https://${NAME}:${port}/`, { timeout: STEP_MS }), /ERR_CERT_AUTHORITY_INVALID/);
  } finally {
    await browser.close();
    server.close();
  }
}

/** An HTTPS server on 127.0.0.1 with a certificate for NAME from a new CA (ca.pem in `dir`). */
async function pageServer() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "burrow-trust-"));
  makeCertificates(dir);
  const options = { key: readFileSync(path.join(dir, "leaf.key")), cert: readFileSync(path.join(dir, "leaf.pem")) };
  const server = https.createServer(options, (_, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(`<!doctype html><title>${NAME}</title><h1>${PAGE_TEXT}</h1>`);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { dir, server, port: server.address().port };
}

/** A CA, and a leaf for NAME it signed, with openssl; Chromium wants a SAN and serverAuth. */
function makeCertificates(dir) {
  const at = (file) => path.join(dir, file);
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl(["req", "-x509", ...key, "-days", "1", "-keyout", at("ca.key"), "-out", at("ca.pem")],
    ["-subj", "/CN=burrow browser test CA"],
    ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
  writeFileSync(at("leaf.ext"), `subjectAltName=DNS:${NAME}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
  openssl(["req", ...key, "-keyout", at("leaf.key"), "-out", at("leaf.csr"), "-subj", `/CN=${NAME}`]);
  openssl(["x509", "-req", "-in", at("leaf.csr"), "-CA", at("ca.pem"), "-CAkey", at("ca.key"), "-CAcreateserial"],
    ["-days", "1", "-extfile", at("leaf.ext"), "-out", at("leaf.pem")]);
}

function openssl(...args) {
  execFileSync("openssl", args.flat(), { stdio: ["ignore", "pipe", "pipe"], timeout: STEP_MS });
}
