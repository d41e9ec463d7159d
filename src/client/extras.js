/* statetemplate extras (served at {prefix}/extras.js, after the client, to
 * pages that use them: Live::client_extras): JS hooks, live navigation.
 *
 * Hooks (docs/hooks.md): JS for elements the server renders.
 * An element with st-hook="Name" gets the callbacks of window.StHooks.Name:
 * mounted() when it appears (on load, or when a frame inserts it),
 * updated() after a frame changed it or what it holds, destroyed() when a
 * frame removed it. In them, this.el is the element,
 * this.pushEvent(name, payload) sends an event to the server and returns a
 * promise of the handler's reply (EventCtx::reply), and
 * this.handleEvent(name, fn) calls fn(payload) for each event the server
 * pushes with that name (Session::push). No build step, no dependencies. */
(function () {
  'use strict';
  var live = new Map(); // element -> its hook instance
  var changed = [];     // what the last frame touched

  function clientOf(el) {
    var cs = (window.statetemplate && window.statetemplate.clients) || [];
    for (var i = 0; i < cs.length; i++) if (cs[i].el.contains(el)) return cs[i];
    return null;
  }

  function make(el, name, def) {
    var h = Object.create(def);
    h.el = el;
    h.__name = name;
    h.__on = [];
    h.pushEvent = function (event, payload) {
      return new Promise(function (resolve, reject) {
        var c = clientOf(el);
        if (!c) return reject(new Error('statetemplate: the element is not in a live page'));
        c.emit({ t: 'ev', n: event, d: payload }, el, function (err, reply) {
          if (err) reject(Object.assign(new Error(err.msg || err.code), { code: err.code }));
          else resolve(reply === undefined ? null : reply);
        });
      });
    };
    h.handleEvent = function (event, fn) { h.__on.push([event, fn]); };
    return h;
  }

  function call(h, what) {
    if (typeof h[what] !== 'function') return;
    try { h[what](); } catch (e) { if (window.console) console.error('statetemplate: hook ' + h.__name + '.' + what, e); }
  }

  function touched(el) {
    for (var i = 0; i < changed.length; i++) {
      var n = changed[i];
      if (el === n || el.contains(n)) return true;
    }
    return false;
  }

  /* Mounts new hook elements, updates the changed ones, destroys the gone. */
  function scan() {
    var defs = window.StHooks || {}, seen = new Set(), els = document.querySelectorAll('[st-hook]'), i;
    for (i = 0; i < els.length; i++) {
      var el = els[i], name = el.getAttribute('st-hook'), h = live.get(el);
      if (h && h.__name !== name) { live.delete(el); call(h, 'destroyed'); h = null; }
      var def = defs[name];
      if (!h && def) {
        h = make(el, name, def);
        live.set(el, h);
        call(h, 'mounted');
      } else if (h && touched(el)) call(h, 'updated');
      else if (!def && window.console) console.warn('statetemplate: no hook ' + name + ' in window.StHooks');
      seen.add(el);
    }
    live.forEach(function (h, el) {
      if (!seen.has(el) || !el.isConnected) { live.delete(el); call(h, 'destroyed'); }
    });
    changed = [];
  }

  /* Mutations outside frames (a hook drawing in its element) are dropped
   * as they are delivered; a frame's are taken when it fires st:update. */
  var mo = new MutationObserver(function () { /* not a frame's */ });
  function take() {
    mo.takeRecords().forEach(function (r) { changed.push(r.target); });
  }

  document.addEventListener('st:update', function () { take(); scan(); });
  document.addEventListener('st:push', function (e) {
    var d = e.detail || {};
    live.forEach(function (h, el) {
      if (!e.target.contains(el)) return;
      for (var i = 0; i < h.__on.length; i++) {
        if (h.__on[i][0] !== d.name) continue;
        try { h.__on[i][1].call(h, d.payload); } catch (x) { if (window.console) console.error(x); }
      }
    });
  });

  function start() {
    mo.observe(document.documentElement, { subtree: true, childList: true, attributes: true, characterData: true });
    scan();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
  window.statetemplateHooks = { scan: scan, live: live };

  /* Live navigation (docs/navigation.md): a link with st-patch changes the
   * URL and sends its parameters (st:params, Live::on_params); one with
   * st-navigate goes to another live page over the same socket
   * (st:navigate, Live::on_navigate), or loads it as a plain page when the
   * server refuses. Back and forward send what the URL they go to needs:
   * its parameters on the same path, a navigation to another. */
  var here = location.pathname;
  function go(href, navigate, push) {
    var u = new URL(href, location.href), cs = window.statetemplate && window.statetemplate.clients;
    if (u.origin !== location.origin || !cs || !cs[0]) return false;
    var q = {};
    u.searchParams.forEach(function (v, k) { q[k] = v; });
    if (push) history.pushState({ st: 1 }, '', u.href);
    here = u.pathname;
    cs[0].emit({ t: 'ev', n: navigate ? 'st:navigate' : 'st:params', d: { path: u.pathname, query: q } }, cs[0].el, function (err) {
      if (err && navigate) location.assign(u.href);
    });
    return true;
  }
  document.addEventListener('click', function (e) {
    var a = e.target.closest && e.target.closest('a[st-patch], a[st-navigate]');
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    if (go(a.href, a.hasAttribute('st-navigate'), true)) e.preventDefault();
  });
  window.addEventListener('popstate', function () {
    go(location.href, location.pathname !== here, false);
  });

  /* Uploads (docs/uploads.md): each file chosen in <input type=file
   * st-upload=NAME> goes to {prefix}/upload/NAME over HTTP, one at a time,
   * with the session's token. A <progress st-upload-progress=NAME> shows
   * its progress (and goes back to what the server rendered after), an
   * element with st-upload-cancel=NAME aborts it (until it is sent whole).
   * After an abort or a failed request the client asks the server what
   * became of the file (stopped before its handler, or the handler's
   * answer: "cancelled" or "failed" is never said of a file the server
   * kept), and the input fires
   * st:upload events ({name, file, loaded, total, done, error}). A refusal
   * shows in the page's [st-flash] element. */
  var sending = {};
  function upload(c, name, input, files) {
    var f = files.shift();
    if (!f) { input.value = ''; return; }
    var x = new XMLHttpRequest(), bar = document.querySelector('[st-upload-progress="' + name + '"]');
    var was = bar && [bar.getAttribute('value'), bar.getAttribute('max')];
    var tell = function (d) {
      d.name = name; d.file = f.name;
      input.dispatchEvent(new CustomEvent('st:upload', { detail: d, bubbles: true }));
    };
    var end = function (err) {
      delete sending[name];
      if (bar) ['value', 'max'].forEach(function (a, i) { if (was[i] === null) bar.removeAttribute(a); else bar.setAttribute(a, was[i]); });
      if (err) { c.flash({ t: 'error', code: 'user', msg: err }); tell({ error: err }); input.value = ''; return; }
      tell({ done: true });
      upload(c, name, input, files);
    };
    sending[name] = x;
    /* The id a cancel names: after an abort, the server says whether the
     * file was stopped in time or what its handler answered. */
    var id = [].map.call(crypto.getRandomValues(new Uint8Array(12)), function (b) { return (b + 256).toString(16).slice(1); }).join('');
    var at = function (path) {
      return c.el.getAttribute('data-st-ws').replace(/ws$/, 'upload/') + encodeURIComponent(name) + path +
        '?sid=' + encodeURIComponent(c.sid) + '&token=' + encodeURIComponent(c.token);
    };
    var answer = function (status, text) {
      var r = {};
      try { r = JSON.parse(text); } catch (e) { /* not JSON */ }
      end(status === 200 && !r.cancelled ? null : r.cancelled && x.cancel ? 'The upload was cancelled.' : r.error || 'The upload failed.');
    };
    x.open('POST', at(''));
    x.setRequestHeader('Content-Type', f.type || 'application/octet-stream');
    x.setRequestHeader('X-St-File', encodeURIComponent(f.name));
    x.setRequestHeader('X-St-Upload-Id', id);
    x.upload.onprogress = function (p) {
      if (bar && p.lengthComputable) { bar.max = p.total; bar.value = p.loaded; }
      tell({ loaded: p.loaded, total: p.total });
    };
    x.onload = function () { answer(x.status, x.responseText); };
    /* A failed request (the connection went away) may still have brought
     * the whole file: it asks, as a cancel does. */
    x.onerror = x.onabort = function () {
      var y = new XMLHttpRequest();
      y.open('POST', at('/cancel'));
      y.setRequestHeader('X-St-Upload-Id', id);
      y.onload = function () { answer(y.status, y.responseText); };
      y.onerror = function () { end('The upload was stopped; reload the page to see whether it arrived.'); };
      y.send();
    };
    /* Sent whole: the server has the file; a cancel would change nothing. */
    x.upload.onload = function () { x.sent = 1; };
    x.send(f);
  }
  document.addEventListener('change', function (e) {
    var t = e.target, name = t.getAttribute && t.getAttribute('st-upload'), c = name && clientOf(t);
    if (c && t.files && t.files.length && !sending[name]) upload(c, name, t, [].slice.call(t.files));
  });
  document.addEventListener('click', function (e) {
    var b = e.target.closest && e.target.closest('[st-upload-cancel]');
    var x = b && sending[b.getAttribute('st-upload-cancel')];
    if (x && !x.sent) { e.preventDefault(); x.cancel = 1; x.abort(); }
  });
})();
