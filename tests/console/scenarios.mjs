// Browser scenarios for the web console, in the system Chromium through
// playwright-core. Started by the e2e test `console::*`, which runs the
// collector and a real agent and performs the steps this script asks for
// on stdout ("STEP fill") before answering "OK" on stdin.
//
// Environment: CONSOLE_URL, CONSOLE_ACCOUNTS (JSON: name -> password),
// CHROMIUM (the browser), SCREENSHOTS (a folder), DIAG_TARGET (host:port
// the network diagnostic connects to), ENDPOINT (the agent's ID).
//
// Any failed expectation throws: the script exits non-zero and says why.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { chromium } from "playwright-core";

const base = process.env.CONSOLE_URL;
const accounts = JSON.parse(process.env.CONSOLE_ACCOUNTS);
const shots = process.env.SCREENSHOTS;
const endpoint = process.env.ENDPOINT;
const axeSource = fs.readFileSync(
  new URL("./node_modules/axe-core/axe.min.js", import.meta.url),
  "utf8",
);
fs.mkdirSync(shots, { recursive: true });

const input = readline.createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
async function step(name) {
  console.log(`STEP ${name}`);
  const { value } = await lines.next();
  assert.equal(value, "OK", `step ${name}`);
}

const checked = [];
const problems = [];
const report = { axe: checked, screenshots: [] };

function watch(page, who) {
  page.on("console", (m) => {
    // The refusals this script provokes on purpose (forged posts, a
    // viewer on the admin page, wrong and replayed codes) are the only
    // errors allowed.
    if (m.type() === "error" && !/status of (401|403|429)/.test(m.text())) {
      problems.push(`${who}: console error: ${m.text()} (${m.location().url})`);
    }
  });
  page.on("pageerror", (e) => problems.push(`${who}: script error: ${e.message}`));
}

