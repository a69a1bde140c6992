// Drives Debian's chromium (playwright-core, no browser download) for tests/browser.rs.
//
// Protocol: argv[2] is JSON {url, identity, password, tabs, chromium}, or {url, token, tabs,
// chromium} to sign in with a device token. The script opens `tabs` tabs of the page signed in
// through the URL fragment and prints JSON lines on stdout:
//   {"event":"ready", "tabs":N, "urls":[...]}            every tab shows "connected"
//   {"event":"seen", "tab":i, "id", "arrived", "latency_ms", "since_send_ms", "count",
//    "ids", "call_id", "call_ticket", "state"}           per tab, for each "expect"
//   {"event":"done", "id"}                                after the "seen" lines of one "expect"
//   {"event":"console"|"pageerror", "tab":i, "type", "text"}  anything the page logged
//   {"event":"error", "message"}                          the script itself failed
// It reads JSON lines on stdin:
//   {"cmd":"expect", "id", "custody_at", "sent_at", "timeout_ms", "settle_ms"}
//       waits until message `id` is shown in every tab (or timeout_ms), then settle_ms more
//       (so a duplicate would have time to show up), and reports what each tab shows;
//   {"cmd":"quit"}.
// Times are Unix milliseconds on this machine's clock (the Rust test runs on the same one);
// "arrived" is the page's own Date.now() when it parsed the event.

import { chromium } from 'playwright-core';
import readline from 'node:readline';

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const cfg = JSON.parse(process.argv[2] ?? '{}');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser;
async function main() {
  browser = await chromium.launch({
    executablePath: cfg.chromium || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking'],
  });
  const context = await browser.newContext();
  const pages = [];
  const frag = cfg.token ? '#token=' + encodeURIComponent(cfg.token)
    : '#identity=' + encodeURIComponent(cfg.identity) + '&password=' + encodeURIComponent(cfg.password);
  for (let tab = 0; tab < (cfg.tabs ?? 2); tab++) {
    const page = await context.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') {
        out({ event: 'console', tab, type: m.type(), text: m.text() });
      }
    });
    page.on('pageerror', (e) => out({ event: 'pageerror', tab, text: String(e) }));
    await page.goto(cfg.url + frag);
    pages.push(page);
  }

  // Wait until every tab says "connected" (polled from here: page timers may be throttled in
  // a background tab, page.evaluate is not).
  const deadline = Date.now() + 20000;
  for (;;) {
    const states = await Promise.all(pages.map((p) =>
      p.evaluate(() => document.getElementById('status').dataset.state)));
    if (states.every((s) => s === 'connected')) break;
    if (Date.now() > deadline) throw new Error('tabs not connected within 20 s: ' + states.join(', '));
    await sleep(25);
  }
  out({ event: 'ready', tabs: pages.length, urls: pages.map((p) => p.url()) });

  const look = (page, id) => page.evaluate((id) => {
    const items = [...document.querySelectorAll('#recent li')];
    const mine = items.filter((li) => li.dataset.id === id);
    const call = document.getElementById('call');
    return {
      count: mine.length,
      arrived: mine.length ? Number(mine[0].dataset.arrived) : null,
      // oldest first (the page lists newest first)
      ids: items.map((li) => li.dataset.id).reverse(),
      call_id: call.classList.contains('hidden') ? null : call.dataset.id,
      call_ticket: document.getElementById('call-ticket').textContent,
      state: document.getElementById('status').dataset.state,
    };
  }, id);

  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const req = JSON.parse(line);
    if (req.cmd === 'quit') break;
    if (req.cmd !== 'expect') throw new Error('unknown command ' + line);
    const until = Date.now() + (req.timeout_ms ?? 10000);
    for (;;) {
      const views = await Promise.all(pages.map((p) => look(p, req.id)));
      if (views.every((v) => v.count > 0) || Date.now() > until) break;
      await sleep(10);
    }
    await sleep(req.settle_ms ?? 0);
    const views = await Promise.all(pages.map((p) => look(p, req.id)));
    views.forEach((v, tab) => out({
      event: 'seen', tab, id: req.id, ...v,
      latency_ms: v.arrived === null ? null : v.arrived - req.custody_at,
      since_send_ms: v.arrived === null ? null : v.arrived - req.sent_at,
    }));
    out({ event: 'done', id: req.id });
  }
}

try {
  await main();
} catch (e) {
  out({ event: 'error', message: String(e && e.stack || e) });
  process.exitCode = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
}
