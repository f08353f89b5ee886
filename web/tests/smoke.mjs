// A quick check of a deployed chatmesh's web client (e2e/kind/run.sh): the page served at
// BASE_URL/ loads in headless Chromium, registers a fresh user, logs out and logs in again, and
// its WebSocket connects. Exit status 0 on success; a screenshot under test-artifacts/ if not.
//   node tests/smoke.mjs http://127.0.0.1:9000
import { mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { webDir } from "./server.mjs";

const base = process.argv[2] ?? "http://127.0.0.1:9000";
const nickname = `web_smoke_${Math.random().toString(36).slice(2, 8)}`;
const wait = { timeout: 30000 };
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
const page = await browser.newPage();
try {
  await page.goto(`${base}/`);
  await page.getByLabel("Name", { exact: true }).fill(nickname);
  await page.getByLabel("Password", { exact: true }).fill("smoke_pass1");
  await page.getByRole("button", { name: "Register", exact: true }).click();
  await page.getByRole("status").filter({ hasText: "connected" }).waitFor(wait);
  await page.getByRole("navigation").getByRole("button", { name: "Log out" }).click();
  await page.getByLabel("Name", { exact: true }).fill(nickname);
  await page.getByLabel("Password", { exact: true }).fill("smoke_pass1");
  await page.getByRole("button", { name: "Log in", exact: true }).click();
  await page.getByRole("status").filter({ hasText: "connected" }).waitFor(wait);
  console.log(`web client at ${base}/: loaded, registered and logged in as ${nickname}, WebSocket connected`);
} catch (e) {
  mkdirSync(path.join(webDir, "test-artifacts"), { recursive: true });
  await page.screenshot({ path: path.join(webDir, "test-artifacts", "smoke-failed.png"), fullPage: true }).catch(() => {});
  console.error(`web client smoke check failed at ${base}/: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
