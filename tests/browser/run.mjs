// Real-browser tests: every example in headless Debian Chromium, driven by
// playwright-core (no browser download). Run by scripts/test.sh after
// `cargo build --examples`; screenshots go to target/browser/. Each
// example's server keeps its sessions in an SQLite file of its own for the
// run (in a temporary directory, removed at the end), so a restart, even
// kill -9, keeps them: the open page resumes its session.
//
// After every step the page's DOM must equal a fresh full render of the
// session's current data (the server's debug oracle route), compared in the
// browser after both are parsed the same way: the markup (innerHTML) and the
// form state markup does not show (every field's value, checked, selected).

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SHOTS = path.join(ROOT, 'target/browser');
const KEY = randomBytes(32).toString('base64url');
// The client as the crate serves it (comments stripped), written by
// `cargo test --test js_client`.
const CLIENT = readFileSync(path.join(ROOT, 'target/browser/client.served.js'), 'utf8');
const only = process.argv.slice(2);
mkdirSync(SHOTS, { recursive: true });
// Each example server keeps its sessions in its own SQLite file for the
// run, in a fresh directory (removed at the end): a restart of the same
// example reopens the same file and keeps the sessions.
let DBDIR = null;
const servers = new Set(); // running example servers
function cleanUp() {
  for (const p of servers) p.kill('SIGKILL');
  if (DBDIR) rmSync(DBDIR, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    console.log(`${sig}: stopping`);
    cleanUp();
    process.exit(1);
  });
}

let failures = 0;
let checks = 0; // DOM-vs-fresh-render checks in the examples
let fieldChecks = 0; // form fields compared in those checks

/** Installed in every page: compares the form state (`value`, `checked`,
 * `selected`) of every field under `live` with the fields of `fresh` (a
 * detached element holding a fresh parse), in document order. Returns
 * `{n, diff}`: fields compared and the first difference (or null). */
function installFormDiff() {
  const PROPS = { input: ['value', 'checked'], textarea: ['value'], select: ['value', 'selectedIndex'], option: ['selected'] };
  window.__formDiff = (live, fresh) => {
    const q = 'input, textarea, select, option';
    const a = live.querySelectorAll(q);
    const b = fresh.querySelectorAll(q);
    const name = (x, i) => `${x.localName}#${i}` + (x.id ? ` id=${x.id}` : '') + (x.name ? ` name=${x.name}` : '') +
      (x.localName === 'option' ? ` (${x.value})` : '');
    if (a.length !== b.length) return { n: a.length, diff: `${a.length} fields, fresh render has ${b.length}` };
    for (let i = 0; i < a.length; i++) {
      if (a[i].localName !== b[i].localName) return { n: i, diff: `${name(a[i], i)}: fresh render has ${name(b[i], i)}` };
      for (const p of PROPS[a[i].localName]) {
        if (a[i][p] !== b[i][p]) {
          return { n: i, diff: `${name(a[i], i)}.${p} is ${JSON.stringify(a[i][p])}, fresh render ${JSON.stringify(b[i][p])}` };
        }
      }
    }
    return { n: a.length, diff: null };
  };
  // The markup of el with its item markers written out: an item marked
  // <!--;--> (the previous key plus one, as the server writes it) or in a
  // run (<!--*KEY--> and the elements after it) as <!--:KEY--> (as the
  // client writes what it indexed), so that the two forms of the same page
  // compare equal.
  window.__markup = (el) => {
    const c = el.cloneNode(true);
    const w = document.createTreeWalker(c, NodeFilter.SHOW_COMMENT);
    const last = [null];
    for (let n; (n = w.nextNode());) {
      if (n.data.charAt(0) === '[') last.push(null);
      else if (n.data === ']') last.pop();
      else if (n.data === ';') n.data = ':' + (last[last.length - 1] + 1);
      else if (n.data.charAt(0) === '*') {
        // A run: each element after the first is the next item; the text
        // between two is the first's whitespace after (T) and the next's
        // before (L), L being what stands before the run's first element.
        n.data = ':' + n.data.slice(1);
        let j = +n.data.slice(1), e = n.nextSibling, l = '';
        if (e && e.nodeType === 3) { l = e.data; e = e.nextSibling; }
        for (; e && e.nodeType === 1;) {
          const t = e.nextSibling && e.nextSibling.nodeType === 3 ? e.nextSibling : null;
          const y = t ? t.nextSibling : e.nextSibling;
          if (!y || y.nodeType !== 1) break;
          const m = document.createComment(':' + ++j);
          if (t) {
            if (!t.data.endsWith(l)) throw new Error('a run whose whitespace differs: ' + JSON.stringify(t.data));
            t.parentNode.insertBefore(m, l ? t.splitText(t.data.length - l.length) : y);
          } else y.parentNode.insertBefore(m, y);
          e = y;
        }
      }
      if (n.data.charAt(0) === ':') last[last.length - 1] = /^(0|[1-9]\d*)$/.test(n.data.slice(1)) ? +n.data.slice(1) : null;
    }
    return c.innerHTML;
  };
}

function assert(cond, msg) {
  if (!cond) throw new Error('assertion failed: ' + msg);
}

/** A loopback TCP proxy the test controls: `cut()` drops every connection
 * through it and refuses new ones until `restore()`. */
async function proxy(target) {
  const socks = new Set();
  let down = false;
  const server = net.createServer((c) => {
    if (down) return c.destroy();
    const u = net.connect(target, '127.0.0.1');
    socks.add(c);
    socks.add(u);
    c.pipe(u);
    u.pipe(c);
    const end = () => { c.destroy(); u.destroy(); socks.delete(c); socks.delete(u); };
    c.on('error', end); u.on('error', end); c.on('close', end); u.on('close', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    cut() { down = true; for (const x of socks) x.destroy(); socks.clear(); },
    restore() { down = false; },
    close() { this.cut(); server.close(); },
  };
}

/** Clicks (and a double submit) while the connection is cut: each event is
 * shown as loading, counted in data-st-pending, kept, sent once the
 * connection is back, applied exactly once, in order. */
async function nothingLostWhileCut(ctx, base, name, act, done) {
  const px = await proxy(Number(new URL(base).port));
  const page = await ctx.newPage();
  try {
    await page.goto(px.base);
    await connected(page);
    const before = await page.evaluate(() => window.statetemplate.clients[0].model.seq);
    px.cut();
    await until(page, () => document.documentElement.classList.contains('st-reconnecting'));
    const pending = await act(page);
    await until(page, (n) => document.querySelector('[data-st-root]').getAttribute('data-st-pending') === String(n), pending);
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, `${name}-offline.png`) });
    px.restore();
    await until(page, () => document.documentElement.classList.contains('st-connected') &&
      document.querySelector('[data-st-root]').getAttribute('data-st-pending') === '0' &&
      !document.querySelector('.st-loading'));
    await done(page);
    await page.waitForTimeout(600);
    await done(page); // still: nothing was applied twice
    assert(await page.evaluate((b) => window.statetemplate.clients[0].model.seq > b, before), `${name}: no update after the events`);
    await checkFresh(page, px.base, `${name}: after events made while cut`);
  } finally {
    px.close();
    await page.close();
  }
}

async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const p = s.address().port;
  await new Promise((r) => s.close(r));
  return p;
}

/** Which example binary a test runs (by default the one of its name). */
const BIN = { kill9: 'todos', edits: 'todos' };

/** Tests whose server lets every page rest as soon as it is made
 * (`rest_unjoined_after(Some(0))`): each connect and each restored page
 * then renders its tree again from its data, which must change nothing
 * the user sees. */
const RESTING = new Set(['counter', 'todos', 'kill9', 'chat']);

/** Starts the server of test `name` on `port`, with its sessions in
 * DBDIR/NAME.db: the same file each time the same test (re)starts it. */
