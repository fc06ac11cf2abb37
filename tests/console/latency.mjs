// For `vitals-console-bench --browser`: signs in, opens the queue in the
// system Chromium and prints "DOM <ms since the epoch>" each time the
// queue's live part is replaced (a ticket change arrived over the event
// stream and htmx fetched the new rows). Prints "READY" once listening;
// runs until killed.
import { chromium } from "playwright-core";

const base = process.env.CONSOLE_URL;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage();
await page.goto(`${base}/login`);
await page.fill("#name", process.env.ACCOUNT);
await page.fill("#password", process.env.PASSWORD);
await page.click("button[type=submit]");
await page.waitForURL(`${base}/`);
await page.exposeFunction("reportDom", (t) => console.log(`DOM ${t}`));
await page.evaluate(() => {
  const queue = document.getElementById("queue");
  // eslint-disable-next-line no-undef
  new MutationObserver(() => reportDom(Date.now())).observe(queue, { childList: true });
});
// Let the event stream connect.
await page.waitForTimeout(1000);
console.log("READY");
await new Promise(() => {});
