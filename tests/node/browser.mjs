// A page in headless Chromium (Debian's, driven by playwright-core) exchanging messages with
// `ringws serve` over permessage-deflate, as a browser user would. The page is served from
// http://127.0.0.1:PAGE_PORT, the origin the server is told to allow; a page from another
// origin must be refused.
//
// With --cert and --key the page is served over https (from https://127.0.0.1:PAGE_PORT) and
// the WebSocket URL is wss://: Chromium must trust the certificate's CA on its own (the test
// puts it in the NSS database under $HOME).
//
// usage: node browser.mjs ws://HOST:PORT PAGE_PORT
//        node browser.mjs wss://HOST:PORT PAGE_PORT --cert CHAIN.pem --key KEY.pem
import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { once } from 'node:events';
import { chromium } from 'playwright-core';

const [wsUrl, pagePort] = [process.argv[2], Number(process.argv[3])];
const option = (name) => {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : undefined;
};
const tls = option('--cert') ? { cert: readFileSync(option('--cert')), key: readFileSync(option('--key')) } : null;
const pageUrl = `${tls ? 'https' : 'http'}://127.0.0.1:${pagePort}/`;

const page = `<!doctype html><meta charset="utf-8"><title>ringws browser test</title>
<script>
window.exchange = async (url) => {
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const inbox = [];
  let waiting = null;
  ws.onmessage = (event) => (waiting ? (waiting(event.data), (waiting = null)) : inbox.push(event.data));
  const next = () => (inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => (waiting = r)));
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('refused')); });
  const report = { extensions: ws.extensions, checks: [] };
  const json = JSON.stringify(Array.from({ length: 200 }, (_, i) => ({ symbol: 'ACME', price: 100 + i, note: 'Grüße 世界' })));
  for (let i = 0; i < 5; i++) {
    ws.send(json + i);
    report.checks.push(['json ' + i, (await next()) === json + i]);
  }
  const bytes = new Uint8Array(256 * 1024);
  crypto.getRandomValues(bytes.subarray(0, 65536));
  for (let i = 65536; i < bytes.length; i++) bytes[i] = i % 251;
  ws.send(bytes);
  const echoed = new Uint8Array(await next());
  report.checks.push(['256 KiB binary', echoed.length === bytes.length && echoed.every((b, i) => b === bytes[i])]);
  ws.send('');
  report.checks.push(['empty text', (await next()) === '']);
  const closed = new Promise((r) => (ws.onclose = (event) => r(event.code)));
  ws.close(4000, 'bye');
  report.closeCode = await closed;
  return report;
};
window.refused = (url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => resolve('opened');
  ws.onclose = (event) => resolve('closed ' + event.code);
});
</script><p>ringws</p>`;

const serve = (_, res) => res.end(page);
const server = tls ? https.createServer(tls, serve) : http.createServer(serve);
server.listen(pagePort, '127.0.0.1');
await once(server, 'listening');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const tab = await browser.newPage();
  await tab.goto(pageUrl);
  if (tls) {
    assert.equal(await tab.evaluate(() => window.isSecureContext), true, 'the page is not a secure context');
    console.log(`ok: ${pageUrl} loaded over https, trusted`);
  }
  const report = await tab.evaluate((url) => window.exchange(url), wsUrl + '/browser');
  assert.match(report.extensions, /permessage-deflate/, `Chromium did not negotiate compression: ${report.extensions}`);
  console.log(`ok: Chromium negotiated ${report.extensions}`);
  for (const [name, passed] of report.checks) {
    assert.ok(passed, `${name} came back different`);
    console.log(`ok: ${name} echoed over permessage-deflate`);
  }
  assert.equal(report.closeCode, 4000);
  console.log('ok: close 4000 answered');

  // Same page content, other origin: about:blank has an opaque origin, which is not allowed.
  const other = await browser.newPage();
  await other.setContent(page);
  const outcome = await other.evaluate((url) => window.refused(url), wsUrl + '/browser');
  assert.equal(outcome, 'closed 1006', `a page from another origin got: ${outcome}`);
  console.log('ok: a page from another origin is refused');
  console.log('browser: all scenarios passed');
} finally {
  await browser.close();
  server.close();
}
