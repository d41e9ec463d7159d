// Real-browser tests: every example in headless Debian Chromium, driven by
// playwright-core (no browser download). Run by scripts/test.sh after
// `cargo build --examples`; screenshots go to target/browser/.
//
// After every step the page's DOM must equal a fresh full render of the
// session's current data (the server's debug oracle route), compared in the
// browser after both are parsed the same way.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SHOTS = path.join(ROOT, 'target/browser');
const KEY = randomBytes(32).toString('base64url');
const only = process.argv.slice(2);
mkdirSync(SHOTS, { recursive: true });

let failures = 0;
let checks = 0;

function assert(cond, msg) {
  if (!cond) throw new Error('assertion failed: ' + msg);
}

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const p = s.address().port;
  await new Promise((r) => s.close(r));
  return p;
}

async function startServer(name, port) {
  const bin = path.join(ROOT, 'target/debug/examples', name);
  const p = spawn(bin, [], {
    env: { ...process.env, ADDR: `127.0.0.1:${port}`, STATETEMPLATE_DEBUG: '1', STATETEMPLATE_KEYS: KEY },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${name} did not start`)), 20000);
    let buf = '';
    p.stdout.on('data', (d) => {
      buf += d;
      if (buf.includes('listening on')) { clearTimeout(t); resolve(); }
    });
    p.on('exit', (code) => { clearTimeout(t); reject(new Error(`${name} exited with ${code}`)); });
  });
  p.removeAllListeners('exit');
  return p;
}

async function stopServer(p) {
  if (p.exitCode !== null) return;
  const done = new Promise((r) => p.on('exit', r));
  p.kill('SIGKILL');
  await done;
}

/** Waits for `fn` in the page, surviving reloads. */
async function until(page, fn, arg, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      await page.waitForFunction(fn, arg, { timeout: Math.min(3000, end - Date.now()) });
      return;
    } catch (e) {
      last = e;
      await page.waitForTimeout(50);
    }
  }
  throw new Error('timed out waiting: ' + (last && last.message));
}

async function connected(page) {
  await until(page, () => {
    const st = window.statetemplate;
    return document.documentElement.classList.contains('st-connected') && st && st.clients[0] && st.clients[0].model.root;
  });
}

/** The DOM equals a fresh full render of the session's data (same seq). */
async function checkFresh(page, base, label) {
  checks++;
  for (let attempt = 0; attempt < 200; attempt++) {
    const c = await page.evaluate(() => {
      const cl = window.statetemplate.clients[0];
      return { sid: cl.sid, token: cl.token, seq: cl.model.seq };
    });
    const r = await fetch(`${base}/statetemplate/debug/fresh?sid=${c.sid}&token=${encodeURIComponent(c.token)}`);
    assert(r.ok, `${label}: oracle answered ${r.status}`);
    const fresh = await r.json();
    const res = await page.evaluate((fresh) => {
      const cl = window.statetemplate.clients[0];
      if (cl.model.seq !== fresh.seq) return { wait: true };
      const d = document.createElement('div');
      d.innerHTML = fresh.html;
      return { same: d.innerHTML === cl.el.innerHTML, dom: cl.el.innerHTML, fresh: d.innerHTML };
    }, fresh);
    if (res.wait) { await page.waitForTimeout(20); continue; }
    if (!res.same) {
      let i = 0;
      while (i < res.dom.length && res.dom[i] === res.fresh[i]) i++;
      throw new Error(`${label}: DOM differs from a fresh render at ${i}:\n  dom:   ${res.dom.slice(Math.max(0, i - 80), i + 120)}\n  fresh: ${res.fresh.slice(Math.max(0, i - 80), i + 120)}`);
    }
    return;
  }
  throw new Error(`${label}: the client never reached the server's seq`);
}

async function text(page, sel) {
  return (await page.textContent(sel)).trim();
}

/** Typing while the server pushes keeps focus, caret and the typed text. */
async function typingKeepsFocus(page, base, name) {
  await page.click('#note');
  const before = await page.evaluate(() => window.statetemplate.clients[0].model.seq);
  await page.keyboard.type('hello, live world', { delay: 100 });
  const state = await page.evaluate(() => ({
    id: document.activeElement && document.activeElement.id,
    value: document.getElementById('note').value,
    caret: document.getElementById('note').selectionStart,
    seq: window.statetemplate.clients[0].model.seq,
  }));
  assert(state.id === 'note', `${name}: focus moved to ${state.id}`);
  assert(state.value === 'hello, live world', `${name}: typed text became ${JSON.stringify(state.value)}`);
  assert(state.caret === 'hello, live world'.length, `${name}: caret at ${state.caret}`);
  assert(state.seq >= before + 2, `${name}: the server pushed while typing (${before} -> ${state.seq})`);
  await until(page, () => document.getElementById('echo') ? document.getElementById('echo').textContent === 'hello, live world' : true);
  await checkFresh(page, base, `${name}: after typing`);
}

async function restartRecovers(server, name, port, page, base) {
  await stopServer(server);
  await until(page, () => document.documentElement.classList.contains('st-reconnecting'), undefined, 10000);
  await page.screenshot({ path: path.join(SHOTS, `${name}-reconnecting.png`) });
  const again = await startServer(name, port);
  await connected(page);
  await checkFresh(page, base, `${name}: after restart`);
  return again;
}

const examples = {
  async counter(ctx, base) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await checkFresh(page, base, 'counter: initial');
    await page.click('#inc');
    await page.click('#inc');
    await page.click('#dec');
    await page.click('#inc');
    await until(page, () => document.getElementById('count').textContent === '2');
    await checkFresh(page, base, 'counter: after clicks');
    // keydown with a key filter: ArrowUp sends the event, other keys do not.
    await page.click('#keys');
    await page.keyboard.press('a');
    await page.keyboard.press('ArrowDown');
    await page.keyboard.press('ArrowUp');
    await until(page, () => document.getElementById('count').textContent === '3');
    await page.waitForTimeout(200);
    assert((await text(page, '#count')) === '3', 'counter: only ArrowUp counted');
    await page.click('#dec');
    await until(page, () => document.getElementById('count').textContent === '2');
    await checkFresh(page, base, 'counter: after keys');
    await typingKeepsFocus(page, base, 'counter');
    const tab2 = await ctx.newPage();
    await tab2.goto(base);
    await connected(tab2);
    assert((await text(tab2, '#count')) === '2', 'counter: the second tab shares the session');
    await tab2.click('#inc');
    await until(page, () => document.getElementById('count').textContent === '3');
    await until(tab2, () => document.getElementById('count').textContent === '3');
    await checkFresh(page, base, 'counter: tab 1 after tab 2 clicked');
    await checkFresh(tab2, base, 'counter: tab 2');
    // A dropped connection resumes from the last seq: no join frame, and
    // frames pushed meanwhile (the clock) are replayed.
    const before = await page.evaluate(() => {
      const c = window.statetemplate.clients[0];
      const b = { hellos: c.hellos, joins: c.joins, seq: c.model.seq };
      c.ws.close();
      return b;
    });
    await until(page, (b) => window.statetemplate.clients[0].hellos === b.hellos + 1, before);
    await until(page, (b) => window.statetemplate.clients[0].model.seq > b.seq, before);
    const after = await page.evaluate(() => window.statetemplate.clients[0].joins);
    assert(after === before.joins, `counter: the reconnect resynced (${before.joins} -> ${after} joins) instead of resuming`);
    await checkFresh(page, base, 'counter: after a resumed reconnect');
    await page.screenshot({ path: path.join(SHOTS, 'counter.png') });
    return page;
  },

  async todos(ctx, base) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await checkFresh(page, base, 'todos: initial');
    await page.click('li[data-key="1"] input[type=checkbox]');
    await until(page, () => document.querySelector('li[data-key="1"]').className === 'done');
    await checkFresh(page, base, 'todos: toggled');
    await page.fill('#new', 'Fourth thing');
    await page.press('#new', 'Enter');
    await until(page, () => document.querySelectorAll('#list li').length === 4);
    assert((await page.inputValue('#new')) === '', 'todos: the form was reset');
    await checkFresh(page, base, 'todos: added');
    // Reorder: the moved row keeps its DOM node (a keyed move, not a re-render).
    await page.evaluate(() => { document.querySelector('li[data-key="4"]').__mark = 1; });
    await page.click('li[data-key="4"] button[title="move up"]');
    await until(page, () => [...document.querySelectorAll('#list li')].map((l) => l.dataset.key).join() === '1,2,4,3');
    assert(await page.evaluate(() => document.querySelector('li[data-key="4"]').__mark === 1), 'todos: moved row was re-created');
    await checkFresh(page, base, 'todos: reordered');
    await page.click('li[data-key="2"] button[title="remove"]');
    await until(page, () => [...document.querySelectorAll('#list li')].map((l) => l.dataset.key).join() === '1,4,3');
    await checkFresh(page, base, 'todos: removed');
    await typingKeepsFocus(page, base, 'todos');
    const tab2 = await ctx.newPage();
    await tab2.goto(base);
    await connected(tab2);
    await tab2.fill('#new', 'From tab two');
    await tab2.press('#new', 'Enter');
    await until(page, () => [...document.querySelectorAll('#list .text')].some((t) => t.textContent === 'From tab two'));
    await checkFresh(page, base, 'todos: tab 1 after tab 2 added');
    await checkFresh(tab2, base, 'todos: tab 2');
    await page.screenshot({ path: path.join(SHOTS, 'todos.png') });
    return page;
  },

  async dashboard(ctx, base) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    assert((await page.$$('#grid tbody tr')).length === 1000, 'dashboard: 1,000 rows');
    await checkFresh(page, base, 'dashboard: initial (live)');
    const u0 = Number(await text(page, '#updates'));
    await until(page, (u0) => Number(document.getElementById('updates').textContent) >= u0 + 3, u0);
    await checkFresh(page, base, 'dashboard: after pushes');
    await typingKeepsFocus(page, base, 'dashboard');
    await page.click('#pause');
    await until(page, () => document.getElementById('status').textContent === 'paused');
    await checkFresh(page, base, 'dashboard: paused');
    const tab2 = await ctx.newPage();
    await tab2.goto(base);
    await connected(tab2);
    await tab2.click('#pause');
    await until(page, () => document.getElementById('status').textContent === 'live');
    await checkFresh(page, base, 'dashboard: tab 1 after tab 2 resumed');
    await checkFresh(tab2, base, 'dashboard: tab 2');
    await page.screenshot({ path: path.join(SHOTS, 'dashboard.png') });
    return page;
  },

  async chat(ctx, base, browser) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await page.fill('#name', 'Ada');
    await page.press('#name', 'Tab');
    const other = await browser.newContext();
    const bob = await other.newPage();
    await bob.goto(base);
    await connected(bob);
    await bob.fill('#name', 'Bob');
    await bob.press('#name', 'Tab');
    await page.fill('#text', 'Hello Bob');
    await page.press('#text', 'Enter');
    await until(bob, () => document.getElementById('messages').textContent.includes('AdaHello Bob'));
    await checkFresh(bob, base, 'chat: broadcast to another session');
    await checkFresh(page, base, 'chat: sender');
    const tab2 = await ctx.newPage();
    await tab2.goto(base);
    await connected(tab2);
    await tab2.fill('#text', 'From my second tab');
    await tab2.press('#text', 'Enter');
    await until(page, () => document.getElementById('messages').textContent.includes('From my second tab'));
    await until(bob, () => document.getElementById('messages').textContent.includes('From my second tab'));
    await checkFresh(page, base, 'chat: tab 1');
    await typingKeepsFocus(page, base, 'chat');
    await page.screenshot({ path: path.join(SHOTS, 'chat.png') });
    await other.close();
    return page;
  },
};

