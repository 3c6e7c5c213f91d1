// Renders a report page in headless Chromium (Debian's, driven by playwright-core), takes a
// screenshot of its plots (the page down to the last one), and prints what was drawn as
// JSON: each plot's size, its lines' boxes and its text labels' boxes, and any error the
// page raised.
//
// usage: node screenshot.mjs PLAYWRIGHT_CORE_DIR PAGE.html OUT.png
import { pathToFileURL } from 'node:url';

const [playwrightDir, page, out] = process.argv.slice(2);
const { chromium } = await import(pathToFileURL(`${playwrightDir}/index.mjs`).href);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const tab = await browser.newPage({ viewport: { width: 900, height: 1000 } });
  const errors = [];
  tab.on('pageerror', (error) => errors.push(String(error)));
  tab.on('console', (message) => message.type() === 'error' && errors.push(message.text()));
  await tab.goto(pathToFileURL(page).href);
  const plots = await tab.$$eval('svg', (svgs) => svgs.map((svg) => {
    const box = (element) => {
      const r = element.getBoundingClientRect();
      return { left: r.left, right: r.right, top: r.top, bottom: r.bottom };
    };
    // Data lines are the thick ones; the axes and grid are drawn one pixel wide.
    const lines = [...svg.querySelectorAll('polyline')]
      .filter((line) => Number(line.getAttribute('stroke-width')) >= 2)
      .map(box);
    const texts = [...svg.querySelectorAll('text')].map((text) => ({ text: text.textContent, ...box(text) }));
    return { ...box(svg), lines, texts };
  }));
  const bottom = Math.max(0, ...plots.map((plot) => plot.bottom));
  await tab.screenshot({ path: out, clip: { x: 0, y: 0, width: 900, height: Math.ceil(bottom) + 16 } });
  console.log(JSON.stringify({ plots, errors }));
} finally {
  await browser.close();
}
