// Single sign-on scenarios for the web console against a real OpenID
// Connect provider (oidc-provider.mjs), in the system Chromium. Started by
// the e2e test `console::*sso*`. Environment: CONSOLE_URL, CHROMIUM,
// SCREENSHOTS, ADMIN_PASSWORD (the break-glass account "admin"),
// SAM_PASSWORD (a local account that is not break-glass).
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const base = process.env.CONSOLE_URL;
const shots = process.env.SCREENSHOTS;
fs.mkdirSync(shots, { recursive: true });
const axeSource = fs.readFileSync(new URL("./node_modules/axe-core/axe.min.js", import.meta.url), "utf8");
const report = {};

async function axeCheck(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => ["serious", "critical"].includes(v.impact));
  assert.deepEqual(bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`), [], `axe on ${name}`);
}

/** Through the provider's own login and consent pages as `who`. */
async function ssoSignIn(page, who) {
  await page.goto(`${base}/login`);
  await page.click("#sso");
  await page.waitForURL(/\/interaction\//);
  await page.fill("input[name=login]", who);
  await page.fill("input[name=password]", "anything");
  await page.click("button[type=submit]");
  // The consent page, the first time this person meets this client.
  const consent = page.locator("button[type=submit]", { hasText: /Continue|Authorize|Allow/i });
  await page.waitForLoadState("load");
  if (!page.url().startsWith(base) && (await consent.count()) > 0) {
    await consent.first().click();
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  // A specialist of the dispatch centre, from the city's directory.
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await page.goto(`${base}/login`);
  assert.match(await page.textContent("#sso"), /City account/);
  await axeCheck(page, "login with single sign-on");
  await page.screenshot({ path: path.join(shots, "login-sso-desktop.png"), fullPage: true });
  const t0 = Date.now();
  await ssoSignIn(page, "dana");
  await page.waitForURL(`${base}/`);
  report.sso_sign_in_ms = Date.now() - t0;
  assert.match(await page.textContent("header .me"), /dana\s+specialist/);
  await page.goto(`${base}/audit?who=dana`);
  const audit = await page.textContent("table.audit");
  assert.ok(audit.includes("console.login") && audit.includes("factor=oidc"), `audit: ${audit}`);
  // Its password is the city's, not the console's.
  const pw = await page.goto(`${base}/account/password`);
  assert.equal(pw.status(), 400);
  assert.match(await page.textContent("main"), /managed there/);

  // An admin by group.
  const ctxO = await browser.newContext();
  const olga = await ctxO.newPage();
  await ssoSignIn(olga, "olga");
  await olga.waitForURL(`${base}/`);
  assert.match(await olga.textContent("header .me"), /olga\s+admin/);

  // Someone the directory gives no Vitals role: refused, with the reason.
  const ctxN = await browser.newContext();
  const nobody = await ctxN.newPage();
  await ssoSignIn(nobody, "nobody");
  await nobody.waitForURL(/\/oidc\/callback/);
  assert.match(await nobody.textContent("main"), /nobody has no role in Vitals/);
  assert.match(await nobody.textContent("main"), /cafeteria/);
  const after = await nobody.goto(`${base}/`);
  assert.match(nobody.url(), /\/login/, "still signed out");

  // An answer that this browser did not ask for.
  const forged = await nobody.goto(`${base}/oidc/callback?code=stolen&state=madeup`);
  assert.equal(forged.status(), 400);
  assert.match(await nobody.textContent("main"), /not started in this browser/);

  // Local sign-in: only the break-glass account.
  const ctxL = await browser.newContext();
  const local = await ctxL.newPage();
  await local.goto(`${base}/login`);
  await local.fill("#name", "sam");
  await local.fill("#password", process.env.SAM_PASSWORD);
  await local.click("form[action='/login'] button[type=submit]");
  assert.match(await local.textContent("#login-error"), /Sign in with "City account" instead/);
  await local.fill("#name", "admin");
  await local.fill("#password", process.env.ADMIN_PASSWORD);
  await local.click("form[action='/login'] button[type=submit]");
  await local.waitForURL(`${base}/`);
  assert.match(await local.textContent("header .me"), /admin\s+admin/);
  console.log(`RESULT ${JSON.stringify(report)}`);
} catch (e) {
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
}
