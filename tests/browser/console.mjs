// Drives Debian's chromium (playwright-core) for tests/it/console.rs: one page, commanded
// by JSON lines on stdin, each answered by one JSON line on stdout.
//
// argv[2] is JSON {chromium}. Commands:
//   {"cmd":"goto", "url"}                      -> {"ok":true, "status"}
//   {"cmd":"fill", "selector", "value"}        -> {"ok":true}
//   {"cmd":"click", "selector"}                -> {"ok":true}
//   {"cmd":"eval", "js"}                       -> {"ok":true, "value"}   (an expression)
//   {"cmd":"wait", "js", "timeout_ms"}         -> {"ok":true, "value", "waited_ms"} once the
//                                                 expression is truthy, else {"ok":false, "value"}
//   {"cmd":"screenshot", "path"}               -> {"ok":true}
//   {"cmd":"quit"}
// Anything the page logs as an error, and page errors, come as {"event":"console"|"pageerror"}
// lines before the next answer.

import { chromium } from 'playwright-core';
import readline from 'node:readline';

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const cfg = JSON.parse(process.argv[2] ?? '{}');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-background-networking'],
});
const context = await browser.newContext({ viewport: { width: 1500, height: 950 } });
const page = await context.newPage();
page.on('console', (m) => {
  if (m.type() === 'error') out({ event: 'console', text: m.text() });
});
page.on('pageerror', (e) => out({ event: 'pageerror', text: String(e) }));
// The operator says yes to the page's confirmations (e.g. purging a dead letter).
page.on('dialog', (d) => d.accept());

const evaluate = (js) => page.evaluate((src) => (0, eval)(src), js);

async function run(c) {
  switch (c.cmd) {
    case 'goto': {
      const r = await page.goto(c.url);
      return { ok: true, status: r ? r.status() : 0 };
    }
    case 'fill':
      await page.fill(c.selector, c.value);
      return { ok: true };
    case 'click':
      await page.click(c.selector);
      return { ok: true };
    case 'eval':
      return { ok: true, value: await evaluate(c.js) };
    case 'wait': {
      const start = Date.now();
      let value;
      for (;;) {
        try { value = await evaluate(c.js); } catch (e) { value = 'error: ' + e; }
        if (value) return { ok: true, value, waited_ms: Date.now() - start };
        if (Date.now() - start > (c.timeout_ms ?? 10000)) return { ok: false, value };
        await sleep(50);
      }
    }
    case 'screenshot':
      await page.screenshot({ path: c.path, fullPage: true });
      return { ok: true };
    default:
      return { ok: false, error: 'unknown command ' + c.cmd };
  }
}

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  const c = JSON.parse(line);
  if (c.cmd === 'quit') break;
  try {
    out(await run(c));
  } catch (e) {
    out({ ok: false, error: String(e) });
  }
}
await browser.close();