/** Every corpus case's frames through the client's DOM layer: after each
 * frame the DOM equals the Rust reference applier's HTML, parsed the same
 * way. (Fixture written by `cargo test --test js_client`.) */
async function corpusInTheDom(browser) {
  const fixture = path.join(ROOT, 'target/browser/corpus-frames.json');
  const cases = JSON.parse(readFileSync(fixture, 'utf8')).cases;
  const client = readFileSync(path.join(ROOT, 'src/client/statetemplate.js'), 'utf8');
  const page = await browser.newPage();
  await page.setContent('<!doctype html><html><body><div id="root"></div></body></html>');
  await page.addScriptTag({ content: client });
  const results = await page.evaluate((cases) => {
    const out = [];
    const root = document.getElementById('root');
    for (const c of cases) {
      root.innerHTML = '';
      const model = new window.statetemplate.Model();
      const dom = new window.statetemplate.Dom(root);
      const probe = document.createElement('div');
      let error = null;
      let step = 0;
      try {
        for (; step < c.frames.length; step++) {
          const acts = model.apply(JSON.parse(c.frames[step]));
          for (const a of acts) dom.act(a, model);
          probe.innerHTML = c.html[step];
          if (probe.innerHTML !== root.innerHTML) {
            error = `step ${step}: DOM differs\n  dom:  ${root.innerHTML}\n  want: ${probe.innerHTML}`;
            break;
          }
        }
      } catch (e) {
        error = `step ${step}: ${e}`;
      }
      out.push({ name: c.name, steps: c.frames.length, error });
    }
    return out;
  }, cases);
  await page.close();
  let steps = 0;
  const failed = [];
  for (const r of results) {
    steps += r.steps;
    if (r.error) failed.push(`${r.name}: ${r.error}`);
  }
  console.log(`corpus in the DOM: ${results.length} cases, ${steps} frames, ${failed.length} failed`);
  return failed;
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  if (!only.length || only.includes('corpus')) {
    const failed = await corpusInTheDom(browser);
    for (const f of failed) console.log('FAIL corpus ' + f);
    failures += failed.length;
  }
  for (const [name, run] of Object.entries(examples)) {
    if (only.length && !only.includes(name)) continue;
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    let server = await startServer(name, port);
    const ctx = await browser.newContext();
    const errors = [];
    ctx.on('page', (p) => p.on('pageerror', (e) => errors.push(String(e))));
    const started = Date.now();
    try {
      const page = await run(ctx, base, browser);
      server = await restartRecovers(server, name, port, page, base);
      await page.screenshot({ path: path.join(SHOTS, `${name}-recovered.png`) });
      assert(errors.length === 0, `${name}: page errors: ${errors.join('; ')}`);
      console.log(`ok   ${name} (${Date.now() - started} ms)`);
    } catch (e) {
      failures++;
      console.log(`FAIL ${name}: ${e.stack || e}`);
    } finally {
      await ctx.close();
      await stopServer(server);
    }
  }
} finally {
  await browser.close();
}
console.log(`${checks} DOM-vs-fresh-render checks; screenshots in ${SHOTS}`);
if (failures) {
  console.log(`${failures} example(s) failed`);
  process.exit(1);
}