/** axe-core on the page as it is: no serious or critical violation. */
async function axeCheck(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { resultTypes: ["violations"] }),
  );
  const bad = result.violations.filter((v) => ["serious", "critical"].includes(v.impact));
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(", ")}`),
    [],
    `axe on ${name}`,
  );
  checked.push(name);
}

/** Full-page screenshots at desktop and phone width. */
async function shoot(page, name) {
  const size = page.viewportSize();
  for (const [label, w, h] of [["desktop", 1280, 800], ["phone", 390, 844]]) {
    await page.setViewportSize({ width: w, height: h });
    const file = path.join(shots, `${name}-${label}.png`);
    await page.screenshot({ path: file, fullPage: true });
    report.screenshots.push(file);
  }
  await page.setViewportSize(size);
}

async function signIn(page, name, password = accounts[name]) {
  await page.goto(`${base}/login`);
  await page.fill("#name", name);
  await page.fill("#password", password);
  await page.click("button[type=submit]");
}

/** Presses Tab until the focused element matches `test` (at most 80 times). */
async function tabTo(page, what, test) {
  for (let i = 0; i < 80; i++) {
    await page.keyboard.press("Tab");
    if (await page.evaluate(test)) return;
  }
  throw new Error(`keyboard: could not reach ${what} with Tab`);
}

/** RFC 6238 TOTP (SHA-1, 30 s, 6 digits), written here independently of
 * the collector's, so the two check each other. */
function base32(text) {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of text.replace(/=+$/, "")) {
    value = (value << 5) | abc.indexOf(ch);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 255);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}
function totp(secret, ms = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(ms / 30000)));
  const h = crypto.createHmac("sha1", base32(secret)).update(counter).digest();
  const o = h[19] & 15;
  const n = (((h[o] & 127) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3]) % 1000000;
  return String(n).padStart(6, "0");
}

async function signOut(page) {
  await page.click("header button:has-text('Sign out')");
  await page.waitForURL(/\/login/);
}

const path_ = (page) => new URL(page.url()).pathname + new URL(page.url()).search;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const context = (opts = {}) => browser.newContext({ viewport: { width: 1280, height: 800 }, ...opts });

try {
  // 1. The first admin: a one-time password that must be changed.
  const ctxA = await context();
  const ana = await ctxA.newPage();
  watch(ana, "ana");
  await ana.goto(`${base}/`);
  assert.match(path_(ana), /^\/login\?next=%2F$/, "signed out: to the login page");
  await axeCheck(ana, "login");
  await shoot(ana, "login");
  await signIn(ana, "ana");
  await ana.waitForURL(/\/account\/password/);
  assert.match(await ana.textContent("main"), /one-time password/);
  await axeCheck(ana, "password");
  await shoot(ana, "password");
  await ana.goto(`${base}/`);
  assert.match(path_(ana), /^\/account\/password/, "nothing else until the password is changed");
  await ana.fill("#current", accounts.ana);
  accounts.ana = "a long new password for ana";
  await ana.fill("#new", accounts.ana);
  await ana.fill("#repeat", accounts.ana);
  await ana.click("main button[type=submit]");
  await ana.waitForURL(`${base}/`);

  // Two-step sign-in: enrolled from the account page with the app's code.
  await ana.goto(`${base}/account/totp`);
  await ana.click("main button:has-text('Set up two-step sign-in')");
  assert.ok(await ana.locator(".qr svg").count() > 0, "a QR code to scan");
  const secret = (await ana.textContent("#totp-secret")).trim();
  await axeCheck(ana, "two-step enrollment");
  await shoot(ana, "totp-enroll");
  const enrolledWith = totp(secret);
  await ana.fill("#code", enrolledWith);
  await ana.click("main button:has-text('Turn on')");
  const recovery = await ana.locator("#recovery code").allTextContents();
  assert.equal(recovery.length, 10, "ten recovery codes, shown once");
  // Signing in now asks for the code after the password.
  await signOut(ana);
  await signIn(ana, "ana");
  await ana.waitForURL(/\/login\/totp/);
  await axeCheck(ana, "second factor");
  await ana.goto(`${base}/`);
  assert.match(path_(ana), /^\/login\/totp/, "nothing else before the code");
  await ana.fill("#code", enrolledWith);
  await ana.click("main button[type=submit]");
  assert.match(await ana.textContent("#login-error"), /used already/, "a code works once");
  await ana.fill("#code", recovery[0]);
  await ana.click("main button[type=submit]");
  await ana.waitForURL(`${base}/`);
  await signOut(ana);
  await signIn(ana, "ana");
  await ana.fill("#code", recovery[0]);
  await ana.click("main button[type=submit]");
  assert.match(await ana.textContent("#login-error"), /Wrong code/, "a recovery code works once");
  // A fresh code from the next time step signs in.
  const wait = 30000 - (Date.now() % 30000) + 500;
  await ana.waitForTimeout(wait);
  await ana.fill("#code", totp(secret));
  await ana.click("main button[type=submit]");
  await ana.waitForURL(`${base}/`);
  report.totp = "enrolled; replay and reused recovery code refused; recovery code and fresh code accepted";

  // 2. A real fault reaches the open queue live, without a reload.
  await ana.waitForFunction(() => document.documentElement.classList.contains("js"));
  await ana.waitForTimeout(500);
  const marker = await ana.evaluate(() => (window.__sameDocument = 1));
  await step("fill");
  const t0 = Date.now();
  const row = ana.locator("#queue tr", { hasText: "Disk nearly full" });
  await row.first().waitFor({ timeout: 45000 });
  report.raise_to_queue_ms = Date.now() - t0;
  assert.equal(await ana.evaluate(() => window.__sameDocument), marker, "the queue updated in place");
  const href = await row.first().locator("a[href^='/tickets/']").getAttribute("href");
  await axeCheck(ana, "queue");
  await shoot(ana, "queue");

  // 3. The fault clears: the ticket resolves itself and leaves the open queue, live.
  await step("empty");
  await ana.locator(`#queue a[href='${href}']`).waitFor({ state: "detached", timeout: 45000 });
  assert.equal(await ana.evaluate(() => window.__sameDocument), marker, "still the same page");
  await ana.goto(`${base}${href}`);
  assert.match(await ana.textContent("#status"), /resolved/);
  assert.match(await ana.textContent(".timeline"), /auto resolved/);
  await axeCheck(ana, "ticket (resolved)");

  // 4. Raised again: an open ticket for the specialist.
  await ana.goto(`${base}/`);
  await step("fill");
  const row2 = ana.locator("#queue tr", { hasText: "Disk nearly full" }).first();
  await row2.waitFor({ timeout: 45000 });
  const href2 = await row2.locator("a[href^='/tickets/']").getAttribute("href");
  await ana.goto(`${base}${href2}`);
  await axeCheck(ana, "ticket");
  await shoot(ana, "ticket");

  // 5. Keyboard only: login -> queue -> ticket -> assign -> resolve.
  const ctxS = await context();
  const sam = await ctxS.newPage();
  watch(sam, "sam");
  await sam.goto(`${base}/`);
  await sam.waitForURL(/\/login/);
  assert.equal(await sam.evaluate(() => document.activeElement.id), "name", "the name field has focus");
  await sam.keyboard.type("sam");
  await sam.keyboard.press("Tab");
  await sam.keyboard.type(accounts.sam);
  await sam.keyboard.press("Enter");
  await sam.waitForURL(`${base}/`);
  await tabTo(sam, "the ticket", `document.activeElement.getAttribute("href") === "${href2}"`);
  await sam.keyboard.press("Enter");
  await sam.waitForURL(`${base}${href2}`);
  await tabTo(sam, "the Assign button", `document.activeElement.textContent === "Assign"`);
  await sam.keyboard.press("Enter");
  await sam.waitForLoadState("load");
  await sam.locator("#assignee", { hasText: "sam" }).waitFor();
  await tabTo(sam, "the resolution", `document.activeElement.id === "resolve-notes"`);
  await sam.keyboard.type("Cleared the spool folder");
  await sam.keyboard.press("Enter");
  await sam.locator("#status", { hasText: "resolved" }).waitFor();
  assert.match(await sam.textContent(".timeline"), /Cleared the spool folder/);
  report.keyboard_walk = "login, queue, ticket, assign, resolve";

  // 6. A live network diagnostic from the endpoint page.
  await sam.goto(`${base}/endpoints/${endpoint}`);
  await axeCheck(sam, "endpoint");
  await sam.selectOption("#kind", "network");
  assert.equal(await sam.isVisible("input[name=root]"), false, "only the kind's parameters show");
  await sam.fill("input[name=names]", "localhost");
  await sam.fill("input[name=targets]", process.env.DIAG_TARGET);
  const d0 = Date.now();
  await sam.click("form.diag button[type=submit]");
  const done = sam.locator(".run-result");
  await done.waitFor({ timeout: 30000 });
  report.diagnostic_ms = Date.now() - d0;
  assert.match(await done.textContent(), /network on .*: done in/);
  const streamed = await sam.locator(".run > .progress li").count();
  assert.ok(streamed > 0, "progress lines streamed before the result");
  report.diagnostic_progress_lines = streamed;
  assert.match(await done.locator("pre").textContent(), /localhost/);
  await axeCheck(sam, "endpoint (diagnostic result)");
  await shoot(sam, "endpoint");

  // 7. A form posted without its CSRF token, or with a wrong one, is refused.
  const id = href2.split("/").pop();
  const noToken = await sam.evaluate(async (id) => {
    const r = await fetch(`/tickets/${id}/act`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "action=comment&text=forged",
    });
    return r.status;
  }, id);
  assert.equal(noToken, 403, "a post without a CSRF token");
  const wrongToken = await sam.evaluate(async (id) => {
    const r = await fetch(`/tickets/${id}/act`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "action=comment&text=forged&csrf=" + "0".repeat(64),
    });
    return r.status;
  }, id);
  assert.equal(wrongToken, 403, "a post with a wrong CSRF token");

  // 8. The fleet, the audit log (the specialist's actions, by name) and admin.
  await ana.goto(`${base}/fleet`);
  assert.match(await ana.textContent("table.fleet"), new RegExp(endpoint));
  await axeCheck(ana, "fleet");
  await shoot(ana, "fleet");
  await ana.goto(`${base}/audit?who=sam`);
  const audit = await ana.textContent("table.audit");
  for (const kind of ["ticket.assign", "ticket.resolve", "network", "console.login"]) {
    assert.ok(audit.includes(kind), `audit has ${kind} by sam`);
  }
  assert.ok(!audit.includes("forged"), "refused posts did nothing");
  await axeCheck(ana, "audit");
  await shoot(ana, "audit");
  await ana.goto(`${base}/admin`);
  await ana.fill("section input[name=name]", "newbie");
  await ana.click("section button[type=submit]");
  const issued = await ana.textContent("#issued-password");
  assert.match(issued, /^[A-Za-z0-9-]{20,}$/);
  await axeCheck(ana, "admin");
  await shoot(ana, "admin");

  // 9. A viewer sees no action buttons, and a post is refused anyway.
  const ctxV = await context();
  const vic = await ctxV.newPage();
  watch(vic, "vic");
  await signIn(vic, "vic");
  await vic.waitForURL(`${base}/`);
  await vic.goto(`${base}${href2}`);
  assert.equal(await vic.locator("form[action$='/act']").count(), 0, "no actions for a viewer");
  assert.equal(await vic.locator("form.diag").count(), 0, "no diagnostics for a viewer");
  const viewerPost = await vic.evaluate(async (id) => {
    const csrf = document.querySelector("input[name=csrf]").value;
    const r = await fetch(`/tickets/${id}/act`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: `action=comment&text=viewer&csrf=${csrf}`,
    });
    return [r.status, await r.text()];
  }, id);
  assert.equal(viewerPost[0], 403, "a viewer's post");
  assert.match(viewerPost[1], /has role viewer; this needs specialist/);
  const admin = await vic.goto(`${base}/admin`);
  assert.equal(admin.status(), 403, "a viewer on the admin page");

  // 10. Reading works with JavaScript off.
  const ctxN = await context({ javaScriptEnabled: false });
  const nojs = await ctxN.newPage();
  await signIn(nojs, "vic");
  await nojs.waitForURL(`${base}/`);
  await nojs.goto(`${base}/?status=all`);
  assert.ok(await nojs.locator(`#queue a[href='${href2}']`).count() > 0, "the queue without JavaScript");
  assert.ok(await nojs.isVisible(".noscript-only"), "says live updates need JavaScript");
  await nojs.goto(`${base}/endpoints/${endpoint}`);
  assert.ok(await nojs.locator("svg.chart").count() > 0, "history charts without JavaScript");
  await shoot(nojs, "endpoint-nojs");

  // 11. A session that is gone sends to the login page and then back.
  await ctxS.clearCookies();
  await sam.goto(`${base}${href2}`);
  await sam.waitForURL(/\/login\?next=/);
  await sam.fill("#name", "sam");
  await sam.fill("#password", accounts.sam);
  await sam.click("button[type=submit]");
  await sam.waitForURL(`${base}${href2}`);

  // 12. Failed sign-ins lock the account (and this address) out. Last,
  // since every later sign-in from here would wait too.
  const ctxL = await context();
  const lock = await ctxL.newPage();
  // Earlier refusals (the second-factor checks above) count for this
  // address too, so the lockout may come sooner than the account's limit.
  await signIn(lock, "lock", "not the password at all");
  assert.match(await lock.textContent("#login-error"), /Wrong name or password|Too many/);
  for (let i = 1; i < Number(process.env.LOGIN_ATTEMPTS); i++) {
    await signIn(lock, "lock", "not the password at all");
    assert.match(await lock.textContent("#login-error"), /Wrong name or password|Too many failed sign-ins/);
  }
  await signIn(lock, "lock");
  assert.match(await lock.textContent("#login-error"), /Too many failed sign-ins/, "the right password, locked out");
  await axeCheck(lock, "login (locked out)");

  // Nothing on any page broke the Content-Security-Policy or threw.
  assert.deepEqual(problems, [], "browser console");
  console.log(`RESULT ${JSON.stringify(report)}`);
} catch (e) {
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
  // The open stdin would keep the script alive.
  input.close();
  process.stdin.destroy();
}