async function startServer(name, port, extraEnv = {}) {
  const bin = path.join(ROOT, 'target/debug/examples', BIN[name] || name);
  if (!DBDIR) DBDIR = mkdtempSync(path.join(os.tmpdir(), 'st-browser-'));
  const db = path.join(DBDIR, `${name}.db`);
  const { STATETEMPLATE_STORE: _, ...inherited } = process.env; // never the memory store
  const p = spawn(bin, [], {
    env: { ...inherited, ADDR: `127.0.0.1:${port}`, STATETEMPLATE_DEBUG: '1', STATETEMPLATE_KEYS: KEY, STATETEMPLATE_DB: db, STATETEMPLATE_UPLOADS: path.join(DBDIR, `${name}-uploads`), ...(RESTING.has(name) ? { STATETEMPLATE_REST_UNJOINED_MS: '0' } : {}), ...extraEnv },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  servers.add(p);
  p.once('exit', () => servers.delete(p));
  const started = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${name} did not start`)), 20000);
    let buf = '';
    p.stdout.on('data', (d) => {
      if (buf === null) return;
      buf += d;
      if (!buf.includes('listening on')) return;
      clearTimeout(t);
      if (RESTING.has(name) && !buf.includes('pages of unjoined sessions rest after 0 ms')) reject(new Error(`${name} does not let its pages rest: ${buf}`));
      else if (buf.includes(`sessions are kept in ${db}`)) resolve();
      else reject(new Error(`${name} does not keep its sessions in ${db}: ${buf}`));
      buf = null;
    });
    p.once('exit', (code) => { clearTimeout(t); reject(new Error(`${name} exited with ${code}`)); });
  });
  try {
    await started;
  } catch (e) {
    await stopServer(p);
    throw e;
  }
  return p;
}

async function stopServer(p) {
  if (p.exitCode !== null || p.signalCode !== null) return; // exited, or killed before
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

/** The client started from the page it was served: no join frame came. */
async function noJoin(page, label) {
  const c = await page.evaluate(() => ({ joins: window.statetemplate.clients[0].joins || 0, hellos: window.statetemplate.clients[0].hellos }));
  assert(c.joins === 0 && c.hellos === 1, `${label}: connected with ${c.joins} join frame(s) and ${c.hellos} hello(s), not from the page alone`);
}

async function connected(page) {
  await until(page, () => {
    const st = window.statetemplate;
    return document.documentElement.classList.contains('st-connected') && st && st.clients[0] && st.clients[0].model.root;
  });
}

/** The DOM equals a fresh full render of the session's data (same seq).
 * `typed` ({selector: value}) names fields that hold what the user typed
 * and did not send: each must show that value, all else as rendered. */
async function checkFresh(page, base, label, typed = {}) {
  for (let attempt = 0; attempt < 200; attempt++) {
    const c = await page.evaluate(() => {
      const cl = window.statetemplate.clients[0];
      return { sid: cl.sid, token: cl.token, seq: cl.model.seq };
    });
    const r = await fetch(`${base}/statetemplate/debug/fresh?sid=${c.sid}&token=${encodeURIComponent(c.token)}`);
    assert(r.ok, `${label}: oracle answered ${r.status}`);
    const fresh = await r.json();
    const res = await page.evaluate(([fresh, typed]) => {
      const cl = window.statetemplate.clients[0];
      if (cl.model.seq !== fresh.seq) return { wait: true };
      const d = document.createElement('div');
      d.innerHTML = fresh.html;
      for (const [sel, v] of Object.entries(typed)) {
        const f = d.querySelector(sel);
        if (!f) return { same: true, form: { n: 0, diff: `no field ${sel} in the fresh render` } };
        f.value = v; // a property: the markup stays the fresh one
      }
      const form = window.__formDiff(cl.el, d);
      return { same: window.__markup(d) === window.__markup(cl.el), dom: cl.el.innerHTML, fresh: d.innerHTML, form };
    }, [fresh, typed]);
    if (res.wait) { await page.waitForTimeout(20); continue; }
    if (!res.same) {
      let i = 0;
      while (i < res.dom.length && res.dom[i] === res.fresh[i]) i++;
      throw new Error(`${label}: DOM differs from a fresh render at ${i}:\n  dom:   ${res.dom.slice(Math.max(0, i - 80), i + 120)}\n  fresh: ${res.fresh.slice(Math.max(0, i - 80), i + 120)}`);
    }
    if (res.form.diff) throw new Error(`${label}: form state differs from a fresh render: ${res.form.diff}`);
    assert(res.form.n > 0, `${label}: no form fields compared`);
    fieldChecks += res.form.n;
    checks++;
    return;
  }
  throw new Error(`${label}: the client never reached the server's seq`);
}

/** The reference list model of a stream: what the client must hold after
 * the operations the test asked for (insert: in place if the key is held,
 * else at `at`, 0 first, -1 last; then trim to `limit`, > 0 keeps the
 * first, < 0 the last). */
function streamInsert(list, key, at, limit) {
  if (!list.includes(key)) list.splice(at < 0 ? list.length : Math.min(at, list.length), 0, key);
  if (limit && list.length > Math.abs(limit)) {
    if (limit > 0) list.splice(limit);
    else list.splice(0, list.length + limit);
  }
}

/** A page with a stream: its items (keys, in order) equal the reference
 * list `want`, each showing its own key; and the page without its stream
 * items equals a fresh render of the session's data (a fresh render has
 * every stream empty), markup and form state. */
async function checkStream(page, base, list, want, label) {
  await until(page, ([list, want]) => {
    const keys = [...document.querySelectorAll(`#${list} > li`)].map((l) => l.dataset.key);
    return keys.join() === want.join();
  }, [list, want.map(String)], 10000).catch(async () => {
    const keys = await page.evaluate((list) => [...document.querySelectorAll(`#${list} > li`)].map((l) => l.dataset.key), list);
    throw new Error(`${label}: the stream holds [${keys}], the reference list [${want}]`);
  });
  const texts = await page.evaluate((list) => [...document.querySelectorAll(`#${list} > li .text`)].map((t) => t.textContent), list);
  assert(texts.join() === want.map((k) => `item ${k}`).join(), `${label}: item texts ${texts}`);
  for (let attempt = 0; attempt < 200; attempt++) {
    const c = await page.evaluate(() => {
      const cl = window.statetemplate.clients[0];
      return { sid: cl.sid, token: cl.token };
    });
    const r = await fetch(`${base}/statetemplate/debug/fresh?sid=${c.sid}&token=${encodeURIComponent(c.token)}`);
    assert(r.ok, `${label}: oracle answered ${r.status}`);
    const fresh = await r.json();
    const res = await page.evaluate(([fresh, list]) => {
      const cl = window.statetemplate.clients[0];
      if (cl.model.seq !== fresh.seq) return { wait: true };
      // The page without the stream's items: drop each item's nodes, from
      // its marker (<!--:KEY--> or <!--;-->) to the next one or the list's
      // close.
      const copy = cl.el.cloneNode(true);
      const ul = copy.querySelector('#' + list);
      let inItem = false, depth = 0;
      for (const n of [...ul.childNodes]) {
        if (n.nodeType === 8) {
          if (n.data.charAt(0) === '[') depth++;
          else if (n.data === ']') { if (--depth === 0) inItem = false; }
          else if ((n.data.charAt(0) === ':' || n.data === ';') && depth === 1) inItem = true;
        }
        if (inItem) ul.removeChild(n);
      }
      const d = document.createElement('div');
      d.innerHTML = fresh.html;
      const form = window.__formDiff(cl.el, d);
      return { same: window.__markup(d) === window.__markup(copy), dom: copy.innerHTML, fresh: d.innerHTML, form };
    }, [fresh, list]);
    if (res.wait) { await page.waitForTimeout(20); continue; }
    assert(res.same, `${label}: the page without its stream differs from a fresh render:\n  dom:   ${res.dom}\n  fresh: ${res.fresh}`);
    if (res.form.diff) throw new Error(`${label}: form state differs from a fresh render: ${res.form.diff}`);
    fieldChecks += res.form.n;
    checks++;
    return;
  }
  throw new Error(`${label}: the client never reached the server's seq`);
}

async function text(page, sel) {
  return (await page.textContent(sel)).trim();
}

/** The value (or another property, `prop`) of the element `sel` in a
 * fresh render of the session's data: what the server's data holds. */
async function serverValue(page, base, sel, prop = 'value') {
  const c = await page.evaluate(() => {
    const cl = window.statetemplate.clients[0];
    return { sid: cl.sid, token: cl.token };
  });
  const r = await fetch(`${base}/statetemplate/debug/fresh?sid=${c.sid}&token=${encodeURIComponent(c.token)}`);
  assert(r.ok, `oracle answered ${r.status}`);
  const fresh = await r.json();
  return page.evaluate(([html, sel, prop]) => {
    const d = document.createElement('div');
    d.innerHTML = html;
    const f = d.querySelector(sel);
    return f ? f[prop] : null;
  }, [fresh.html, sel, prop]);
}

/** Waits until the server's data holds `want` for the field `sel` (its
 * `value`, or `prop`). */
async function untilServer(page, base, sel, want, label, ms = 10000, prop = 'value') {
  const end = Date.now() + ms;
  let got;
  while (Date.now() < end) {
    got = await serverValue(page, base, sel, prop);
    if (got === want) return;
    await page.waitForTimeout(50);
  }
  throw new Error(`${label}: the server's ${sel} is ${JSON.stringify(got)}, not ${JSON.stringify(want)}`);
}

/** Typing while the server pushes keeps focus, caret and the typed text:
 * at the end of the text, then in its middle (after Home). Once the server
 * holds the typed note, everything equals a fresh render, the field too. */
async function typingKeepsFocus(page, base, name) {
  const note = () => page.evaluate(() => {
    const n = document.getElementById('note');
    return {
      id: document.activeElement && document.activeElement.id,
      value: n.value,
      start: n.selectionStart,
      end: n.selectionEnd,
      seq: window.statetemplate.clients[0].model.seq,
    };
  });
  const typed = async (text, caret, before, where) => {
    const st = await note();
    assert(st.id === 'note', `${name}: focus moved to ${st.id} (${where})`);
    assert(st.value === text, `${name}: typed text became ${JSON.stringify(st.value)} (${where})`);
    assert(st.start === caret && st.end === caret, `${name}: caret at ${st.start}-${st.end}, not ${caret} (${where})`);
    assert(st.seq >= before + 2, `${name}: the server pushed while typing ${where} (${before} -> ${st.seq})`);
  };
  await page.click('#note');
  await page.keyboard.press('End');
  let before = (await note()).seq;
  await page.keyboard.type('hello, live world', { delay: 100 });
  await typed('hello, live world', 17, before, 'at the end');
  await untilServer(page, base, '#note', 'hello, live world', `${name}: after typing`);
  await page.keyboard.press('Home');
  before = (await note()).seq;
  await page.keyboard.type('Oh, ', { delay: 400 });
  await typed('Oh, hello, live world', 4, before, 'in the middle');
  await untilServer(page, base, '#note', 'Oh, hello, live world', `${name}: after typing in the middle`);
  await typed('Oh, hello, live world', 4, before, 'once the server has it');
  if (name === 'counter') {
    await until(page, () => document.getElementById('echo').textContent === 'Oh, hello, live world');
  }
  await checkFresh(page, base, `${name}: after typing`);
}

/** An event over the server's message limit (a 70 KB paste into the
 * counter's #note, st-input): the page refuses it itself, with a message
 * (the hello told it the limit), the text stays in the field, the
 * connection stays up and the click after it counts. Then a client that
 * believes in a larger limit sends it anyway: the server closes the
 * connection (1009, or a reset that loses it), the client refuses that
 * event and resends the rest after the reconnect, so the click queued
 * behind it is not lost either. */
async function tooLargeIsRefused(page, base) {
  const client = () => page.evaluate(() => {
    const c = window.statetemplate.clients[0];
    const f = document.querySelector('[st-flash]');
    return { hellos: c.hellos, pending: c.out.length, flash: f && !f.hidden ? f.textContent : '' };
  });
  const count = async () => Number(await text(page, '#count'));
  const hellos = (await client()).hellos;
  const before = await count();
  const big = 'x'.repeat(70000);
  await page.fill('#note', big);
  await until(page, () => /^That is too large to send \(at most 64 KB\)\.$/.test((document.querySelector('[st-flash]') || {}).textContent || ''));
  await page.click('#inc');
  await until(page, (n) => document.getElementById('count').textContent === String(n), before + 1);
  let c = await client();
  assert(c.hellos === hellos, `counter: a refused event reconnected (${hellos} -> ${c.hellos} hellos)`);
  assert(c.pending === 0, `counter: ${c.pending} events still waiting after the refusal`);
  assert((await page.inputValue('#note')) === big, 'counter: the refused text left the field');
  await checkFresh(page, base, 'counter: after a refused event', { '#note': big });
  await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'counter-too-large.png') });
  // The same past a client that thinks the limit is 1 GiB.
  await page.evaluate(() => { window.statetemplate.clients[0].max = 1 << 30; });
  await page.evaluate(() => { document.querySelector('[st-flash]').hidden = true; });
  await page.fill('#note', big + 'y');
  await page.waitForTimeout(400); // st-debounce="300": the big event is sent
  await page.click('#inc');
  await until(page, (n) => document.getElementById('count').textContent === String(n), before + 2);
  c = await client();
  assert(c.hellos === hellos + 1, `counter: the oversize event did not reconnect once (${hellos} -> ${c.hellos} hellos)`);
  assert(c.pending === 0, `counter: ${c.pending} events still waiting after the reconnect`);
  assert(/too large to send/.test(c.flash), `counter: no message for the event refused after the close: ${JSON.stringify(c.flash)}`);
  assert((await page.inputValue('#note')) === big + 'y', 'counter: the text sent too large left the field');
  // Back to an empty note, which the server holds, and the count before.
  await page.fill('#note', '');
  await untilServer(page, base, '#note', '', 'counter: the note emptied');
  await page.click('#dec');
  await page.click('#dec');
  await until(page, (n) => document.getElementById('count').textContent === String(n), before);
  await checkFresh(page, base, 'counter: after the oversize events');
}

