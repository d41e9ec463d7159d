// Feeds the frames a Rust test wrote through the JS client's model and
// prints the HTML after every frame, as JSON, for the Rust side to compare
// with its reference applier (WireClient).
'use strict';
const fs = require('fs');
const path = require('path');
const { Model } = require(path.join(__dirname, '../../src/client/statetemplate.js'));

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = [];
for (const c of input.cases) {
  const m = new Model();
  const html = [];
  let error = null;
  try {
    for (const f of c.frames) {
      m.apply(JSON.parse(f));
      html.push(m.toHtml());
    }
  } catch (e) {
    error = String(e && e.stack || e);
  }
  out.push({ name: c.name, html, error, seq: m.seq });
}
process.stdout.write(JSON.stringify(out));
