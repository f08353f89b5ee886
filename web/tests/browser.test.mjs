// The web client in a real headless Chromium (Debian's), against a real chatmesh started here:
// accounts, friends, chats with text, image, file and voice, live pushes on every tab, history
// after a reload and by scrolling back, search, groups, reconnects, and the server's own error
// messages. On a failure every open page is saved as a screenshot under test-artifacts/
// (CHATMESH_WEB_SCREENSHOTS=1 saves the main screens on success too).
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { chromium } from "playwright-core";
import { sleep, startProxy, startServer, webDir } from "./server.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ARTIFACTS = path.join(webDir, "test-artifacts");
const PASSWORD = "pass_word-1";
const WAIT = { timeout: 15000 };
const MAX_BODY = 1024 * 1024;
const MAX_AVATAR = 64 * 1024;
const uniq = Math.random().toString(36).slice(2, 8);
const names = { alice: `alice_${uniq}`, bob: `bob_${uniq}`, carol: `carol_${uniq}` };
// A 1x1 PNG.
const PNG = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==", "base64");

let server, proxy, browser;
const pages = {}; // name -> Page, for screenshots
const ctx = {};

async function shoot(label) {
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    if (page.isClosed()) continue;
    await page.screenshot({ path: path.join(ARTIFACTS, `${label}-${name}.png`), fullPage: true }).catch(() => {});
  }
}

/** A test step: on failure, screenshots of every page and the server log's tail. The steps
 * build on each other: after a failure the rest are skipped. */
let failed = false;
function step(name, fn) {
  it(name, async (t) => {
    if (failed) return t.skip("an earlier step failed");
    try {
      await fn();
      if (process.env.CHATMESH_WEB_SCREENSHOTS) await shoot(name.replace(/\W+/g, "_"));
    } catch (e) {
      failed = true;
      await shoot(`FAILED-${name.replace(/\W+/g, "_")}`);
      const tail = (server?.log() ?? "").split("\n").filter((l) => !l.includes("speech worker cannot start"));
      console.error(`--- chatmesh log (tail) ---\n${tail.slice(-40).join("\n")}`);
      throw e;
    }
  });
}

