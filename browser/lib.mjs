// Shared pieces for the browser tests: headless Chromium (trusting only the roots a test gives
// it), the compiled relay and agent as processes on loopback, a local echo server, and
// screenshots kept as artefacts.

import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TARGET = path.join(process.env.CARGO_TARGET_DIR ?? path.resolve(HERE, "..", "target"), "debug");
export const ARTIFACTS = path.join(HERE, "artifacts");
export const TOKEN = "browser-test-token-0123456789";
/** Upper bound for any single step; a hang guard, not a synchroniser. */
export const STEP_MS = 20_000;

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/**
 * Headless Chromium from Debian, cut off from everything but loopback, with a HOME of its own
 * (removed when the browser closes) so that no trust store of the machine's or the user's
 * applies.
 *
 * `trustedRoots`: PEM files of CA certificates Chromium trusts for HTTPS, and the only ones
 * beside its built-in roots (which no test certificate chains to). Chromium on Linux reads
 * locally added anchors from the NSS database in `$HOME/.pki/nssdb`, made here with certutil.
 * `resolve`: host patterns and the address each resolves to, as in
 * `{ "*.burrow.test": "127.0.0.1" }`; names a test makes up then need no DNS.
 */
export async function launch({ trustedRoots = [], resolve = {} } = {}) {
  const home = mkdtempSync(path.join(os.tmpdir(), "burrow-chromium-"));
  try {
    trustRoots(home, trustedRoots);
    const rules = Object.entries(resolve).map(([pattern, address]) => `MAP ${pattern} ${address}`);
    const browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      env: { ...process.env, HOME: home },
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        ...(rules.length > 0 ? [`--host-resolver-rules=${rules.join(",")}`] : []),
      ],
    });
    browser.on("disconnected", () => rmSync(home, { recursive: true, force: true }));
    return browser;
  } catch (error) {
    rmSync(home, { recursive: true, force: true });
    throw error;
  }
}

/** An NSS database in `home` trusting each PEM file of `roots` as a CA for TLS servers. */
function trustRoots(home, roots) {
  if (roots.length === 0) return;
  const db = `sql:${path.join(home, ".pki", "nssdb")}`;
  mkdirSync(path.join(home, ".pki", "nssdb"), { recursive: true });
  certutil(["-d", db, "-N", "--empty-password"]);
  roots.forEach((root, i) => certutil(["-d", db, "-A", "-t", "C,,", "-n", `burrow-test-root-${i}`, "-i", root]));
}

function certutil(args) {
  try {
    execFileSync("certutil", args, { stdio: ["ignore", "pipe", "pipe"], timeout: STEP_MS });
  } catch (error) {
    const why = error.code === "ENOENT" ? "not installed (Debian's libnss3-tools)" : `${error.stderr ?? error.message}`;
    throw new Error(`certutil ${args.join(" ")}: ${why}`);
  }
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Where the compiled `binary` (relay, agent) is. */
export function binaryPath(binary) {
  return path.join(TARGET, binary);
}

/** A process whose stdout lines can be awaited; killed when the test run ends. */
export function start(binary, args, env = {}) {
  const child = spawn(binaryPath(binary), args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  child.on("exit", () => children.delete(child));
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on("line", (line) => {
    lines.push(line);
    for (const waiter of [...waiters]) waiter();
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  child.lineWith = (marker) =>
    new Promise((resolve, reject) => {
      const check = () => {
        const line = lines.find((l) => l.includes(marker));
        if (line === undefined) return false;
        waiters.splice(waiters.indexOf(check), 1);
        clearTimeout(timer);
        resolve(line);
        return true;
      };
      const timer = setTimeout(
        () => reject(new Error(`${binary}: no line with ${JSON.stringify(marker)}; stderr:\n${stderr}`)),
        STEP_MS,
      );
      waiters.push(check);
      check();
    });
  child.stderrText = () => stderr;
  return child;
}

/**
 * Starts `binary` with `--ready-file` and resolves to the child once it has written the file,
 * with the file's JSON object as `child.ready`. The binaries write it whole and rename it into
 * place, so a file that exists is complete.
 */
export async function startReady(binary, args, env = {}) {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), "burrow-ready-")), "ready.json");
  const child = start(binary, [...args, "--ready-file", file], env);
  const deadline = Date.now() + STEP_MS;
  while (!existsSync(file)) {
    if (child.exitCode !== null) throw new Error(`${binary} exited before its ready file; stderr:\n${child.stderrText()}`);
    if (Date.now() > deadline) throw new Error(`${binary}: no ready file; stderr:\n${child.stderrText()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  child.ready = JSON.parse(readFileSync(file, "utf8"));
  return child;
}

/** A relay on loopback with its admin endpoint on an ephemeral port. */
export async function startRelay(env = {}) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "burrow-browser-"));
  const relay = await startReady(
    "relay",
    ["--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1", "--admin-listen", "127.0.0.1:0", "--data-dir", dataDir],
    { BURROW_RELAY_TOKEN: TOKEN, ...env },
  );
  relay.address = relay.ready.quic;
  relay.fingerprint = relay.ready.fingerprint;
  relay.admin = `http://${relay.ready.admin}`;
  relay.dataDir = dataDir;
  return relay;
}

/** An agent exposing `localPort` through `relay`; resolves once its tunnel is online. */
export async function startAgent(relay, localPort, args = [], env = {}) {
  const agent = await startReady(
    "agent",
    ["--relay", relay.address, "--fingerprint", relay.fingerprint, "--local", String(localPort), ...args],
    { BURROW_TOKEN: TOKEN, ...env },
  );
  // A TCP tunnel's `tcp://HOST:PORT`, or an HTTP tunnel's address.
  agent.url = agent.ready.tunnels[0].url;
  agent.publicPort = Number(new URL(agent.url).port);
  return agent;
}

/** An echo server on 127.0.0.1; resolves to its port. */
export function echoServer() {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => socket.pipe(socket));
    server.listen(0, "127.0.0.1", () => resolve(server.address().port));
    server.unref();
  });
}

/**
 * Sends `size` bytes to 127.0.0.1:`port` and resolves to the socket, still open, once as many
 * have come back.
 */
export function echoedAndHeld(port, size) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.write(Buffer.alloc(size, "x")));
    let back = 0;
    socket.on("data", (chunk) => {
      back += chunk.length;
      if (back < size) return;
      socket.setTimeout(0);
      resolve(socket);
    });
    socket.on("error", reject);
    socket.setTimeout(STEP_MS, () => socket.destroy(new Error("the echo did not come back in time")));
  });
}

/** Sends `text` to `host`:`port` and resolves to what comes back before the close. */
export function exchange(port, text, host = "127.0.0.1") {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, host, () => socket.end(text));
    let back = "";
    socket.on("data", (chunk) => (back += chunk));
    socket.on("end", () => resolve(back));
    socket.on("error", reject);
    socket.setTimeout(STEP_MS, () => socket.destroy(new Error("exchange timed out")));
  });
}