/** What the user typed and never sent, by example: it must survive a
 * server restart. */
const UNSENT = { counter: '#keys', todos: '#new', chat: '#text', kill9: '#new' };

/** The session and the page of test `srv.name`'s server: kill -9 (the
 * store keeps the sessions), start it again on the same port and
 * database. The page resumes the same session without a reload (a page
 * marker survives), typed text is kept, and it equals a fresh render (a
 * page with a stream, `srv.stream`: it keeps the items it held, no join
 * having emptied them, and equals a fresh render without them). */
async function restartRecovers(srv, page, base) {
  const { name } = srv;
  const unsent = UNSENT[name];
  if (unsent) await page.fill(unsent, 'typed before the restart');
  const sid = await page.evaluate(() => {
    window.__noReload = 1;
    return window.statetemplate.clients[0].sid;
  });
  await restart(srv, async () => {
    await until(page, () => document.documentElement.classList.contains('st-reconnecting'), undefined, 10000);
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, `${name}-reconnecting.png`) });
  });
  await connected(page);
  const after = await page.evaluate(() => [window.__noReload, window.statetemplate.clients[0].sid]);
  assert(after[0] === 1, `${name}: the page reloaded after the restart`);
  assert(after[1] === sid, `${name}: another session after the restart (${sid} -> ${after[1]})`);
  if (unsent) {
    assert((await page.inputValue(unsent)) === 'typed before the restart', `${name}: the typed text was lost: ${JSON.stringify(await page.inputValue(unsent))}`);
    await page.fill(unsent, '');
  }
  if (srv.stream) await checkStream(page, base, srv.stream.list, srv.stream.want, `${name}: after restart`);
  else await checkFresh(page, base, `${name}: after restart`);
}

/** Kills the server of `srv` with SIGKILL (by the PID the harness
 * started), waits for its exit, runs `whileDown`, then starts it again on
 * the same port and database. */
async function restart(srv, whileDown = async () => {}) {
  const pid = srv.proc.pid;
  const exited = new Promise((r) => srv.proc.once('exit', (code, signal) => r(signal)));
  assert(srv.proc.exitCode === null && srv.proc.signalCode === null, `${srv.name}: the server ${pid} is not running`);
  srv.proc.kill('SIGKILL');
  const signal = await exited;
  assert(signal === 'SIGKILL', `${srv.name}: the server ${pid} ended by ${signal}, not SIGKILL`);
  await whileDown();
  srv.proc = await startServer(srv.name, srv.port);
}