async function newUserPage(who, { base = server.base, viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport, acceptDownloads: true, permissions: ["microphone"] });
  ctx[who] = context;
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${who}] page error: ${e.message}`));
  pages[who] = page;
  await page.goto(`${base}/`);
  return page;
}

async function register(page, nickname) {
  await page.getByLabel("Name", { exact: true }).fill(nickname);
  await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await page.getByRole("button", { name: "Register", exact: true }).click();
  await page.getByRole("status").filter({ hasText: "connected" }).waitFor(WAIT);
}

const session = (page) => page.evaluate(() => localStorage.getItem("chatmesh.session"));
const chatButton = (page, name) => page.locator(".chat-item").filter({ hasText: name });
const messages = (page) => page.getByRole("log", { name: "Messages" });

async function openChat(page, name) {
  await chatButton(page, name).click();
  await page.getByRole("heading", { name }).waitFor(WAIT);
}

async function send(page, text) {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.keyboard.press("Enter");
}

describe("web client in Chromium", () => {
  before(async () => {
    // Small limits, so the tests can hit them: the server's refusals must reach the user.
    server = await startServer([`--max-body-bytes=${MAX_BODY}`, `--max-avatar-bytes=${MAX_AVATAR}`]);
    proxy = await startProxy(Number(new URL(server.base).port));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
    });
  });
  after(async () => {
    await browser?.close();
    await proxy?.close();
    await server?.stop();
  });

  step("the gateway serves the client at /", async () => {
    const html = await (await fetch(`${server.base}/`)).text();
    assert.match(html, /<div id="app">/);
  });

  step("a bad password shows the server's words", async () => {
    const page = await newUserPage("alice", { base: proxy.base });
    await register(page, names.alice);
    await page.getByRole("navigation").getByRole("button", { name: "Log out" }).click();
    const expected = (await server.call("user/username_login", { nickname: names.alice, password: "Wrong_pass1" })).errmsg;
    assert.ok(expected);
    await page.getByLabel("Name", { exact: true }).fill(names.alice);
    await page.getByLabel("Password", { exact: true }).fill("Wrong_pass1");
    await page.getByRole("button", { name: "Log in", exact: true }).click();
    await assert.doesNotReject(page.getByRole("alert").filter({ hasText: expected }).waitFor(WAIT));
    // Keyboard only: Enter in the password field submits the form.
    await page.getByLabel("Password", { exact: true }).focus();
    await page.keyboard.press("Control+A");
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press("Enter");
    await page.getByRole("status").filter({ hasText: "connected" }).waitFor(WAIT);
  });

  step("two users become friends, with live requests", async () => {
    const bob = await newUserPage("bob", { viewport: { width: 375, height: 740 } });
    await register(bob, names.bob);
    const alice = pages.alice;
    await alice.getByRole("navigation").getByRole("button", { name: "Contacts" }).click();
    await alice.getByLabel("Find people").fill(names.bob);
    await alice.getByRole("button", { name: "Search", exact: true }).click();
    await alice.getByRole("button", { name: "Add friend" }).click();
    await alice.getByText(`Friend request sent to ${names.bob}`).waitFor(WAIT);
    // Pushed to bob: the notice and the pending count.
    await bob.getByText(`${names.alice} sent you a friend request`).waitFor(WAIT);
    await bob.getByRole("navigation").getByRole("button", { name: /Contacts/ }).click();
    await bob.getByRole("list", { name: "Friend requests" }).getByText(names.alice).waitFor(WAIT);
    await bob.getByRole("button", { name: "Accept" }).click();
    await alice.getByText(`${names.bob} accepted your friend request`).waitFor(WAIT);
    // The new one-to-one chat is pushed to both.
    await alice.getByRole("navigation").getByRole("button", { name: "Chats" }).click();
    await chatButton(alice, names.bob).waitFor(WAIT);
    await bob.getByRole("navigation").getByRole("button", { name: "Chats" }).click();
    await chatButton(bob, names.alice).waitFor(WAIT);
  });

  step("text messages are pushed live, with unread counts and last message", async () => {
    const { alice, bob } = pages;
    await openChat(alice, names.bob);
    await send(alice, "hello bob");
    await messages(alice).getByText("hello bob").waitFor(WAIT);
    // Bob has not opened the chat: an unread count and the last message in the list.
    const item = chatButton(bob, names.alice);
    await item.getByTestId("unread").filter({ hasText: "1" }).waitFor(WAIT);
    await item.getByText("hello bob").waitFor(WAIT);
    await openChat(bob, names.alice);
    await messages(bob).getByText("hello bob").waitFor(WAIT);
    await item.getByTestId("unread").waitFor({ state: "detached", ...WAIT });
    await send(bob, "hi alice, from a phone");
    await messages(alice).getByText("hi alice, from a phone").waitFor(WAIT);
  });

  step("images and files travel and download", async () => {
    const { alice, bob } = pages;
    await alice.getByLabel("Send an image").setInputFiles({ name: "dot.png", mimeType: "image/png", buffer: PNG });
    await messages(bob).getByRole("img", { name: `image from ${names.alice}` }).waitFor(WAIT);
    const content = `notes ${uniq}\n`.repeat(100);
    await alice.getByLabel("Send a file").setInputFiles({ name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from(content) });
    await messages(bob).getByText("notes.txt").waitFor(WAIT);
    const [download] = await Promise.all([bob.waitForEvent("download", WAIT), bob.getByRole("button", { name: "Download notes.txt" }).click()]);
    assert.equal(download.suggestedFilename(), "notes.txt");
    assert.equal(readFileSync(await download.path(), "utf8"), content);
    // Too big for this server: the sender sees the gateway's words; nothing reaches bob.
    await alice.getByLabel("Send a file").setInputFiles({ name: "big.bin", mimeType: "application/octet-stream", buffer: Buffer.alloc(MAX_BODY + 1) });
    await messages(alice).getByText(`not sent: request body is larger than ${MAX_BODY} bytes`).waitFor(WAIT);
    await sleep(500);
    assert.equal(await messages(bob).getByText("big.bin").count(), 0);
  });

  step("a recorded voice message plays and can be transcribed", async () => {
    const { alice, bob } = pages;
    await alice.getByRole("button", { name: "Record voice" }).click();
    await alice.getByRole("button", { name: "Stop and send voice" }).waitFor(WAIT);
    await sleep(1200);
    await alice.getByRole("button", { name: "Stop and send voice" }).click();
    const voice = messages(bob).locator(".speech").last();
    await voice.getByLabel("Voice message").waitFor(WAIT);
    // The bytes are the 16 kHz mono WAV the speech service takes.
    const header = await voice.getByLabel("Voice message").evaluate(async (a) => {
      const b = new Uint8Array(await (await fetch(a.src)).arrayBuffer());
      const v = new DataView(b.buffer);
      return { riff: String.fromCharCode(...b.slice(0, 4)), channels: v.getUint16(22, true), rate: v.getUint32(24, true), bits: v.getUint16(34, true), len: b.length };
    });
    assert.deepEqual({ ...header, len: header.len > 20000 }, { riff: "RIFF", channels: 1, rate: 16000, bits: 16, len: true });
    await voice.getByRole("button", { name: "Transcribe" }).click();
    // The fake microphone plays a beep: the recognizer's transcript (whatever it hears), or,
    // where no recognizer is installed, the speech service's own error.
    const answer = process.env.CHATMESH_TEST_SPEECH_PYTHON ? ".transcript" : ".transcript, .error";
    await voice.locator(answer).first().waitFor({ timeout: 90000 });
  });

  step("every open tab gets pushes; a tab's own sends reach its sibling tabs", async () => {
    const alice2 = await ctx.alice.newPage();
    pages.alice2 = alice2;
    await alice2.goto(`${proxy.base}/`);
    await alice2.getByRole("status").filter({ hasText: "connected" }).waitFor(WAIT);
    await openChat(alice2, names.bob);
    await send(pages.bob, "to both of alice's tabs");
    await messages(pages.alice).getByText("to both of alice's tabs").waitFor(WAIT);
    await messages(alice2).getByText("to both of alice's tabs").waitFor(WAIT);
    await send(pages.alice, "sent from tab one");
    await messages(alice2).getByText("sent from tab one").waitFor(WAIT);
    await alice2.close();
    delete pages.alice2;
  });

  step("a reload shows the history", async () => {
    const { bob } = pages;
    await bob.reload();
    await openChat(bob, names.alice);
    const log = messages(bob);
    for (const t of ["hello bob", "hi alice, from a phone", "notes.txt", "sent from tab one"]) await log.getByText(t).waitFor(WAIT);
    await log.getByRole("img", { name: `image from ${names.alice}` }).waitFor(WAIT);
  });

  step("a lost WebSocket reconnects and fetches what it missed", async () => {
    const { alice } = pages;
    const aliceSession = await session(alice);
    const bobSession = await session(pages.bob);
    const chats = await server.call("friend/get_chat_session_list", { session_id: bobSession });
    const chatId = chats.chat_session_info_list[0].chat_session_id;
    proxy.cut(1500);
    await alice.getByTestId("link").filter({ hasText: "offline" }).waitFor(WAIT);
    const sent = await server.call("message_transmit/new_message", {
      session_id: bobSession,
      chat_session_id: chatId,
      message: { message_type: "STRING", string_message: { content: "sent while alice was away" } },
    });
    assert.equal(sent.success, true, JSON.stringify(sent));
    await alice.getByTestId("link").filter({ hasText: "connected" }).waitFor({ timeout: 30000 });
    await messages(alice).getByText("sent while alice was away").waitFor(WAIT);
    assert.ok(aliceSession);
  });

  step("scrolling back loads earlier pages; search finds messages", async () => {
    const { bob } = pages;
    const bobSession = await session(bob);
    const chats = await server.call("friend/get_chat_session_list", { session_id: bobSession });
    const chatId = chats.chat_session_info_list[0].chat_session_id;
    for (let i = 1; i <= 40; i++) {
      const r = await server.call("message_transmit/new_message", {
        session_id: bobSession,
        chat_session_id: chatId,
        message: { message_type: "STRING", string_message: { content: `filler ${i}` } },
      });
      assert.equal(r.success, true, JSON.stringify(r));
    }
    await sleep(500);
    await bob.reload();
    await openChat(bob, names.alice);
    const log = messages(bob);
    await log.getByText("filler 40", { exact: true }).waitFor(WAIT);
    assert.equal(await log.getByText("hello bob").count(), 0);
    // Scrolling near the top loads earlier pages by itself: once everything is loaded the
    // button is gone, possibly between this check and the click.
    const button = log.getByRole("button", { name: "Load earlier messages" });
    for (let i = 0; i < 10 && (await log.getByText("hello bob").count()) === 0; i++) {
      if ((await button.count()) > 0) await button.click({ timeout: 2000 }).catch(() => {});
      await sleep(300);
    }
    await log.getByText("hello bob").waitFor(WAIT);
    await bob.getByPlaceholder("Search messages").fill("hello");
    await bob.getByRole("button", { name: "Search", exact: true }).click();
    await bob.getByRole("region", { name: "Search results" }).getByText("hello bob").waitFor(WAIT);
  });

  step("a third user, a friend request rejected, and a group chat", async () => {
    const carol = await newUserPage("carol", { viewport: { width: 375, height: 740 } });
    await register(carol, names.carol);
    // carol asks bob, who rejects; then asks alice, who accepts.
    for (const target of [names.bob, names.alice]) {
      await carol.getByRole("navigation").getByRole("button", { name: "Contacts" }).click();
      await carol.getByLabel("Find people").fill(target);
      await carol.getByRole("button", { name: "Search", exact: true }).click();
      await carol.getByRole("button", { name: "Add friend" }).click();
      await carol.getByText(`Friend request sent to ${target}`).waitFor(WAIT);
    }
    const { alice, bob } = pages;
    await bob.getByRole("navigation").getByRole("button", { name: /Contacts/ }).click();
    await bob.getByRole("list", { name: "Friend requests" }).getByText(names.carol).waitFor(WAIT);
    await bob.getByRole("button", { name: "Reject" }).click();
    await carol.getByText(`${names.bob} declined your friend request`).waitFor(WAIT);
    await alice.getByRole("navigation").getByRole("button", { name: /Contacts/ }).click();
    await alice.getByRole("list", { name: "Friend requests" }).getByText(names.carol).waitFor(WAIT);
    await alice.getByRole("button", { name: "Accept" }).click();
    await alice.getByRole("list", { name: "Friends" }).getByText(names.carol).waitFor(WAIT);

    await alice.getByRole("navigation").getByRole("button", { name: "New group" }).click();
    await alice.getByLabel("Group name").fill(`trio ${uniq}`);
    await alice.getByRole("checkbox", { name: names.bob }).check();
    await alice.getByRole("checkbox", { name: names.carol }).check();
    await alice.getByRole("button", { name: "Create group" }).click();
    await alice.getByRole("heading", { name: `trio ${uniq}` }).waitFor(WAIT);
    await carol.getByRole("navigation").getByRole("button", { name: "Chats" }).click();
    await openChat(carol, `trio ${uniq}`);
    await carol.getByRole("button", { name: "Members" }).click();
    await carol.getByRole("region", { name: "Members" }).getByText(names.bob).waitFor(WAIT);
    await send(carol, "hi everyone");
    await messages(alice).getByText("hi everyone").waitFor(WAIT);
    await bob.getByRole("navigation").getByRole("button", { name: "Chats" }).click();
    await chatButton(bob, `trio ${uniq}`).getByText("hi everyone").waitFor(WAIT);
  });

  step("removing a friend updates the other side", async () => {
    const { alice, carol } = pages;
    await carol.getByRole("navigation").getByRole("button", { name: /Contacts/ }).click();
    await carol.getByRole("list", { name: "Friends" }).getByText(names.alice).waitFor(WAIT);
    alice.once("dialog", (d) => d.accept());
    await alice.getByRole("navigation").getByRole("button", { name: /Contacts/ }).click();
    await alice.getByRole("list", { name: "Friends" }).locator("li").filter({ hasText: names.carol }).getByRole("button", { name: "Remove" }).click();
    await alice.getByText(`${names.carol} removed`).waitFor(WAIT);
    await carol.getByRole("list", { name: "Friends" }).getByText(names.alice).waitFor({ state: "detached", ...WAIT });
  });

  step("profile: nickname, description and avatar", async () => {
    const { carol } = pages;
    await carol.getByRole("navigation").getByRole("button", { name: "Profile" }).click();
    await carol.getByLabel("Description").fill("writes tests");
    await carol.getByRole("button", { name: "Save description" }).click();
    await carol.getByText("Description saved").waitFor(WAIT);
    names.carol2 = `carol2_${uniq}`;
    await carol.getByLabel("Nickname").fill(names.carol2);
    await carol.getByRole("button", { name: "Save nickname" }).click();
    await carol.getByText("Nickname saved").waitFor(WAIT);
    await carol.getByLabel("Choose an avatar image").setInputFiles({ name: "me.png", mimeType: "image/png", buffer: PNG });
    await carol.getByText("Avatar changed").waitFor(WAIT);
    await carol.getByLabel("Choose an avatar image").setInputFiles({ name: "huge.png", mimeType: "image/png", buffer: Buffer.concat([PNG, Buffer.alloc(MAX_AVATAR)]) });
    await carol.getByRole("alert").filter({ hasText: `avatar is larger than ${MAX_AVATAR} bytes` }).waitFor(WAIT);
    await carol.locator(".profile-avatar img.avatar").waitFor(WAIT);
    const phone = `139${String(Date.now()).slice(-8)}`;
    await carol.getByLabel("Phone number", { exact: true }).fill(phone);
    await carol.getByRole("button", { name: "Send code" }).click();
    await carol.getByText("Code sent.").waitFor(WAIT);
    await carol.getByLabel("Code", { exact: true }).fill(await server.smsCode(phone));
    await carol.getByRole("button", { name: "Save phone" }).click();
    await carol.getByText("Phone saved").waitFor(WAIT);
    const me = await server.call("user/get_user_info", { session_id: await session(carol) });
    assert.equal(me.user_info.nickname, names.carol2);
    assert.equal(me.user_info.description, "writes tests");
    assert.equal(me.user_info.phone, phone);
    // A nickname someone else has: the server refuses, in its words.
    const refused = await server.call("user/set_nickname", { session_id: await session(carol), nickname: names.bob });
    const expected = refused.errmsg || refused.errormsg;
    assert.ok(expected);
    await carol.getByLabel("Nickname").fill(names.bob);
    await carol.getByRole("button", { name: "Save nickname" }).click();
    await carol.getByRole("alert").filter({ hasText: expected }).waitFor(WAIT);
  });

  step("phone registration and login with codes from the development SMS sender", async () => {
    const page = await ctx.carol.newPage();
    pages.phone = page;
    await page.goto(`${server.base}/`);
    await page.getByRole("navigation").getByRole("button", { name: "Log out" }).click();
    const phone = `138${String(Date.now()).slice(-8)}`;
    await page.getByLabel("Phone number", { exact: true }).fill(phone);
    await page.getByRole("button", { name: "Send code" }).click();
    await page.getByText("written to the server's log").waitFor(WAIT);
    await page.getByLabel("Code", { exact: true }).fill(await server.smsCode(phone));
    await page.getByRole("button", { name: "Register with code" }).click();
    await page.getByText("Registered.").waitFor(WAIT);
    await sleep(1100); // the resend interval of this test server
    await page.getByRole("button", { name: "Send code" }).click();
    await page.getByText("written to the server's log").waitFor(WAIT);
    await page.getByLabel("Code", { exact: true }).fill(await server.smsCode(phone, 2));
    await page.getByRole("button", { name: "Log in with code" }).click();
    await page.getByRole("status").filter({ hasText: "connected" }).waitFor(WAIT);
  });

  step("an invalid session shows the server's message", async () => {
    const { alice } = pages;
    const expected = (await server.call("user/get_user_info", { session_id: "not-a-session" })).errormsg;
    assert.ok(expected);
    await alice.evaluate(() => localStorage.setItem("chatmesh.session", "not-a-session"));
    await alice.reload();
    await alice.getByTestId("login-error").filter({ hasText: expected }).waitFor(WAIT);
  });

  step("an expired session shows the server's message", async () => {
    const short = await startServer(["--session-ttl=3s"]);
    try {
      const context = await browser.newContext();
      const page = await context.newPage();
      pages.expiry = page;
      await page.goto(`${short.base}/`);
      await register(page, `dave_${uniq}`);
      await page.close();
      await sleep(4000); // unused for longer than the TTL
      const again = await context.newPage();
      pages.expiry = again;
      await again.goto(`${short.base}/`);
      await again.getByTestId("login-error").filter({ hasText: "invalid or expired" }).waitFor(WAIT);
      await context.close();
      delete pages.expiry;
    } finally {
      await short.stop();
    }
  });
});
