// Starts a real `chatmesh --target all` on free loopback ports with a temporary data directory
// and `--web-dir dist`, and a TCP proxy in front of its HTTP port that a test can cut (to
// drop the browser's WebSocket as a network failure would).
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const webDir = path.resolve(here, "..");
const repo = path.resolve(webDir, "..");

export function binary() {
  const bin = process.env.CHATMESH_BIN ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(repo, "target"), "debug", "chatmesh");
  if (!existsSync(bin)) throw new Error(`no chatmesh binary at ${bin}: build it (cargo build -p chatmesh) or set CHATMESH_BIN`);
  return bin;
}

// Ports from below the kernel's ephemeral range (32768+), where port-0 binds and outgoing
// connections land and could take a port between our probe and chatmesh's bind; counting up
// from a start that differs per process, as the Rust suite does (e2e/tests/support).
let nextPort = 20000 + (process.pid % 200) * 50;

async function freePort() {
  for (;;) {
    const port = nextPort++;
    if (port >= 32000) throw new Error("ran out of test ports");
    const free = await new Promise((resolve) => {
      const s = net.createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

export async function startServer(extra = []) {
  const data = mkdtempSync(path.join(tmpdir(), "chatmesh-web-"));
  const http = await freePort();
  const args = [
    "--target=all",
    `--data-dir=${data}`,
    `--web-dir=${path.join(webDir, "dist")}`,
    `--http-listen=127.0.0.1:${http}`,
    `--ws-listen=127.0.0.1:${await freePort()}`,
    `--admin-listen=127.0.0.1:${await freePort()}`,
    "--sms-resend-interval=1s",
    "--log=warn",
  ];
  for (const svc of ["user", "file", "friend", "transmit", "message", "speech"]) {
    const port = await freePort();
    args.push(`--${svc}-listen=127.0.0.1:${port}`, `--${svc}-addr=http://127.0.0.1:${port}`);
  }
  args.push(...extra);
  const env = { ...process.env, NO_COLOR: "1" };
  // The offline recognizer that e2e/infra/speech.sh installs, when there.
  if (process.env.CHATMESH_TEST_SPEECH_PYTHON) {
    env.CHATMESH_SPEECH_PYTHON = process.env.CHATMESH_TEST_SPEECH_PYTHON;
    env.CHATMESH_SPEECH_MODEL_DIR = process.env.CHATMESH_TEST_SPEECH_MODEL_DIR;
  }
  const proc = spawn(binary(), args, { stdio: ["ignore", "pipe", "pipe"], env });
  let log = "";
  const keep = (b) => {
    log += b.toString();
    if (log.length > 4_000_000) log = log.slice(-2_000_000);
  };
  proc.stdout.on("data", keep);
  proc.stderr.on("data", keep);
  const base = `http://127.0.0.1:${http}`;
  const server = {
    base,
    proc,
    log: () => log,
    /** The `nth` code (1-based) the development SMS sender logged for `phone`. */
    async smsCode(phone, nth = 1) {
      for (let i = 0; i < 100; i++) {
        const lines = log.split("\n").filter((l) => l.includes("DEVELOPMENT-ONLY SMS") && l.includes(phone));
        const m = lines[nth - 1]?.match(/code="?(\d{6})/);
        if (m) return m[1];
        await sleep(50);
      }
      throw new Error(`no SMS code for ${phone} in the server log`);
    },
    /** A JSON call to the API, as curl would make it. */
    async call(route, body) {
      const rsp = await fetch(`${base}/service/${route}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ request_id: "test", ...body }),
      });
      return rsp.json();
    },
    async stop() {
      proc.kill("SIGTERM");
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once("exit", r)));
      rmSync(data, { recursive: true, force: true });
    },
  };
  for (let i = 0; ; i++) {
    if (proc.exitCode !== null) throw new Error(`chatmesh exited during start-up:\n${log}`);
    try {
      const r = await server.call("user/username_login", { nickname: "nobody", password: "nothing" });
      if (r.errmsg) break;
    } catch {
      /* not yet */
    }
    if (i > 400) throw new Error(`chatmesh did not become ready:\n${log}`);
    await sleep(50);
  }
  return server;
}

/** A TCP proxy to `port`; `cut(ms)` closes every connection and refuses new ones for a while. */
export async function startProxy(targetPort) {
  const socks = new Set();
  let refuseUntil = 0;
  const srv = net.createServer((client) => {
    if (Date.now() < refuseUntil) return client.destroy();
    const up = net.connect(targetPort, "127.0.0.1");
    socks.add(client);
    socks.add(up);
    client.pipe(up).on("error", () => {});
    up.pipe(client).on("error", () => {});
    const done = () => {
      client.destroy();
      up.destroy();
      socks.delete(client);
      socks.delete(up);
    };
    client.on("close", done).on("error", done);
    up.on("close", done).on("error", done);
  });
  const port = await new Promise((r) => srv.listen(0, "127.0.0.1", () => r(srv.address().port)));
  return {
    base: `http://127.0.0.1:${port}`,
    cut(ms) {
      refuseUntil = Date.now() + ms;
      for (const s of socks) s.destroy();
    },
    close: () => new Promise((r) => srv.close(r)),
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
