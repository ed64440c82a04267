// Shared pieces for the browser tests: headless Chromium, the compiled relay and agent as
// processes on loopback, a local echo server, and screenshots kept as artefacts.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const TARGET = path.resolve(HERE, "..", "target", "debug");
export const ARTIFACTS = path.join(HERE, "artifacts");
export const TOKEN = "browser-test-token-0123456789";
/** Upper bound for any single step; a hang guard, not a synchroniser. */
export const STEP_MS = 20_000;

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** Headless Chromium from Debian, cut off from everything but loopback. */
export async function launch() {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** A process whose stdout lines can be awaited; killed when the test run ends. */
export function start(binary, args, env = {}) {
  const child = spawn(path.join(TARGET, binary), args, {
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

/** The word after `label` on a line. */
export function field(line, label) {
  return line.slice(line.indexOf(label) + label.length).trim().split(/\s+/)[0];
}

/** A relay on loopback with its admin endpoint on an ephemeral port. */
export async function startRelay(env = {}) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "burrow-browser-"));
  const relay = start(
    "relay",
    ["--listen", "127.0.0.1:0", "--public-bind", "127.0.0.1", "--admin-listen", "127.0.0.1:0", "--data-dir", dataDir],
    { BURROW_RELAY_TOKEN: TOKEN, ...env },
  );
  const udp = field(await relay.lineWith("agents connect to"), "udp");
  relay.address = udp;
  relay.fingerprint = field(await relay.lineWith("fingerprint"), "fingerprint");
  relay.admin = field(await relay.lineWith("metrics"), "metrics").replace(/\/metrics$/, "");
  relay.dataDir = dataDir;
  return relay;
}

/** An agent exposing `localPort` through `relay`; resolves once its tunnel is online. */
export async function startAgent(relay, localPort, args = [], env = {}) {
  const agent = start(
    "agent",
    ["--relay", relay.address, "--fingerprint", relay.fingerprint, "--local", String(localPort), ...args],
    { BURROW_TOKEN: TOKEN, ...env },
  );
  const line = await agent.lineWith("tunnel ");
  // `tunnel NAME: URL -> LOCAL`: a TCP tunnel's public port, or an HTTP tunnel's address.
  agent.url = line.split(": ")[1].split(/\s+/)[0];
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

/** Sends `text` to 127.0.0.1:`port` and resolves to what comes back before the close. */
export function exchange(port, text) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => socket.end(text));
    let back = "";
    socket.on("data", (chunk) => (back += chunk));
    socket.on("end", () => resolve(back));
    socket.on("error", reject);
    socket.setTimeout(STEP_MS, () => socket.destroy(new Error("exchange timed out")));
  });
}
