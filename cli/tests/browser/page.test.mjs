// Headless Chromium test of the `edgethumb serve` page, run by tests/serve_e2e.rs.
//
// Starts `edgethumb serve --demo` on a fresh temporary folder and a free port, loads `/`,
// picks an original, waits for the thumbnail grid, clicks a thumbnail and types parameters,
// and checks that the images the browser decoded have the expected natural size (so the
// whole chain ran: page → HTTP → edge handler → encoder → browser decoder).
//
// Environment:
//   EDGETHUMB_BIN         the edgethumb binary (required)
//   CHROMIUM              browser executable (default /usr/bin/chromium)
//   EDGETHUMB_SCREENSHOT  if set, write a screenshot of the page there (docs/serve.png)
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const BIN = process.env.EDGETHUMB_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = process.env.EDGETHUMB_SCREENSHOT || "";
const STEP_TIMEOUT_MS = 60_000;

function fail(message) {
  throw new Error(message);
}

function startServe(dir) {
  const child = spawn(BIN, ["serve", "--demo", "--addr", "127.0.0.1:0", dir], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const url = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("serve printed no URL within 60 s")), STEP_TIMEOUT_MS);
    child.once("exit", (code) => reject(new Error(`serve exited early with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const match = line.match(/listening on (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
  return { child, url };
}

async function stopServe(child) {
  if (child.exitCode !== null) return child.exitCode;
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal)));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 40_000);
  const code = await exited;
  clearTimeout(timer);
  return code;
}

async function naturalSize(page, selector) {
  return page.$eval(selector, (img) => [img.naturalWidth, img.naturalHeight]);
}

async function main() {
  if (!BIN) fail("EDGETHUMB_BIN is not set");
  const dir = mkdtempSync(join(tmpdir(), "edgethumb-browser-"));
  const profile = mkdtempSync(join(tmpdir(), "edgethumb-chromium-"));
  const { child, url: urlPromise } = startServe(dir);
  let browser;
  try {
    const base = await urlPromise;
    // A fresh profile (persistent context = Chromium's --user-data-dir) and no background
    // traffic: the machine reaches only package registries, and Chromium's own requests
    // would stall or spam otherwise.
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ],
      viewport: { width: 1280, height: 900 },
      timeout: STEP_TIMEOUT_MS,
    });
    const page = browser.pages()[0] || (await browser.newPage());
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    const pageErrors = [];
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    await page.goto(base);

    // The originals list: the five demo images.
    await page.waitForSelector('#originals button[data-key="sunset.jpg"]');
    const keys = await page.$$eval("#originals button", (bs) => bs.map((b) => b.dataset.key));
    for (const key of ["sunset.jpg", "shapes.png", "page.jpg", "zoneplate.png", "tower.jpg"]) {
      if (!keys.includes(key)) fail(`original ${key} not listed: ${keys}`);
    }

    // Choose the 1600×1000 sunset; every grid cell renders with its expected size.
    await page.click('#originals button[data-key="sunset.jpg"]');
    await page.waitForFunction(() => {
      const cells = [...document.querySelectorAll("#grid .cell")];
      return cells.length > 0 && cells.every((c) => c.dataset.width);
    });
    const cells = await page.$$eval("#grid .cell", (cs) =>
      cs.map((c) => ({ params: c.dataset.params, w: +c.dataset.width, h: +c.dataset.height, bytes: +c.dataset.bytes })));
    const expected = { "160w.jpg": [160, 100], "320w.webp": [320, 200], "320w.avif": [320, 200], "640w.jpg": [640, 400], "200w_200h_1e_1c.webp": [200, 200] };
    for (const [params, [w, h]] of Object.entries(expected)) {
      const cell = cells.find((c) => c.params === params) || fail(`no grid cell ${params}`);
      if (cell.w !== w || cell.h !== h) fail(`${params}: ${cell.w}×${cell.h}, expected ${w}×${h}`);
      if (!(cell.bytes > 100)) fail(`${params}: implausible size ${cell.bytes} bytes`);
    }

    // Click a thumbnail: the result box shows it, decoded at its natural size.
    await page.click('#grid .cell[data-params="320w.webp"]');
    await page.waitForSelector('#result[data-state="done"] #result-img');
    const clicked = await naturalSize(page, "#result-img");
    if (clicked[0] !== 320 || clicked[1] !== 200) fail(`clicked thumbnail is ${clicked}, expected 320,200`);

    // Type parameters: a cover crop to an exact square, as PNG.
    await page.fill("#params", "300w_300h_1e_1c.png");
    await page.press("#params", "Enter");
    await page.waitForFunction(() => {
      const img = document.querySelector('#result[data-state="done"] #result-img');
      return img && img.alt === "300w_300h_1e_1c.png";
    });
    const typed = await naturalSize(page, "#result-img");
    if (typed[0] !== 300 || typed[1] !== 300) fail(`typed params gave ${typed}, expected 300,300`);

    // Bad parameters: the edge's 400 with its reason is shown, not an image.
    await page.fill("#params", "300x");
    await page.press("#params", "Enter");
    await page.waitForSelector('#result[data-state="error"]');
    const errorText = await page.textContent("#result");
    if (!errorText.includes("400")) fail(`bad params did not show a 400: ${errorText}`);

    // The counters panel summarises /metrics: the grid's misses are counted by then.
    await page.evaluate(() => showCounters());
    await page.waitForFunction(() => /misses 2xx: [1-9]/.test(document.getElementById("counters").textContent));

    if (SCREENSHOT) {
      // For the README: let the worker catch up (bounded), so the grid shows hits (the
      // worker's variants) beside misses, then show a typed crop at the top of the page.
      for (const deadline = Date.now() + STEP_TIMEOUT_MS; Date.now() < deadline; ) {
        const path = await page.evaluate(async () =>
          (await fetch("/sunset.jpg@320w.jpg", { cache: "no-store" })).headers.get("x-edgethumb"));
        if (path === "hit") break;
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
      await page.click('#originals button[data-key="sunset.jpg"]');
      await page.fill("#params", "480w_300h_1e_1c.webp");
      await page.press("#params", "Enter");
      await page.waitForFunction(() => {
        const cells = [...document.querySelectorAll("#grid .cell")];
        const img = document.querySelector('#result[data-state="done"] #result-img');
        return img && img.alt === "480w_300h_1e_1c.webp" && cells.every((c) => c.dataset.width);
      });
      await page.setViewportSize({ width: 1280, height: 1040 });
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: SCREENSHOT, fullPage: false });
      console.log(`screenshot written to ${SCREENSHOT}`);
    }
    if (pageErrors.length) fail(`JavaScript errors on the page: ${pageErrors.join("; ")}`);
    console.log(`browser test passed (${cells.length} thumbnails)`);
  } finally {
    if (browser) await browser.close();
    const code = await stopServe(child);
    rmSync(profile, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
    if (code !== 0) {
      console.error(`serve exited with ${code} after SIGTERM`);
      process.exitCode = 1;
    }
  }
}

main().catch((error) => {
  console.error(`browser test FAILED: ${error.stack || error}`);
  process.exit(1);
});