const examples = {
  async uploads(ctx, base) {
    // Uploads: two photos with progress, then refusals (too big, wrong
    // type, not really an image) and a cancel; each arrives whole or not at
    // all, and no partial file is left in the upload directory.
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await checkFresh(page, base, 'uploads: initial');
    const dir = path.join(DBDIR, 'uploads-uploads');
    const kept = () => readdirSync(path.join(dir, 'files')).length;
    const partial = () => readdirSync(dir).filter((f) => f.endsWith('.part'));
    const png = (n) => Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), Buffer.alloc(n, 7)]);
    await page.evaluate(() => { window.__up = []; document.addEventListener('st:upload', (e) => window.__up.push(e.detail)); });
    const flash = (text) => until(page, (t) => {
      const f = document.querySelector('[st-flash]');
      return f && !f.hidden && f.textContent.includes(t);
    }, text);
    const k0 = kept();
    await page.setInputFiles('#photo', [
      { name: 'sunset.png', mimeType: 'image/png', buffer: png(60000) },
      { name: 'cat.png', mimeType: 'image/png', buffer: png(2000) },
    ]);
    await until(page, () => document.querySelectorAll('#files li').length === 2);
    const names = await page.evaluate(() => [...document.querySelectorAll('#files li')].map((l) => l.textContent));
    assert(names[0].startsWith('sunset.png 60008 bytes') && names[1].startsWith('cat.png 2008 bytes'), `uploads: listed: ${names}`);
    const ev = await page.evaluate(() => window.__up);
    assert(ev.some((d) => d.file === 'sunset.png' && d.loaded === d.total && d.total >= 60008), `uploads: progress events: ${JSON.stringify(ev.slice(0, 4))}`);
    assert(ev.filter((d) => d.done).length === 2, 'uploads: two done');
    await flash('cat.png is uploaded.');
    assert(kept() === k0 + 2 && partial().length === 0, `uploads: kept ${kept()}, partial ${partial()}`);
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'uploads.png') });
    await checkFresh(page, base, 'uploads: two photos');
    for (const [file, says] of [
      [{ name: 'huge.png', mimeType: 'image/png', buffer: png(300000) }, 'too big'],
      [{ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hello') }, 'not accepted'],
      [{ name: 'fake.png', mimeType: 'image/png', buffer: Buffer.from('not an image at all') }, 'fake.png is not a PNG or JPEG image.'],
    ]) {
      await page.setInputFiles('#photo', [file]);
      await flash(says);
      await until(page, (n) => window.__up.some((d) => d.file === n && d.error), file.name);
    }
    // Cancel: a slow upload (the browser throttled), aborted mid-way. The
    // cancel is clicked only once the file is partly sent. The browser may
    // still have let the whole file through first (its throttling does not
    // always hold); then the server says so when the client asks what
    // became of the upload, the page says "done", not "cancelled", and the
    // cancel is tried again with another file. Either way what the page
    // says must be what the server did: the count of kept files below.
    const cdp = await ctx.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 16 * 1024 });
    let through = 0;
    let cancelled = false;
    for (let attempt = 0; attempt < 3 && !cancelled; attempt++) {
      const name = `slow${attempt}.png`;
      await page.setInputFiles('#photo', [{ name, mimeType: 'image/png', buffer: png(200000) }]);
      await until(page, (n) => window.__up.some((d) => d.file === n && (d.done || (d.loaded > 0 && d.loaded < d.total))), name);
      await page.click('#cancel');
      await until(page, (n) => window.__up.some((d) => d.file === n && (d.done || d.error)), name);
      const end = await page.evaluate((n) => window.__up.filter((d) => d.file === n && (d.done || d.error)).map((d) => d.error || 'done'), name);
      if (end.includes('The upload was cancelled.')) cancelled = true;
      else if (end.includes('done')) through++;
      else assert(false, `uploads: ${name} ended with ${end}`);
    }
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    assert(cancelled, `uploads: the browser sent every slow upload whole before the cancel (${through} of 3)`);
    if (through) console.log(`note uploads: ${through} throttled upload(s) went through whole before the cancel; retried`);
    await flash('cancelled');
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'uploads-cancelled.png') });
    // The connection fails after the server got the whole file (the
    // request goes through, the browser sees a reset): the page asks and
    // says "done", and lists the file. Then one that fails before it
    // reaches the server: "failed", nothing kept.
    const isUpload = (u) => new URL(u).pathname.endsWith('/upload/photo');
    await page.route(isUpload, async (route) => { await route.fetch(); await route.abort('connectionreset'); }, { times: 1 });
    await page.setInputFiles('#photo', [{ name: 'lost-answer.png', mimeType: 'image/png', buffer: png(3000) }]);
    await until(page, (n) => window.__up.some((d) => d.file === n && (d.done || d.error)), 'lost-answer.png');
    const lost = await page.evaluate(() => window.__up.filter((d) => d.file === 'lost-answer.png' && (d.done || d.error)).map((d) => d.error || 'done'));
    assert(lost.length === 1 && lost[0] === 'done', `uploads: an upload whose answer was lost ended with ${lost}`);
    await until(page, () => [...document.querySelectorAll('#files li')].some((l) => l.textContent.startsWith('lost-answer.png')), 'lost-answer.png listed');
    await page.route(isUpload, (route) => route.abort('connectionreset'), { times: 1 });
    await page.setInputFiles('#photo', [{ name: 'never-sent.png', mimeType: 'image/png', buffer: png(3000) }]);
    await until(page, (n) => window.__up.some((d) => d.file === n && (d.done || d.error)), 'never-sent.png');
    const never = await page.evaluate(() => window.__up.filter((d) => d.file === 'never-sent.png' && (d.done || d.error)).map((d) => d.error || 'done'));
    assert(never.length === 1 && never[0] === 'The upload failed.', `uploads: an upload that never arrived ended with ${never}`);
    await page.waitForTimeout(500);
    assert(kept() === k0 + 3 + through && partial().length === 0, `uploads: after the refusals, the cancel and the failed requests: kept ${kept()} (${k0} + 3 + ${through} sent whole), partial ${partial()}`);
    assert((await page.evaluate(() => document.querySelectorAll('#files li').length)) === 3 + through, 'uploads: nothing else listed');
    await checkFresh(page, base, 'uploads: after refusals');
    return page;
  },
  async pages(ctx, base) {
    // Live navigation: st-patch links change the URL and re-render; the
    // search types as usual; st-navigate swaps to another page over the
    // same socket; back and forward; a reload renders the URL it is at.
    const page = await ctx.newPage();
    await page.goto(base + '/');
    await connected(page);
    await checkFresh(page, base, 'pages: initial');
    const rows = () => page.evaluate(() => [...document.querySelectorAll('#products tbody tr')].map((r) => r.cells[0].textContent));
    const same = await page.evaluate(() => { window.__sameDocument = 1; return window.statetemplate.clients[0].hellos; });
    const sameSocket = async (label) => {
      const s = await page.evaluate(() => [window.__sameDocument, window.statetemplate.clients[0].hellos]);
      assert(s[0] === 1 && s[1] === same, `${label}: the same document and socket (${s})`);
    };
    const byName = await rows();
    assert(byName.length === 10 && byName[0] === 'Eraser', `pages: sorted by name: ${byName}`);
    await page.click('#by-price');
    await until(page, () => location.search === '?sort=price&q=' && document.getElementById('by-price').getAttribute('aria-current') === 'true');
    const byPrice = await rows();
    assert(byPrice.join() !== byName.join() && byPrice.length === 10, `pages: sorted by price: ${byPrice}`);
    await checkFresh(page, base, 'pages: sorted by price');
    await page.click('#q');
    await page.keyboard.type('ink', { delay: 30 });
    await until(page, () => document.querySelectorAll('#products tbody tr').length === 2);
    assert(await page.evaluate(() => document.activeElement.id === 'q' && document.activeElement.value === 'ink' && document.activeElement.selectionStart === 3), 'pages: typing kept focus, text and caret');
    await checkFresh(page, base, 'pages: searched');
    await page.click('#share');
    await until(page, () => location.search === '?sort=price&q=ink');
    await page.click('#products a.item');
    await until(page, () => location.pathname.startsWith('/item/') && document.getElementById('name'));
    await sameSocket('pages: st-navigate');
    const item = await page.evaluate(() => [location.pathname, document.getElementById('name').textContent, +document.getElementById('stock').textContent]);
    assert(item[1].startsWith('Ink'), `pages: the product page: ${item}`);
    await checkFresh(page, base, 'pages: product page');
    await page.fill('#qty', '2');
    await page.click('#buy');
    await until(page, (s) => +document.getElementById('stock').textContent === s - 2, item[2]);
    await until(page, () => {
      const f = document.querySelector('[st-flash]');
      return f && !f.hidden && f.dataset.stKind === 'success' && f.textContent.startsWith('You bought 2');
    });
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'pages-product.png') });
    await checkFresh(page, base, 'pages: bought', { '#qty': '2' }); // typed, kept, not the server's
    await page.goBack();
    await until(page, () => location.search === '?sort=price&q=ink' && document.querySelectorAll('#products tbody tr').length === 2);
    await sameSocket('pages: back to the list');
    await checkFresh(page, base, 'pages: back');
    await page.goBack();
    await until(page, () => location.search === '?sort=price&q=' && document.querySelectorAll('#products tbody tr').length === 10);
    assert((await rows()).join() === byPrice.join(), 'pages: back to the whole list by price');
    await page.goForward();
    await page.goForward();
    await until(page, (p) => location.pathname === p && document.getElementById('name'), item[0]);
    await sameSocket('pages: forward');
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'pages-forward.png') });
    await page.reload();
    await connected(page);
    assert(await page.evaluate((p) => location.pathname === p && document.getElementById('name') !== null, item[0]), 'pages: a reload renders the URL');
    await checkFresh(page, base, 'pages: reloaded');
    return page;
  },
  async counter(ctx, base, browser) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await noJoin(page, 'counter');
    await checkFresh(page, base, 'counter: initial');
    {
      // A page whose DOM is not what the server rendered (a script or an
      // extension added to it) does not read: the client reconnects for a
      // join, which puts the server's page back.
      const other = await newContext(browser);
      const p2 = await other.newPage();
      // Once parsed, before the deferred client runs.
      await p2.addInitScript(() => document.addEventListener('readystatechange', () => {
        if (document.readyState === 'interactive') document.querySelector('[data-st-root]').insertAdjacentHTML('afterbegin', '<b id="extra">added</b>');
      }));
      await p2.goto(base);
      await connected(p2);
      const c = await p2.evaluate(() => ({ joins: window.statetemplate.clients[0].joins, unread: window.statetemplate.clients[0].unread }));
      assert(c.joins === 1 && c.unread === 1, `counter: a page that does not read: ${c.joins} join(s), unread ${c.unread}`);
      assert(!(await p2.$('#extra')), 'counter: the join put the server\'s page back');
      await checkFresh(p2, base, 'counter: after a page that did not read');
      await other.close();
    }
    await page.click('#inc');
    await page.click('#inc');
    await page.click('#dec');
    await page.click('#inc');
    // 2 is also the count after the second click: wait until no click is
    // still waiting for its answer (each marks its button st-loading).
    await until(page, () => document.getElementById('count').textContent === '2' && !document.querySelector('.st-loading'));
    await checkFresh(page, base, 'counter: after clicks');
    // A JS hook (docs/hooks.md): mounted on load, updated by each frame that
    // changed its canvas, destroyed and mounted again with it; it pushes an
    // event, gets the handler's reply and hears the server's pushed event;
    // the handler's flash message shows with its kind.
    const hookLog = () => page.evaluate(() => window.hookLog.map((e) => JSON.stringify(e)));
    let hl = await hookLog();
    assert(hl[0] === '["mounted",0]', `counter: the hook mounted first: ${hl}`);
    assert(hl.filter((e) => e.startsWith('["updated"')).join() === '["updated",1],["updated",2],["updated",1],["updated",2]', `counter: the hook updated once a change: ${hl}`);
    await page.click('#spark');
    await until(page, () => window.hookLog.some((e) => e[0] === 'reply') && window.hookLog.some((e) => e[0] === 'pushed'));
    hl = await hookLog();
    assert(hl.includes('["reply",{"double":4}]') && hl.includes('["pushed",2]'), `counter: the hook's reply and pushed event: ${hl}`);
    await until(page, () => {
      const f = document.querySelector('[st-flash]');
      return f && !f.hidden && f.dataset.stKind === 'info' && f.textContent === 'The server doubled 2: 4';
    });
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'counter-hook-flash.png') });
    await page.click('#chart');
    await until(page, () => !document.getElementById('spark') && window.hookLog.some((e) => e[0] === 'destroyed'));
    await page.click('#chart');
    await until(page, () => document.getElementById('spark') && window.hookLog.filter((e) => e[0] === 'mounted').length === 2);
    assert((await hookLog()).filter((e) => e === '["destroyed"]').length === 1, 'counter: destroyed once');
    await checkFresh(page, base, 'counter: after the hook');
    // keydown with a key filter: ArrowUp sends the event, other keys do not.
    await page.click('#keys');
    await page.keyboard.press('a');
    await page.keyboard.press('ArrowDown');
    await page.keyboard.press('ArrowUp');
    await page.keyboard.press('End');
    await page.keyboard.press('Backspace'); // the 'a' typed into #keys: the server does not hold it
    await until(page, () => document.getElementById('count').textContent === '3');
    await page.waitForTimeout(200);
    assert((await text(page, '#count')) === '3', 'counter: only ArrowUp counted');
    await page.click('#dec');
    await until(page, () => document.getElementById('count').textContent === '2');
    await checkFresh(page, base, 'counter: after keys');
    await tooLargeIsRefused(page, base);
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
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'counter.png') });
    // Three clicks while the connection is cut: each waits, loading, and is
    // applied once after the connection is back.
    const c0 = Number(await text(page, '#count'));
    await nothingLostWhileCut(ctx, base, 'counter', async (p) => {
      for (let k = 0; k < 3; k++) await p.click('#inc');
      assert(await p.evaluate(() => document.getElementById('inc').classList.contains('st-loading')), 'counter: a waiting click shows st-loading');
      return 3;
    }, async (p) => {
      const n = Number(await text(p, '#count'));
      assert(n === c0 + 3, `counter: ${n - c0} of 3 clicks applied`);
    });
    await until(page, (c) => document.getElementById('count').textContent === String(c + 3), c0);
    // A handler's user error reaches the user: the st:error event and the
    // default message; the count does not change.
    for (let n = Number(await text(page, '#count')); n > 0; n--) {
      await page.click('#dec');
      await until(page, (n) => document.getElementById('count').textContent === String(n - 1), n);
    }
    await page.evaluate(() => {
      window.__errors = [];
      document.addEventListener('st:error', (e) => window.__errors.push(e.detail.code + ': ' + e.detail.msg));
    });
    await page.click('#dec');
    await until(page, () => { const f = document.querySelector('[st-flash]'); return f && !f.hidden && f.textContent; });
    const shown = await page.evaluate(() => [document.querySelector('[st-flash]').textContent, window.__errors, document.getElementById('count').textContent]);
    assert(JSON.stringify(shown) === JSON.stringify(['The count cannot go below zero.', ['user: The count cannot go below zero.'], '0']),
      `counter: the user error shown: ${JSON.stringify(shown)}`);
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'counter-error.png') });
    await checkFresh(page, base, 'counter: after a refused event');
    // A handler that panics (the debug server's debug_panic): the user sees
    // the generic message, nothing internal; the session goes on.
    await page.evaluate(() => {
      window.__errors = [];
      const b = document.createElement('button');
      b.id = 'boom';
      b.setAttribute('st-click', 'debug_panic');
      b.textContent = 'boom';
      document.getElementById('inc').after(b);
    });
    await page.click('#boom');
    await until(page, () => window.__errors.length > 0);
    const panicked = await page.evaluate(() => [document.querySelector('[st-flash]').textContent, window.__errors]);
    assert(panicked[0] === 'Something went wrong. Please try again.' && panicked[1].length === 1 && !/panic|bug/.test(panicked[0] + panicked[1][0]),
      `counter: a panicking handler shows the generic message only: ${JSON.stringify(panicked)}`);
    await page.evaluate(() => document.getElementById('boom').remove());
    const echo = await serverValue(page, base, '#echo', 'textContent');
    assert(!echo.includes('panicked'), `counter: the panicking handler's change did not stick: ${echo}`);
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'counter-panic.png') });
    const atPanic = Number(await text(page, '#count'));
    await page.click('#inc');
    await until(page, (c) => document.getElementById('count').textContent === String(c + 1), atPanic);
    await checkFresh(page, base, 'counter: the session goes on after a panic');
    // Latency simulation: 300 ms each way, so the loading state shows for
    // the round trip; off again, the next click is quick.
    await page.evaluate(() => window.statetemplate.latencySim(300));
    const slow0 = Number(await text(page, '#count'));
    const t0 = Date.now();
    await page.click('#inc');
    await page.waitForTimeout(150);
    assert(await page.evaluate((c) => document.getElementById('count').textContent === String(c) && document.getElementById('inc').classList.contains('st-loading'), slow0),
      'counter: with simulated latency the click is still loading after 150 ms');
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'counter-latency.png') });
    await until(page, (c) => document.getElementById('count').textContent === String(c + 1), slow0);
    const slow = Date.now() - t0;
    assert(slow >= 550, `counter: a simulated round trip took ${slow} ms, expected at least 600`);
    await page.evaluate(() => window.statetemplate.latencySim(0));
    const t1 = Date.now();
    await page.click('#inc');
    await until(page, (c) => document.getElementById('count').textContent === String(c + 2), slow0);
    const fast = Date.now() - t1;
    assert(fast < slow, `counter: without the simulation a click took ${fast} ms (with it: ${slow} ms)`);
    await checkFresh(page, base, 'counter: after the latency simulation');
    // A server that speaks another protocol version closes with 4003: the
    // client reloads the page (which brings the server's client).
    await page.evaluate(() => {
      window.__beforeReload = 1;
      const c = window.statetemplate.clients[0];
      c.ws.onclose({ code: 4003, reason: 'unsupported protocol version' });
    });
    await until(page, () => window.__beforeReload === undefined && window.statetemplate && window.statetemplate.clients.length === 1);
    await connected(page);
    await checkFresh(page, base, 'counter: reloaded after 4003');
    return page;
  },

  async todos(ctx, base) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await noJoin(page, 'todos');
    await checkFresh(page, base, 'todos: initial');
    await page.click('li[data-key="1"] input[type=checkbox]');
    await until(page, () => document.querySelector('li[data-key="1"]').className === 'done');
    await checkFresh(page, base, 'todos: toggled');
    // Text the user typed and has not sent survives updates that do not
    // change that field (the clock ticks every 0.5 s), focused or not.
    await page.fill('#new', 'Draft, not sent');
    await page.click('h1');
    const t0 = await text(page, '#clock');
    await until(page, (t0) => document.getElementById('clock').textContent !== t0, t0);
    await page.waitForTimeout(700);
    assert((await page.inputValue('#new')) === 'Draft, not sent', `todos: unsent text was erased: ${JSON.stringify(await page.inputValue('#new'))}`);
    // A form whose fields are named like the form's own properties still
    // sends its fields (form.name would be the field, not the attribute:
    // an empty "name" field became {}).
    const sent = await page.evaluate(() => {
      const f = document.createElement('form');
      f.setAttribute('name', 'signup');
      f.setAttribute('data-step', '2');
      f.innerHTML = '<input name="name" value=""><input name="id" value="7"><input name="action" value="go"><input name="method" value="post"><input name="value" value="v"><input name="reset" value="r">';
      document.body.appendChild(f);
      const d = window.statetemplate.payload('submit', f, {});
      f.remove();
      return d;
    });
    assert(JSON.stringify(sent) === JSON.stringify({ step: '2', name: '', id: '7', action: 'go', method: 'post', value: 'v', reset: 'r' }),
      `todos: a form's payload with fields named like its properties: ${JSON.stringify(sent)}`);
    await page.fill('#new', 'Fourth thing');
    await page.press('#new', 'Enter');
    await until(page, () => document.querySelectorAll('#list li').length === 4);
    assert((await page.inputValue('#new')) === '', 'todos: the form was reset');
    await checkFresh(page, base, 'todos: added');
    // A submit over the message limit (an 80 KB paste) is refused with a
    // message, and st-reset does not clear what the user typed; the list
    // is as it was and the next add goes through.
    const huge = 'z'.repeat(80000);
    await page.fill('#new', huge);
    await page.press('#new', 'Enter');
    await until(page, () => /too large to send/.test((document.querySelector('[st-flash]') || {}).textContent || ''));
    assert((await page.inputValue('#new')) === huge, `todos: a refused submit cleared the form (${(await page.inputValue('#new')).length} characters left)`);
    assert((await page.$$('#list li')).length === 4, 'todos: a refused submit added an item');
    await checkFresh(page, base, 'todos: a refused submit', { '#new': huge });
    await page.fill('#new', 'Fifth thing');
    await page.press('#new', 'Enter');
    await until(page, () => document.querySelectorAll('#list li').length === 5);
    assert((await page.inputValue('#new')) === '', 'todos: the form was reset after the refusal');
    await page.click('li[data-key="5"] button[title="remove"]');
    await until(page, () => document.querySelectorAll('#list li').length === 4);
    await checkFresh(page, base, 'todos: added and removed after a refusal');
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
    // Tab 2 toggles the todo tab 1 clicked (so its checkedness is the
    // user's, no longer following the attribute), while tab 1 has it focused:
    // tab 1's checkbox.checked follows, both ways.
    const box = 'li[data-key="1"] input[type=checkbox]';
    await page.focus(box);
    for (const want of [false, true]) {
      assert(await tab2.evaluate((box) => document.querySelector(box).checked, box) === !want, `todos: tab 2's checkbox before toggling`);
      await tab2.click(box);
      await until(page, (want) => document.querySelector('li[data-key="1"]').className === (want ? 'done' : 'open'), want);
      assert(await page.evaluate((box) => document.activeElement === document.querySelector(box), box), 'todos: tab 1 kept focus on the checkbox');
      assert(await page.evaluate((box) => document.querySelector(box).checked, box) === want,
        `todos: tab 1's checkbox.checked is not ${want} after tab 2 toggled it`);
      await checkFresh(page, base, `todos: tab 1 after tab 2 toggled (${want})`);
      await checkFresh(tab2, base, `todos: tab 2 toggled (${want})`);
    }
    // A submit while the connection is cut: the button shows
    // st-disable-with, a second Enter does not submit again, and the todo
    // is added once when the connection is back.
    const before = await page.$$eval('#list li', (l) => l.length);
    await nothingLostWhileCut(ctx, base, 'todos', async (p) => {
      await p.fill('#new', 'Written offline');
      await p.press('#new', 'Enter');
      await p.press('#new', 'Enter');
      const b = await p.evaluate(() => {
        const b = document.getElementById('add-button');
        return [b.disabled, b.textContent, document.getElementById('add').getAttribute('aria-busy')];
      });
      assert(JSON.stringify(b) === JSON.stringify([true, 'Adding…', 'true']), `todos: the waiting submit's button: ${JSON.stringify(b)}`);
      return 1;
    }, async (p) => {
      const texts = await p.$$eval('#list .text', (l) => l.map((x) => x.textContent));
      assert(texts.filter((t) => t === 'Written offline').length === 1 && texts.length === before + 1, `todos: ${JSON.stringify(texts)}`);
      const b = await p.evaluate(() => [document.getElementById('add-button').disabled, document.getElementById('add-button').textContent]);
      assert(!b[0] && b[1] === 'Add', `todos: the button after the answer: ${JSON.stringify(b)}`);
    });
    await until(page, (n) => document.querySelectorAll('#list li').length === n, before + 1);
    await page.click(`#list li:last-child button[title="remove"]`);
    await until(page, (n) => document.querySelectorAll('#list li').length === n, before);
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'todos.png') });
    return page;
  },

  /** kill -9 while the page is open (the todos example): two todos added
   * and one ticked, text typed in the new-todo field and not sent; the
   * server is killed; a tick made while it is down waits in the outbox;
   * the server starts again on the same port and database. The page
   * resumes the same session without a reload, the tick made while down
   * is applied exactly once, an event answered before the kill and sent
   * again is not applied again, the typed text stays, and the page equals
   * a fresh render. A debounced event sent after a later click is applied
   * too. */
  async kill9(ctx, base, browser, srv) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await checkFresh(page, base, 'kill9: initial');
    // Every event the client puts on the socket, and every answer (a ref)
    // it gets.
    await page.evaluate(() => {
      const c = window.statetemplate.clients[0];
      window.__sent = [];
      window.__answers = [];
      const send = c.send.bind(c);
      c.send = (m) => {
        const o = typeof m === 'string' ? JSON.parse(m) : m; // events go as their JSON
        if (o.t === 'ev' && c.ws && c.ws.readyState === 1) window.__sent.push(o);
        send(m);
      };
      const frame = c.frame.bind(c);
      c.frame = (t) => { if (/^\d+$/.test(t)) window.__answers.push(Number(t)); frame(t); };
    });
    const keys = () => page.$$eval('#list li', (l) => l.map((x) => `${x.dataset.key}:${x.className}:${x.querySelector('.text').textContent}`).join());
    for (const [n, t] of [[4, 'Alpha'], [5, 'Beta']]) {
      await page.fill('#new', t);
      await page.press('#new', 'Enter');
      await until(page, (n) => document.querySelectorAll('#list li').length === n, n);
    }
    // A note (st-input, sent 300 ms later) and, before it is sent, a tick:
    // both are applied (refs follow the order events are sent in; the
    // server takes a ref at or below the highest it applied as a resend).
    await page.fill('#note', 'noted before the kill');
    await page.click('li[data-key="4"] input[type=checkbox]');
    await until(page, () => document.querySelector('li[data-key="4"]').className === 'done');
    await untilServer(page, base, 'li[data-key="4"] input', true, 'kill9: Alpha ticked', 10000, 'checked');
    await untilServer(page, base, '#note', 'noted before the kill', 'kill9: the note sent after the tick');
    await checkFresh(page, base, 'kill9: two added, one ticked');
    const TYPED = 'typed, never sent';
    await page.fill('#new', TYPED);
    await checkFresh(page, base, 'kill9: text typed', { '#new': TYPED });
    const list = await keys();
    assert(list === '1:open:Buy milk,2:done:Write the report,3:open:Call Ada,4:done:Alpha,5:open:Beta', `kill9: the list before the kill: ${list}`);
    const before = await page.evaluate(() => {
      window.__noReload = 1;
      const c = window.statetemplate.clients[0];
      const tick = window.__sent.find((m) => m.n === 'toggle' && m.d.id === '4');
      return { sid: c.sid, seq: c.model.seq, hellos: c.hellos, joins: c.joins || 0, tick, answered: window.__answers.includes(tick && tick.r) };
    });
    assert(before.tick && before.answered, `kill9: Alpha's tick was sent and answered: ${JSON.stringify(before)}`);
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'kill9-before.png') });
    await restart(srv, async () => {
      await until(page, () => document.documentElement.classList.contains('st-reconnecting'), undefined, 10000);
      // A tick while the server is down: shown at once, loading, waiting.
      await page.click('li[data-key="5"] input[type=checkbox]');
      await until(page, () => document.querySelector('[data-st-root]').getAttribute('data-st-pending') === '1');
      const down = await page.evaluate(() => {
        const b = document.querySelector('li[data-key="5"] input');
        return [b.checked, b.classList.contains('st-loading'), document.documentElement.className, document.getElementById('new').value];
      });
      assert(JSON.stringify(down) === JSON.stringify([true, true, 'st-reconnecting', TYPED]), `kill9: while down: ${JSON.stringify(down)}`);
      await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'kill9-down.png') });
    });
    await connected(page);
    assert(await page.evaluate(() => window.__noReload) === 1, 'kill9: the page reloaded after the restart');
    await until(page, () => document.querySelector('[data-st-root]').getAttribute('data-st-pending') === '0' &&
      !document.querySelector('.st-loading'));
    const after = await page.evaluate(() => {
      const c = window.statetemplate.clients[0];
      return { sid: c.sid, seq: c.model.seq, hellos: c.hellos, joins: c.joins || 0,
        ticks: window.__sent.filter((m) => m.n === 'toggle' && m.d.id === '5').map((m) => m.r) };
    });
    assert(after.sid === before.sid, `kill9: another session (${before.sid} -> ${after.sid})`);
    assert(after.hellos === before.hellos + 1, `kill9: ${after.hellos - before.hellos} hellos after the restart`);
    // Sent once after the hello (the socket was down when it was clicked).
    assert(after.ticks.length === 1, `kill9: Beta's tick was sent ${after.ticks.length} times`);
    console.log(`     kill9: resumed session ${after.sid} at seq ${before.seq} -> ${after.seq}, ${after.joins - before.joins} join frame(s)`);
    const want = '1:open:Buy milk,2:done:Write the report,3:open:Call Ada,4:done:Alpha,5:done:Beta';
    await untilServer(page, base, 'li[data-key="5"] input', true, 'kill9: the tick made while down', 10000, 'checked');
    // Sent again, the tick answered before the kill is answered, not applied.
    await page.evaluate((m) => window.statetemplate.clients[0].ws.send(JSON.stringify(m)), before.tick);
    await until(page, (r) => window.__answers.filter((a) => a === r).length === 2, before.tick.r);
    await page.waitForTimeout(600);
    assert((await keys()) === want, `kill9: the list after the restart: ${await keys()}`);
    assert(await serverValue(page, base, 'li[data-key="4"] input', 'checked') === true, 'kill9: the tick answered before the kill was applied again');
    assert(await serverValue(page, base, 'li[data-key="5"] input', 'checked') === true, 'kill9: the tick made while down was applied twice');
    assert(await serverValue(page, base, '#note') === 'noted before the kill', 'kill9: the note after the restart');
    assert((await page.inputValue('#new')) === TYPED, `kill9: the typed text became ${JSON.stringify(await page.inputValue('#new'))}`);
    await checkFresh(page, base, 'kill9: after the restart', { '#new': TYPED });
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'kill9-after.png') });
    // Still live: the typed text sent now adds a todo.
    await page.press('#new', 'Enter');
    await until(page, () => document.querySelectorAll('#list li').length === 6);
    assert((await page.$$eval('#list .text', (l) => l.map((x) => x.textContent))).filter((t) => t === TYPED).length === 1, 'kill9: the typed text added once');
    await checkFresh(page, base, 'kill9: added after the restart');
    // A click in flight at the kill (sent, perhaps applied, perhaps
    // answered): after the restart it is applied once, whichever it was.
    const r = await page.evaluate(() => window.statetemplate.clients[0].ref + 1);
    await page.click('li[data-key="3"] input[type=checkbox]');
    let answered;
    await restart(srv, async () => {
      answered = await page.evaluate((r) => window.__answers.includes(r), r);
    });
    await connected(page);
    await until(page, () => document.querySelector('[data-st-root]').getAttribute('data-st-pending') === '0' &&
      !document.querySelector('.st-loading'));
    await untilServer(page, base, 'li[data-key="3"] input', true, 'kill9: the click in flight at the kill', 10000, 'checked');
    await page.waitForTimeout(600);
    assert(await serverValue(page, base, 'li[data-key="3"] input', 'checked') === true, 'kill9: the click in flight at the kill was applied twice');
    assert(await page.evaluate(() => window.__noReload) === 1, 'kill9: the page reloaded after the second kill');
    console.log(`     kill9: a click in flight at the kill (${answered ? 'answered before it' : 'not answered before it'}) applied once`);
    await checkFresh(page, base, 'kill9: after a kill with a click in flight');
    return page;
  },

  async dashboard(ctx, base) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await noJoin(page, 'dashboard');
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
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'dashboard.png') });
    return page;
  },

  async stream(ctx, base, browser, srv) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    const LIMIT = -20;
    const want = [];
    await checkStream(page, base, 'feed', want, 'stream: initial (empty)');
    const sent = (n) => until(page, (n) => document.getElementById('sent').textContent === String(n), n);
    for (let i = 1; i <= 3; i++) {
      await page.click('#add');
      await sent(i);
      streamInsert(want, i, -1, LIMIT);
    }
    await checkStream(page, base, 'feed', want, 'stream: three added at the end');
    await page.click('#prepend');
    streamInsert(want, 4, 0, LIMIT);
    await checkStream(page, base, 'feed', want, 'stream: one added at the start');
    // A streamed item stays the same element while others come and go.
    await page.evaluate(() => { document.querySelector('#feed li[data-key="3"]').__mark = 1; });
    await page.click('#feed li[data-key="2"] button[title="delete"]');
    want.splice(want.indexOf(2), 1);
    await checkStream(page, base, 'feed', want, 'stream: one deleted');
    await page.click('#burst');
    await sent(54);
    for (let i = 5; i <= 54; i++) streamInsert(want, i, -1, LIMIT);
    await checkStream(page, base, 'feed', want, 'stream: 50 added, the last 20 kept');
    assert(want.length === 20 && want[0] === 35, `stream: the reference keeps ${want}`);
    assert((await page.$$('#feed li')).length === 20, 'stream: the page keeps 20 items');
    // (`caret: 'initial'`: hiding the caret leaves `style=""` on the note
    // field, which a fresh render does not have.)
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'stream.png') });
    // The limit trimmed item 3 away; a burst of one more keeps trimming.
    await page.click('#add');
    await sent(55);
    streamInsert(want, 55, -1, LIMIT);
    await checkStream(page, base, 'feed', want, 'stream: one more, the oldest trimmed');
    await page.evaluate(() => { document.querySelector('#feed li[data-key="40"]').__mark = 1; });
    // A dropped connection resumes: the frames it missed are replayed and
    // the items it held stay (no join frame, which would empty the stream).
    const before = await page.evaluate(() => {
      const c = window.statetemplate.clients[0];
      const b = { hellos: c.hellos, joins: c.joins, seq: c.model.seq };
      c.ws.close();
      return b;
    });
    await until(page, (b) => window.statetemplate.clients[0].hellos === b.hellos + 1, before);
    assert(await page.evaluate(() => window.statetemplate.clients[0].joins) === before.joins, 'stream: the reconnect resynced instead of resuming');
    await checkStream(page, base, 'feed', want, 'stream: after a resumed reconnect');
    assert(await page.evaluate(() => document.querySelector('#feed li[data-key="40"]').__mark === 1), 'stream: a kept item was re-created');
    // A second tab joins: its stream starts empty (the server keeps no
    // items); new items reach both tabs.
    const tab2 = await ctx.newPage();
    await tab2.goto(base);
    await connected(tab2);
    const want2 = [];
    await checkStream(tab2, base, 'feed', want2, 'stream: tab 2 joins empty');
    await tab2.click('#prepend');
    await sent(56);
    streamInsert(want, 56, 0, LIMIT);
    streamInsert(want2, 56, 0, LIMIT);
    await checkStream(page, base, 'feed', want, 'stream: tab 1 after tab 2 added');
    await checkStream(tab2, base, 'feed', want2, 'stream: tab 2 after it added');
    // Deleting an item tab 2 never had is a no-op there.
    await page.click('#feed li[data-key="41"] button[title="delete"]');
    want.splice(want.indexOf(41), 1);
    await checkStream(page, base, 'feed', want, 'stream: tab 1 deleted 41');
    await checkStream(tab2, base, 'feed', want2, 'stream: tab 2 unaffected by deleting 41');
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'stream-two-tabs-1.png') });
    await tab2.screenshot({ caret: 'initial', path: path.join(SHOTS, 'stream-two-tabs-2.png') });
    await tab2.close();
    // Reset empties the stream; items after it fill it again.
    await page.click('#reset');
    want.length = 0;
    await checkStream(page, base, 'feed', want, 'stream: reset');
    await page.click('#add');
    await sent(57);
    streamInsert(want, 57, -1, LIMIT);
    await checkStream(page, base, 'feed', want, 'stream: added after the reset');
    // The restart that follows (kill -9) resumes the same session from the
    // store's frames: no join frame, so the stream keeps its items (checked
    // by the harness against this list).
    srv.stream = { list: 'feed', want };
    return page;
  },

  async chat(ctx, base, browser) {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await page.fill('#name', 'Ada');
    await page.press('#name', 'Tab');
    const other = await newContext(browser);
    const bob = await other.newPage();
    await bob.goto(base);
    await connected(bob);
    await bob.fill('#name', 'Bob');
    await bob.press('#name', 'Tab');
    await page.fill('#text', 'Hello Bob');
    await page.press('#text', 'Enter');
    await until(bob, () => document.getElementById('messages').textContent.includes('AdaHello Bob'));
    await untilServer(bob, base, '#name', 'Bob', 'chat: renamed');
    await untilServer(page, base, '#name', 'Ada', 'chat: renamed');
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
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'chat.png') });
    await other.close();
    // A rename typed but not yet sent (st-change fires on blur), then a
    // reconnect that cannot resume (another epoch: as after a restart with
    // a kept session): the join keeps the typed name and fires change, so
    // the server gets it.
    await page.fill('#name', 'Renamed offline');
    await page.evaluate(() => {
      const c = window.statetemplate.clients[0];
      c.epoch = '0000000000000000';
      c.ws.close();
    });
    await untilServer(page, base, '#name', 'Renamed offline', 'chat: the typed name after a resync');
    assert((await page.inputValue('#name')) === 'Renamed offline', 'chat: the typed name kept');
    return page;
  },
};

