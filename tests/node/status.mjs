// The status page of `ringws serve` in headless Chromium at a phone's size: it must fill in
// from /metrics, fit the screen without sideways scrolling, and be captured as a screenshot.
//
// usage: node status.mjs http://HOST:PORT/ SCREENSHOT.png
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const [url, screenshot] = [process.argv[2], process.argv[3]];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true });
  const tab = await phone.newPage();
  await tab.goto(url);
  // Two reads of /metrics: the second gives rates.
  await tab.waitForFunction(() => document.getElementById('state').textContent.startsWith('updated'));
  await tab.waitForTimeout(2500);
  const seen = await tab.evaluate(() => ({
    connections: document.getElementById('connections').textContent,
    inRate: document.getElementById('in-rate').textContent,
    shards: document.querySelectorAll('#shards tr').length,
    closes: document.getElementById('closes').textContent,
    scrollWidth: document.scrollingElement.scrollWidth,
    width: window.innerWidth,
  }));
  assert.ok(seen.scrollWidth <= seen.width, `the page scrolls sideways on a phone: ${seen.scrollWidth} > ${seen.width}`);
  await tab.screenshot({ path: screenshot, fullPage: true });
  console.log('status: ' + JSON.stringify(seen));
} finally {
  await browser.close();
}
