// How long a client takes to start from the page it was served (the model
// read from the DOM, docs/architecture.md "Connect without a join frame")
// against taking a join frame (the model built from it and the page morphed
// to it), in headless Chromium, for the corpus pages that read. Medians of
// 25 runs each, alternated. Run: cargo test --test js_client (writes the
// fixture and the served client), then node tests/browser/read_bench.mjs.
// The peer's table at 1,000 and 10,000 rows: cargo bench --bench wire_bytes
// -- --fixture /tmp/tables.json, then FIXTURE=/tmp/tables.json
// NAMES=table_1000,table_10000 node tests/browser/read_bench.mjs.
import { chromium } from 'playwright-core';
import { readFileSync } from 'fs';
import path from 'path';
import { fileURLToPath } from 'url';

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cases = JSON.parse(readFileSync(process.env.FIXTURE || path.join(ROOT, 'target/browser/corpus-frames.json'), 'utf8')).cases;
const CLIENT = readFileSync(path.join(ROOT, 'target/browser/client.served.js'), 'utf8');
const names = process.env.NAMES ? process.env.NAMES.split(',') : ['30_keyed_1000', '04_keyed_list', '01_scalar'];
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
const page = await browser.newPage();
await page.setContent('<!doctype html><html><body><div id="root"></div></body></html>');
await page.addScriptTag({ content: CLIENT });
for (const name of names) {
  const c = cases.find((x) => x.name === name);
  const r = await page.evaluate((c) => {
    const st = window.statetemplate, root = document.getElementById('root');
    const med = (a) => a.sort((x, y) => x - y)[a.length >> 1];
    const read = [], join = [];
    for (let i = 0; i < 25; i++) {
      root.innerHTML = c.html[0];
      let t = performance.now();
      const m = new st.Model();
      m.statics(JSON.parse(c.statics));
      m.root = m.read(root);
      read.push(performance.now() - t);
      if (!m.root) return { error: 'did not read' };
      root.innerHTML = c.html[0];
      t = performance.now();
      const j = new st.Model(), d = new st.Dom(root);
      for (const a of [].concat(j.apply(JSON.parse(c.frames[0])))) d.act(a, j);
      join.push(performance.now() - t);
    }
    return { read: med(read), join: med(join), page: c.html[0].length, statics: c.statics.length, frame: c.frames[0].length };
  }, c);
  console.log(`${name}: page ${r.page} B; from the page: statics ${r.statics} B, read ${r.read?.toFixed(2)} ms; join frame ${r.frame} B, applied ${r.join?.toFixed(2)} ms${r.error ? ' ' + r.error : ''}`);
}
await browser.close();