/** Every corpus case's frames through the client's DOM layer: after each
 * frame the DOM equals the Rust reference applier's HTML, parsed the same
 * way, markup and form state. Each case runs twice: as parsed, and with
 * every field touched after each frame (its value, checkedness and
 * selectedness set to what they are, as a user's input does), so they no
 * longer follow their attributes and the client itself must set them.
 * (Fixture written by `cargo test --test js_client`.) */
/** Starts instance `i` of the todos demo in a cluster on the test Redis
 * (STATETEMPLATE_REDIS_URL, under `prefix`), with a 1 s lease and no
 * clock: a session renders only on the tabs' events, so an owner can be
 * idle (the clock's renders would each meet the append fence). */
async function startInstance(port, prefix) {
  const bin = path.join(ROOT, 'target/debug/examples/todos');
  const p = spawn(bin, [], {
    env: {
      ...process.env, ADDR: `127.0.0.1:${port}`, STATETEMPLATE_DEBUG: '1', STATETEMPLATE_KEYS: KEY,
      STATETEMPLATE_STORE: 'redis', STATETEMPLATE_REDIS_PREFIX: prefix, STATETEMPLATE_LEASE_MS: '1000',
      STATETEMPLATE_CLOCK_MS: '0',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  servers.add(p);
  p.once('exit', () => servers.delete(p));
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('a todos instance did not start')), 20000);
    let buf = '';
    p.stdout.on('data', (d) => {
      if (buf === null) return;
      buf += d;
      if (!buf.includes('listening on')) return;
      clearTimeout(t);
      if (buf.includes('sessions are kept in Redis')) resolve();
      else reject(new Error(`todos does not keep its sessions in Redis (built without the redis feature?): ${buf}`));
      buf = null;
    });
    p.once('exit', (code) => { clearTimeout(t); reject(new Error(`todos exited with ${code}`)); });
  });
  return p;
}

/** Two instances of the todos demo share one Redis; two tabs of one
 * browser session, one on each (the session lives on A, where it was made;
 * B's tab follows it: loading the page on B does not move it). Both stay
 * equal to a fresh render after every step from either; text typed in one
 * survives the other's changes; when A is killed, B's click made meanwhile
 * is applied once after B took the session over, and A's tab, once A is
 * back, catches up and keeps what was typed in it; when B then stalls for
 * longer than the lease, A takes the session, and B's tab, once B resumes,
 * shows what A rendered, with its typed text. */
/** Live template edits: the todos demo reads its template from a copy;
 * edited while a page is open, the page shows the edit on its next render
 * (the clock's), with what the user is typing, the focus and the caret
 * intact, in the same document and socket. */
async function liveEdits(browser) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'st-edits-'));
  const original = readFileSync(path.join(ROOT, 'templates/todos.html'), 'utf8');
  writeFileSync(path.join(dir, 'todos.html'), original);
  const proc = await startServer('edits', port, { STATETEMPLATE_TEMPLATES: dir });
  const ctx = await newContext(browser);
  const checks0 = checks;
  try {
    const page = await ctx.newPage();
    await page.goto(base);
    await connected(page);
    await checkFresh(page, base, 'edits: initial');
    await page.click('#new');
    await page.keyboard.type('half typed');
    await page.keyboard.press('ArrowLeft');
    const hellos = await page.evaluate(() => { window.__same = 1; return window.statetemplate.clients[0].hellos; });
    writeFileSync(path.join(dir, 'todos.html'), original.replace('<h1>Todos</h1>', '<h1 class="edited">Things to do</h1><p id="hint">Edited while you typed.</p>'));
    await until(page, () => document.querySelector('h1.edited') && document.getElementById('hint'));
    const s = await page.evaluate(() => {
      const a = document.activeElement;
      return [window.__same, window.statetemplate.clients[0].hellos, a.id, a.value, a.selectionStart];
    });
    assert(s[0] === 1 && s[1] === hellos, `edits: the same document and socket: ${s}`);
    assert(s[2] === 'new' && s[3] === 'half typed' && s[4] === 9, `edits: focus, typed text and caret survive the switch: ${s}`);
    await checkFresh(page, base, 'edits: after the edit', { '#new': 'half typed' });
    await page.screenshot({ caret: 'initial', path: path.join(SHOTS, 'edits.png') });
    await page.keyboard.press('Enter');
    await until(page, () => [...document.querySelectorAll('#list .text')].some((t) => t.textContent === 'half typed'));
    await checkFresh(page, base, 'edits: the page diffs as usual after it');
    assert(checks - checks0 >= 3, 'edits: checks ran');
    console.log(`ok   edits (${checks - checks0} checks)`);
  } finally {
    await ctx.close();
    await stopServer(proc);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function twoInstances(browser) {
  assert(process.env.STATETEMPLATE_REDIS_URL, 'cluster: STATETEMPLATE_REDIS_URL is not set (scripts/test.sh starts a Redis and sets it)');
  const prefix = `st-browser:${process.pid}:${Date.now()}:`;
  const [pa, pb] = [await freePort(), await freePort()];
  const [a, b] = [`http://127.0.0.1:${pa}`, `http://127.0.0.1:${pb}`];
  let srvA = await startInstance(pa, prefix);
  const srvB = await startInstance(pb, prefix);
  const ctx = await newContext(browser);
  const errors = [];
  ctx.on('page', (p) => p.on('pageerror', (e) => errors.push(String(e))));
  const checks0 = checks;
  try {
    const t1 = await ctx.newPage();
    await t1.goto(a);
    await connected(t1);
    await checkFresh(t1, a, 'cluster: tab 1 on A');
    const hellos = (p) => p.evaluate(() => window.statetemplate.clients[0].hellos);
    const h0 = await hellos(t1);
    // The same browser (cookies are per host, not per port) on B.
    const t2 = await ctx.newPage();
    await t2.goto(b);
    await connected(t2);
    await checkFresh(t2, b, 'cluster: tab 2 on B');
    await t1.waitForTimeout(300);
    assert((await hellos(t1)) === h0, 'cluster: loading the page on B moved the session (tab 1 had to reconnect)');
    // Every event is answered (its loading state ends) on both instances.
    const answered = (p) => until(p, () => !document.querySelector('.st-loading'), undefined, 5000);
    const both = async (label) => {
      await answered(t1);
      await answered(t2);
      await checkFresh(t1, a, `${label} (tab 1, on A)`);
      await checkFresh(t2, b, `${label} (tab 2, on B)`);
    };
    const texts = (p) => p.evaluate(() => [...document.querySelectorAll('#list .text')].map((t) => t.textContent));
    await t1.fill('#new', 'Added on A');
    await t1.press('#new', 'Enter');
    await until(t2, () => [...document.querySelectorAll('#list .text')].some((t) => t.textContent === 'Added on A'));
    await both('cluster: added from A');
    await t2.fill('#new', 'Added on B');
    await t2.press('#new', 'Enter');
    await until(t1, () => [...document.querySelectorAll('#list .text')].some((t) => t.textContent === 'Added on B'));
    await both('cluster: added from B');
    await t2.click('li[data-key="1"] input[type=checkbox]');
    await until(t1, () => document.querySelector('li[data-key="1"]').className === 'done');
    await both('cluster: ticked on B');
    // Tab 1 types and does not send; tab 2 adds: the typed text stays.
    await t1.fill('#new', 'typing on A');
    await t2.fill('#new', 'Second from B');
    await t2.press('#new', 'Enter');
    await until(t1, () => [...document.querySelectorAll('#list .text')].some((t) => t.textContent === 'Second from B'));
    assert((await t1.inputValue('#new')) === 'typing on A', `cluster: tab 1's typed text: ${JSON.stringify(await t1.inputValue('#new'))}`);
    await answered(t2);
    await checkFresh(t1, a, 'cluster: tab 1 while typing', { '#new': 'typing on A' });
    await checkFresh(t2, b, 'cluster: tab 2 while tab 1 types');
    assert(JSON.stringify(await texts(t1)) === JSON.stringify(await texts(t2)), 'cluster: both tabs show the same list');
    await t1.screenshot({ caret: 'initial', path: path.join(SHOTS, 'cluster-tab-a.png') });
    await t2.screenshot({ caret: 'initial', path: path.join(SHOTS, 'cluster-tab-b.png') });
    // A (the owner) is killed. Tab 2 clicks "remove" meanwhile: the click
    // waits, and is applied once when B has taken the session over (within
    // the lease).
    const before = (await texts(t2)).length;
    const h2 = await hellos(t2);
    await stopServer(srvA);
    await t2.click('li[data-key="2"] button[title="remove"]');
    await until(t2, (n) => document.querySelectorAll('#list li').length === n - 1, before, 15000);
    assert((await hellos(t2)) > h2, 'cluster: tab 2 reconnected after the owner died');
    await connected(t2);
    await answered(t2);
    await checkFresh(t2, b, 'cluster: tab 2 after the owner died');
    await t2.waitForTimeout(600);
    assert((await texts(t2)).length === before - 1, 'cluster: the click was applied once');
    await t2.screenshot({ caret: 'initial', path: path.join(SHOTS, 'cluster-after-owner-died.png') });
    // A comes back: its tab reconnects (to A, which now follows B), catches
    // up, and still holds what was typed.
    srvA = await startInstance(pa, prefix);
    await until(t1, (n) => document.querySelectorAll('#list li').length === n - 1, before, 15000);
    await connected(t1);
    await checkFresh(t1, a, 'cluster: tab 1 after A came back', { '#new': 'typing on A' });
    assert((await t1.inputValue('#new')) === 'typing on A', 'cluster: the typed text survived');
    await t1.screenshot({ caret: 'initial', path: path.join(SHOTS, 'cluster-a-back.png') });
    // B, the owner now, stalls (SIGSTOP) for longer than the lease: A takes
    // it for gone, tab 1 reconnects and A claims the session; tab 1 adds an
    // item there while tab 2, on the stalled B, is typed into. When B
    // resumes, its first beat finds its instance key gone: it lets go of
    // its copy, and tab 2 reconnects to the page A renders, keeping what
    // was typed in it. (Before, tab 2 stayed on B's copy, which nobody
    // rendered any more.)
    const h1 = await hellos(t1);
    const h2s = await hellos(t2);
    await t1.fill('#new', '');
    process.kill(srvB.pid, 'SIGSTOP');
    try {
      await t2.fill('#new', 'typed on B while it stalled');
      await until(t1, (h) => window.statetemplate.clients[0].hellos > h && document.documentElement.classList.contains('st-connected'), h1, 15000);
      await t1.fill('#new', 'Added on A while B stalled');
      await t1.press('#new', 'Enter');
      await until(t1, () => [...document.querySelectorAll('#list .text')].some((t) => t.textContent === 'Added on A while B stalled'));
      await answered(t1);
    } finally {
      process.kill(srvB.pid, 'SIGCONT');
    }
    await until(t2, () => [...document.querySelectorAll('#list .text')].some((t) => t.textContent === 'Added on A while B stalled'), undefined, 15000);
    assert((await hellos(t2)) > h2s, 'cluster: tab 2 reconnected after its instance stalled');
    await connected(t2);
    await answered(t2);
    await checkFresh(t1, a, 'cluster: tab 1 after B stalled');
    await checkFresh(t2, b, 'cluster: tab 2 after B stalled', { '#new': 'typed on B while it stalled' });
    assert((await t2.inputValue('#new')) === 'typed on B while it stalled', `cluster: tab 2's typed text after the stall: ${JSON.stringify(await t2.inputValue('#new'))}`);
    assert(JSON.stringify(await texts(t1)) === JSON.stringify(await texts(t2)), 'cluster: both tabs show the same list after the stall');
    await t2.screenshot({ caret: 'initial', path: path.join(SHOTS, 'cluster-b-stalled.png') });
    assert(errors.length === 0, `cluster: page errors: ${errors.join('; ')}`);
    assert(checks - checks0 >= 13, `cluster: ${checks - checks0} checks against a fresh render, expected 13`);
    console.log(`ok   cluster (two instances, ${checks - checks0} checks)`);
  } finally {
    await ctx.close();
    await stopServer(srvA);
    await stopServer(srvB);
  }
}

async function corpusInTheDom(browser) {
  const fixture = path.join(ROOT, 'target/browser/corpus-frames.json');
  const cases = JSON.parse(readFileSync(fixture, 'utf8')).cases;
  const page = await browser.newPage();
  await page.setContent('<!doctype html><html><body><div id="root"></div></body></html>');
  await page.evaluate(installFormDiff);
  await page.addScriptTag({ content: CLIENT });
  const results = await page.evaluate((cases) => {
    const out = [];
    out.read = 0;
    out.declined = [];
    out.unread = [];
    const root = document.getElementById('root');
    // As a user's input would, then back: the field's state is now its own.
    const touch = () => {
      for (const f of root.querySelectorAll('input, textarea, select')) {
        if (f.type === 'checkbox' || f.type === 'radio') {
          const c = f.checked;
          f.checked = !c;
          f.checked = c;
        } else if (f.localName !== 'select') {
          const v = f.value;
          f.value = v + '!';
          f.value = v;
        } else if (!f.multiple) {
          const i = f.selectedIndex;
          f.selectedIndex = i ? 0 : f.options.length - 1;
          f.selectedIndex = i;
        } else {
          for (const o of f.options) {
            const s = o.selected;
            o.selected = !s;
            o.selected = s;
          }
        }
      }
    };
    // As a user would type, tick and pick, without sending: every text
    // field, check box and single select gets a value of the user's own.
    const TEXTY = new Set(['text', 'search', 'email', 'url', 'tel', 'password']);
    const server = (f) => f.localName === 'select'
      ? [...f.options].map((o) => (o.defaultSelected ? '1' : '0') + o.value).join('|')
      : f.type === 'checkbox' ? f.defaultChecked : f.defaultValue;
    const live = (f) => f.localName === 'select'
      ? [...f.options].map((o) => (o.selected ? '1' : '0')).join('')
      : f.type === 'checkbox' ? f.checked : f.value;
    // A fresh parse of the field's markup (a select with no option marked
    // selected shows its first).
    const parsed = document.createElement('div');
    const fresh = (f) => {
      if (f.localName !== 'select') return f.type === 'checkbox' ? f.defaultChecked : f.defaultValue;
      parsed.innerHTML = f.outerHTML;
      return live(parsed.firstElementChild);
    };
    const type = (n) => {
      const typed = new Map();
      for (const f of root.querySelectorAll('input, textarea, select')) {
        if (f.localName === 'textarea' || f.localName === 'input' && TEXTY.has(f.type)) f.value = `typed ${n}`;
        else if (f.type === 'checkbox') f.checked = !f.checked;
        else if (f.localName === 'select' && !f.multiple && f.options.length > 1) f.selectedIndex = (f.selectedIndex + 1) % f.options.length;
        else continue;
        typed.set(f, { server: server(f), live: live(f) });
      }
      return typed;
    };
    // After a step: a field the user changed keeps the user's state unless
    // the server's rendered state for it changed; others show the server's.
    const kept = (typed) => {
      let n = 0;
      for (const f of root.querySelectorAll('input, textarea, select')) {
        const t = typed.get(f);
        if (!t) continue;
        n++;
        const want = t.server === server(f) ? t.live : fresh(f);
        const why = t.server === server(f) ? 'the user\'s (the server did not change it)' : 'the server\'s new one';
        if (live(f) !== want) return { n, diff: `${f.outerHTML}: ${JSON.stringify(live(f))}, not ${why} ${JSON.stringify(want)}` };
      }
      return { n, diff: null };
    };
    for (const c of cases) {
      for (const mode of ['fresh', 'touched', 'typed', 'paged']) {
        root.innerHTML = '';
        const model = new window.statetemplate.Model();
        const dom = new window.statetemplate.Dom(root);
        const probe = document.createElement('div');
        let error = null;
        let step = 0;
        let fields = 0;
        let typed = new Map();
        try {
          for (; step < c.frames.length; step++) {
            const f = JSON.parse(c.frames[step]);
            if (step === 0 && mode === 'paged') {
              // As a client served the page: the model read from its DOM
              // with the statics alone (what the hello carries), no join.
              // The server sends none for a page it knows does not read.
              if (c.statics === null) {
                out.unread.push(c.name);
                break;
              }
              root.innerHTML = c.html[0];
              window.statetemplate.remember(root);
              model.statics(JSON.parse(c.statics));
              model.seq = f.q;
              model.root = model.read(root);
              if (!model.root) {
                out.declined.push(c.name);
                break;
              }
              probe.innerHTML = model.toHtml();
              const served = document.createElement('div');
              served.innerHTML = c.html[0];
              if (window.__markup(probe) !== window.__markup(served)) {
                error = `the model read from the page renders otherwise\n  read: ${probe.innerHTML}\n  page: ${served.innerHTML}`;
                break;
              }
              out.read++;
              continue;
            }
            const acts = model.apply(f);
            for (const a of acts) dom.act(a, model);
            if (step === 0) window.statetemplate.remember(root);
            probe.innerHTML = c.html[step];
            if (window.__markup(probe) !== window.__markup(root)) {
              error = `step ${step}: DOM differs\n  dom:  ${root.innerHTML}\n  want: ${probe.innerHTML}`;
              break;
            }
            const form = mode === 'typed' ? kept(typed) : window.__formDiff(root, probe);
            if (form.diff) {
              error = `step ${step}: form state differs: ${form.diff}\n  html: ${probe.innerHTML}`;
              break;
            }
            fields += form.n;
            if (mode === 'touched') touch();
            if (mode === 'typed') typed = type(step);
          }
        } catch (e) {
          error = `step ${step}: ${e}`;
        }
        out.push({ name: c.name + (mode === 'fresh' ? '' : ` (${mode})`), steps: step, fields, error, mode });
      }
    }
    return { runs: out, read: out.read, declined: out.declined, unread: out.unread };
  }, cases);
  await page.close();
  const { read, declined, unread } = results;
  console.log(`corpus in the DOM: ${read} of ${cases.length} pages read from their DOM without a join; the client declined ${declined.length} (${declined.join(', ') || 'none'}), the server ${unread.length} (${unread.join(', ')})`);
  // What reads: text, attribute values, keyed items, branches, includes,
  // blocks; what declines (a join instead) is markup in a slot without an
  // anchor, two slots with nothing between them, a slot in a tag.
  for (const want of ['01_scalar', '02_if_flip', '04_keyed_list', '06_table_in_if', '18_duplicates', '30_keyed_1000', '33_index_shift', '35_tojson']) {
    for (const n of [want, want + '/reversed']) assert(!declined.includes(n) && !unread.includes(n), `corpus ${n}: the page did not read from its DOM`);
  }
  assert(read >= 30, `only ${read} of ${cases.length} corpus pages read from the DOM`);
  let steps = 0;
  let fields = 0;
  const failed = [];
  const runs = results.runs;
  for (const r of runs) {
    steps += r.steps;
    fields += r.fields;
    if (r.error) failed.push(`${r.name}: ${r.error}`);
  }
  for (const f of failed) console.log('FAIL corpus ' + f);
  console.log(`corpus in the DOM: ${runs.length} runs of ${cases.length} cases, ${steps} frames, ${fields} form fields compared, ${failed.length} failed`);
  // A run that checks nothing fails: every corpus file in both orders, the
  // form-state cases among them, the live template edits, every frame
  // applied.
  const files = readdirSync(path.join(ROOT, 'tests/corpus')).filter((f) => f.endsWith('.txt'));
  assert(cases.length === 2 * files.length + 1, `the fixture has ${cases.length} cases for ${files.length} corpus files and the edits (rerun cargo test --test js_client)`);
  assert(cases.some((c) => c.name === 'live-template-edits'), 'the fixture has no live template edits');
  assert(files.length >= 22, `only ${files.length} corpus files`);
  for (const want of ['21_textarea_inputs', '22_select']) {
    assert(cases.some((c) => c.name === want), `the fixture has no case ${want}`);
  }
  const frames = cases.reduce((n, c) => n + c.frames.length, 0);
  assert(runs.length === 4 * cases.length, `ran ${runs.length} of ${4 * cases.length} corpus runs`);
  // A declined page stops its paged run before its first frame.
  const notRead = cases.filter((c) => declined.includes(c.name) || unread.includes(c.name)).reduce((n, c) => n + c.frames.length, 0);
  assert(failed.length || steps === 4 * frames - notRead, `applied ${steps} of ${4 * frames - notRead} frames`);
  const typedFields = runs.filter((r) => r.mode === 'typed').reduce((n, r) => n + r.fields, 0);
  console.log(`corpus in the DOM: ${typedFields} fields the user had changed checked after the next frame`);
  assert(typedFields >= 100, `only ${typedFields} typed fields checked`);
  assert(frames >= 150, `only ${frames} corpus frames`);
  assert(fields >= 650, `only ${fields} form fields compared`);
  return failed;
}

const unknown = only.filter((n) => !['corpus', 'cluster', 'edits'].includes(n) && !(n in examples));
if (unknown.length) {
  console.log(`unknown test(s): ${unknown.join(', ')} (corpus, cluster, edits, ${Object.keys(examples).join(', ')})`);
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
/** A browser context whose pages can compare form state. */
async function newContext(browser) {
  const ctx = await browser.newContext();
  await ctx.addInitScript(installFormDiff);
  return ctx;
}

// The least each example checks against a fresh render (restart included):
// a check skipped by mistake fails the run.
const MIN_CHECKS = { uploads: 3, pages: 7, counter: 14, todos: 14, kill9: 7, dashboard: 7, stream: 15, chat: 5 };
let ran = 0;
try {
  if (!only.length || only.includes('corpus')) {
    try {
      failures += (await corpusInTheDom(browser)).length;
    } catch (e) {
      failures++;
      console.log(`FAIL corpus: ${e.stack || e}`);
    }
    ran++;
  }
  if (!only.length || only.includes('edits')) {
    try {
      await liveEdits(browser);
    } catch (e) {
      failures++;
      console.log(`FAIL edits: ${e.stack || e}`);
    }
    ran++;
  }
  if (!only.length || only.includes('cluster')) {
    try {
      await twoInstances(browser);
    } catch (e) {
      failures++;
      console.log(`FAIL cluster: ${e.stack || e}`);
    }
    ran++;
  }
  for (const [name, run] of Object.entries(examples)) {
    if (only.length && !only.includes(name)) continue;
    ran++;
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const srv = { name, port, proc: await startServer(name, port) };
    const served = await (await fetch(`${base}/statetemplate/client.js`)).text();
    if (served !== CLIENT) {
      console.log(`FAIL ${name}: it serves another client than target/browser/client.served.js (run cargo test --test js_client and cargo build --examples)`);
      failures++;
      await stopServer(srv.proc);
      continue;
    }
    const ctx = await newContext(browser);
    const errors = [];
    ctx.on('page', (p) => p.on('pageerror', (e) => errors.push(String(e))));
    const started = Date.now();
    const checks0 = checks;
    try {
      const page = await run(ctx, base, browser, srv);
      await restartRecovers(srv, page, base);
      await page.screenshot({ caret: 'initial', path: path.join(SHOTS, `${name}-recovered.png`) });
      assert(errors.length === 0, `${name}: page errors: ${errors.join('; ')}`);
      assert(checks - checks0 >= MIN_CHECKS[name], `${name}: ${checks - checks0} checks against a fresh render, expected ${MIN_CHECKS[name]}`);
      console.log(`ok   ${name} (${checks - checks0} checks, ${Date.now() - started} ms)`);
    } catch (e) {
      failures++;
      console.log(`FAIL ${name}: ${e.stack || e}`);
    } finally {
      await ctx.close();
      await stopServer(srv.proc);
    }
  }
} finally {
  await browser.close();
  cleanUp();
}
const want = only.length ? new Set(only).size : 3 + Object.keys(examples).length;
console.log(`${ran} test(s) run; in the examples ${checks} DOM-vs-fresh-render checks (markup and ${fieldChecks} form fields); screenshots in ${SHOTS}`);
if (ran !== want) {
  console.log(`ran ${ran} of ${want} tests`);
  failures++;
}
if (failures) {
  console.log(`${failures} failure(s)`);
  process.exit(1);
}
