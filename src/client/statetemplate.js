/* statetemplate client, wire protocol v2 (docs/protocol.md). No build step.
 * Mirrors the Rust reference applier (src/apply.rs, WireClient): the model
 * below turns the same frames into the same HTML; the DOM layer patches the
 * page between comment anchors, keeping focus, caret and typed text. */
(function () {
  'use strict';
  /* A keyed item starts with <!--:KEY--> and runs to the next marker or
   * its list's close. The server's page also has <!--;--> (the previous
   * key plus one, integers written plainly) and runs (<!--*KEY-->: each
   * element after it the next item); the client writes them out as it
   * indexes the page, and writes its own HTML with every key. */
  function mark(k) { return '<!--:' + k + '-->'; }
  function int(k) { return /^(0|[1-9]\d{0,14})$/.test(k) ? +k : null; }

  function fail(m) { throw new Error('statetemplate: ' + m); }
  function isList(d) { return d !== null && typeof d === 'object' && !Array.isArray(d); }
  function isId(n) { return typeof n === 'number' && n >= 0 && n % 1 === 0 && n <= 9007199254740991; }
  /* Ids and keys travel as JSON numbers when they are integers. */
  function addr(a) {
    if (isId(a)) return String(a);
    if (typeof a !== 'string') fail('bad fragment id');
    return a;
  }
  function key(k) {
    if (isId(k)) return String(k);
    if (typeof k !== 'string') fail('bad key');
    return k;
  }
  var CODES = { '+': 1, '-': 1, '~': 1, '*': 1, '/': 1, '!': 1, '#': 1 };

  /* ---- The model: statics table and tree of dynamic values. ---- */
  function Model() { this.st = {}; this.root = null; this.seq = 0; }

  /* A frame is an array (the next seq; statics entries may lead it) or an
   * object stating its seq (a join, which resets the statics). */
  Model.prototype.apply = function (f) {
    var ops, i, acts = [];
    if (Array.isArray(f)) {
      ops = f;
      if (isList(ops[0])) { this.statics(ops[0]); ops = ops.slice(1); }
      if (!ops.length) fail('no ops');
    } else if (isList(f)) {
      if (!isId(f.q)) fail('no seq');
      if (!Array.isArray(f.o) || !f.o.length) fail('no ops');
      ops = f.o;
      var o0 = ops[0];
      if (Array.isArray(o0) && o0.length === 2 && o0[0] === '' && Array.isArray(o0[1])) this.st = {};
      if (f.s !== undefined) { if (!isList(f.s)) fail('bad statics'); this.statics(f.s); }
    } else fail('bad frame');
    for (i = 0; i < ops.length; i++) acts = acts.concat(this.op(ops[i]));
    this.seq = Array.isArray(f) ? this.seq + 1 : f.q;
    return acts;
  };

  Model.prototype.statics = function (s) {
    for (var k in s) {
      var e = s[k], j;
      if (!/^\d+$/.test(k) || !Array.isArray(e) || !Array.isArray(e[0]) || !Array.isArray(e[1]) ||
        e[0].length !== e[1].length + 1 || e.length > 3) fail('bad statics');
      if (e.length > 2) {
        if (!Array.isArray(e[2]) || e[2].length !== e[1].length) fail('bad counters');
        for (j = 0; j < e[2].length; j++) if (!isId(e[2][j]) || e[2][j] > 2) fail('bad counter');
      }
      for (j = 0; j < e[0].length; j++) if (typeof e[0][j] !== 'string') fail('bad static');
      for (j = 0; j < e[1].length; j++) {
        if (e[1][j] === 0) e[1][j] = null;
        else if (isId(e[1][j])) e[1][j] = String(e[1][j]);
        else if (typeof e[1][j] !== 'string') fail('bad anchor');
      }
      this.st[k] = e;
    }
  };

  Model.prototype.body = function (b) {
    if (!Array.isArray(b) || typeof b[0] !== 'number') fail('bad body');
    var s = this.st[b[0]];
    if (!s) fail('unknown statics ' + b[0]);
    if (s[0].length !== b.length) fail('bad body');
    for (var i = 1; i < b.length; i++) this.dyn(b[i]);
    return b;
  };

  Model.prototype.dyn = function (d) {
    if (typeof d === 'string') return d;
    if (Array.isArray(d)) return this.body(d);
    if (isList(d)) return this.list(d);
    fail('bad dynamic');
  };

  Model.prototype.list = function (l) {
    if (l.e) { this.body(l.e); return l; }
    if (!Array.isArray(l.k) || !Array.isArray(l.b) || l.k.length !== l.b.length) fail('bad list');
    var seen = {};
    for (var i = 0; i < l.b.length; i++) {
      l.k[i] = key(l.k[i]);
      if (seen['$' + l.k[i]]) fail('key twice');
      seen['$' + l.k[i]] = 1;
      this.body(l.b[i]);
    }
    return l;
  };

  /* Finds the slot anchored as id: {o: container, i: index}. */
  Model.prototype.find = function (b, id) {
    var s = this.st[b[0]];
    if (!s) return null;
    var a = s[1], i, r, d, j;
    for (i = 0; i < a.length; i++) if (a[i] === id) return { o: b, i: i + 1 };
    for (i = 1; i < b.length; i++) {
      d = b[i];
      if (Array.isArray(d)) { if ((r = this.find(d, id))) return r; }
      else if (isList(d)) {
        if (d.e && (r = this.find(d.e, id))) return r;
        if (d.b) for (j = 0; j < d.b.length; j++) if ((r = this.find(d.b[j], id))) return r;
      }
    }
    return null;
  };

  Model.prototype.slot = function (id) {
    if (!this.root) fail('no page');
    var r = this.find(this.root, id);
    if (!r) fail('no fragment ' + id);
    return r;
  };

  Model.prototype.listOf = function (id) {
    var r = this.slot(id), l = r.o[r.i];
    if (!isList(l)) fail('fragment ' + id + ' is not a list');
    return l;
  };

  Model.prototype.stream = function (id) {
    var l = this.listOf(id);
    if (l.e) fail('fragment ' + id + ' is not a stream');
    return l;
  };

  Model.prototype.item = function (l, key) {
    var i = l.k ? l.k.indexOf(key) : -1;
    if (i < 0) fail('no such item ' + key);
    return i;
  };

  Model.prototype.after = function (l, after) {
    return after === null || after === undefined ? 0 : this.item(l, after) + 1;
  };

  /* The body of fragment id: {o, i} so it can be replaced. */
  Model.prototype.bodyLoc = function (id, any) {
    if (id === '') return { o: this, i: 'root' };
    var c = id.indexOf(':');
    if (c >= 0) {
      var l = this.listOf(id.slice(0, c));
      return { o: l.b, i: this.item(l, id.slice(c + 1)) };
    }
    var r = this.slot(id);
    if (!Array.isArray(r.o[r.i]) && !(any && r.o[r.i].r)) fail('fragment ' + id + ' is not a body');
    return r;
  };

  Model.prototype.op = function (op) {
    if (!Array.isArray(op) || !op.length) fail('bad op');
    var k = op[0], id, r, l, b, i, n, acts, kk, v, at, filled;
    if (typeof k !== 'string' || !CODES.hasOwnProperty(k)) {
      /* An addressed op: text, body, list, or slots of fragment id. */
      id = addr(k);
      v = op[1];
      if (op.length === 2 && typeof v === 'string') {
        r = this.slot(id); r.o[r.i] = v;
        return { k: 'h', id: id, html: v };
      }
      if (op.length === 2 && (Array.isArray(v) || typeof v === 'number')) {
        /* A body, or a constant one by its statics id alone. */
        if (!Array.isArray(v) && id === '') fail('bad root');
        b = this.body(Array.isArray(v) ? v : [v]);
        if (id === '') { this.root = b; return { k: 'root' }; }
        r = this.bodyLoc(id, 1); r.o[r.i] = b;
        return { k: 'h', id: id, html: this.html(b) };
      }
      if (op.length === 2 && isList(v)) {
        r = this.slot(id); r.o[r.i] = this.list(v);
        return { k: 'h', id: id, html: this.dynHtml(r.o[r.i], id) };
      }
      if (op.length < 3) fail('bad op');
      /* Runs of slots: a number starts a run, each value fills the next.
       * An item is addressed [LIST, KEY, runs…]. */
      n = 1;
      if (typeof v === 'string' || typeof v === 'number' && typeof op[2] === 'number') { id += ':' + key(v); n = 2; }
      r = this.bodyLoc(id); b = r.o[r.i]; at = -1; filled = true;
      for (i = n; i < op.length; i++) {
        if (typeof op[i] === 'number') {
          if (!filled || op[i] < 0 || op[i] % 1) fail('bad slot list');
          at = op[i]; filled = false;
          continue;
        }
        if (at < 0 || at + 1 >= b.length) fail('bad slot');
        b[at + 1] = this.dyn(op[i]); at++; filled = true;
      }
      if (!filled) fail('bad slot list');
      return id === '' ? { k: 'root' } : { k: 'h', id: id, html: this.html(b) };
    }
    id = addr(op[1]);
    switch (k) {
      case '+':
        if (op.length !== 5) fail('bad insert');
        kk = key(op[2]); n = op[3] === null ? null : key(op[3]); b = this.body(op[4]); l = this.listOf(id);
        if (l.e || l.k.indexOf(kk) >= 0) fail('bad insert');
        i = this.after(l, n);
        l.k.splice(i, 0, kk); l.b.splice(i, 0, b);
        return { k: 'i', list: id, after: n, html: mark(kk) + this.html(b) };
      case '-':
        kk = key(op[2]); l = this.listOf(id); i = this.item(l, kk);
        l.k.splice(i, 1); l.b.splice(i, 1);
        return { k: 'x', id: id + ':' + kk };
      case '~':
        kk = key(op[2]); n = op[3] === null || op[3] === undefined ? null : key(op[3]);
        l = this.listOf(id); i = this.item(l, kk);
        kk = l.k.splice(i, 1)[0]; b = l.b.splice(i, 1)[0];
        i = this.after(l, n);
        l.k.splice(i, 0, kk); l.b.splice(i, 0, b);
        return { k: 'm', list: id, id: id + ':' + kk, after: n };
      /* Streams: upsert at a position then trim to a limit; delete if
       * held; clear. */
      case '*':
        kk = key(op[2]); i = op[3]; n = op[5]; b = this.body(op[4]); l = this.stream(id);
        if (typeof i !== 'number' || i < -1 || i % 1 || op.length > 6 ||
          op.length > 5 && (typeof n !== 'number' || !n || n % 1)) fail('bad stream insert');
        r = l.k.indexOf(kk); acts = [];
        if (r >= 0) { l.b[r] = b; acts.push({ k: 'h', id: id + ':' + kk, html: this.html(b) }); }
        else {
          r = i < 0 ? l.k.length : Math.min(i, l.k.length);
          l.k.splice(r, 0, kk); l.b.splice(r, 0, b);
          acts.push({ k: 'i', list: id, after: r ? l.k[r - 1] : null, html: mark(kk) + this.html(b) });
        }
        while (n && l.k.length > Math.abs(n)) {
          r = n > 0 ? l.k.length - 1 : 0;
          acts.push({ k: 'x', id: id + ':' + l.k[r] });
          l.k.splice(r, 1); l.b.splice(r, 1);
        }
        return acts;
      case '/':
        kk = key(op[2]); l = this.stream(id); i = l.k.indexOf(kk);
        if (i < 0) return [];
        l.k.splice(i, 1); l.b.splice(i, 1);
        return { k: 'x', id: id + ':' + kk };
      case '!':
        if (op.length !== 2) fail('bad stream reset');
        l = this.stream(id); l.k.length = 0; l.b.length = 0;
        return { k: 'h', id: id, html: '' };
      /* Renumber: items from FROM on recompute their loop counters. */
      case '#':
        l = this.stream(id); n = op[2];
        if (op.length !== 3 || !isId(n) || n > l.k.length) fail('bad renumber');
        acts = [];
        for (i = n; i < l.b.length; i++) {
          b = l.b[i]; r = this.st[b[0]][2]; filled = false;
          if (!r) continue;
          for (at = 0; at < r.length; at++) {
            if (!r[at]) continue;
            v = String(r[at] === 1 ? i + 1 : i);
            if (b[at + 1] !== v) { b[at + 1] = v; filled = true; }
          }
          if (filled) acts.push({ k: 'h', id: id + ':' + l.k[i], html: this.html(b) });
        }
        return acts;
    }
    fail('unknown op ' + k);
  };

  Model.prototype.html = function (b) {
    var s = this.st[b[0]];
    if (!s) return '';
    var p = s[0], a = s[1], out = p[0];
    for (var i = 1; i < b.length; i++) {
      out += this.dynHtml(b[i], a[i - 1]);
      if (p[i] !== undefined) out += p[i];
    }
    return out;
  };

  Model.prototype.dynHtml = function (d, anchor) {
    if (typeof d === 'string') return d;
    if (Array.isArray(d)) return this.html(d);
    if (d.e) return this.html(d.e);
    var out = '', named = typeof anchor === 'string';
    for (var i = 0; i < d.b.length; i++) out += (named ? mark(d.k[i]) : '') + this.html(d.b[i]);
    return out;
  };

  Model.prototype.toHtml = function () { return this.root ? this.html(this.root) : ''; };

  /* FNV-1a over the UTF-16 code units of the last frame applied: the
   * server compares it with the frame it sent as that seq, so a lost or
   * reordered frame is found although seqs are implicit. */
  function hash(t) {
    var h = 0x811c9dc5;
    for (var i = 0; i < t.length; i++) h = Math.imul(h ^ t.charCodeAt(i), 0x01000193) >>> 0;
    return h.toString(16);
  }

  if (typeof module === 'object' && module.exports) module.exports = { Model: Model, hash: hash };
  if (typeof document === 'undefined') return;

  /* ---- The DOM: anchors, morphing, focus. ---- */
  var SVG = 'http://www.w3.org/2000/svg';

  function parse(parent, html) {
    var t = document.createElement('template');
    if (parent.namespaceURI === SVG && parent.localName !== 'foreignObject') {
      t.innerHTML = '<svg>' + html + '</svg>';
      var f = document.createDocumentFragment(), svg = t.content.firstChild;
      while (svg.firstChild) f.appendChild(svg.firstChild);
      return f;
    }
    t.innerHTML = html;
    return t.content;
  }

  /* ---- The model read from the page it was served (no join frame). ----
   * A statics entry's shape is its parts parsed with \u0001N\u0002 in place
   * of each slot N not anchored (anchored ones sit between their comments).
   * The page's nodes must fit the shape exactly, a text or attribute one
   * way only; a slot's value is its text there, escaped again. A page that
   * does not fit reads as null, and the client asks for a join instead. */
  var SLOT = /\u0001(\d+)\u0002/;

  function esc(t) { return /[&<>"]/.test(t) ? t.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;') : t; }
  function kids(n) { return Array.prototype.slice.call(n.childNodes); }
  function isMark(n) { return n.nodeType === 8 && (n.data.charAt(0) === ':' || n.data === ';'); }

  /* Splits text t as pieces p ([static, slot, static, …]) do, into vals;
   * false unless exactly one split fits (and within a bounded search). */
  function fit(p, t, vals, raw) {
    var ways = 0, got, steps = 0, n = p.length, a = p[0].length, b = t.length - p[n - 1].length, i;
    if (n === 1) return t === p[0];
    /* One slot: what lies between the two statics. */
    if (n === 3) got = b >= a && t.substr(0, a) === p[0] && t.substr(b) === p[2] ? [t.slice(a, b)] : null;
    else {
      (function go(k, at, acc) {
        if (t.substr(at, p[k].length) !== p[k]) return;
        at += p[k].length;
        if (k === n - 1) { if (at === t.length && ++ways === 1) got = acc.slice(); return; }
        for (var e = k + 3 === n ? Math.max(at, b) : at; e <= t.length && ways < 2 && steps++ < 4096; e++) {
          acc.push(t.slice(at, e)); go(k + 2, e, acc); acc.pop();
        }
      })(0, 0, []);
      if (ways !== 1 || steps >= 4096) got = null;
    }
    if (!got) return false;
    for (i = 0; i < got.length; i++) {
      if (vals[p[2 * i + 1]] !== undefined) return false;
      vals[p[2 * i + 1]] = raw ? got[i] : esc(got[i]);
    }
    return true;
  }

  Model.prototype.shape = function (sid, parent) {
    var c = this.shapes || (this.shapes = {}), k = sid + parent.namespaceURI, s = this.st[sid], h = s[0][0], i;
    if (!c[k]) {
      /* A slot right after a tag's name (`<option{{ … }}>`) is apart from it. */
      for (i = 0; i < s[1].length; i++) h += (s[1][i] === null ? (/<[a-zA-Z][^\s>]*$/.test(h) ? ' ' : '') + '\u0001' + i + '\u0002' : '') + s[0][i + 1];
      c[k] = kids(parse(parent, h));
    }
    return c[k];
  };

  /* Whether element y's attributes fit shape n's. A slot in the attribute
   * list (`<input{{ ' checked' if x }}>`, at most one a tag) takes the
   * attributes y has there beyond the shape's. */
  function attrs(n, y, vals) {
    var x = n.attributes, r = y.attributes, hole = -1, at = -1, i, j, m, v = '';
    if (!n._h) {
      for (i = 0; i < x.length; i++) if ((m = SLOT.exec(x[i].name))) { if (hole >= 0) hole = -2; else { hole = +m[1]; at = i; } }
      n._h = [hole, at];
    }
    hole = n._h[0]; at = n._h[1];
    if (hole < -1) return false;
    var extra = r.length - x.length + (hole >= 0 ? 1 : 0);
    if (hole < 0 ? extra : extra < 0) return false;
    for (i = 0, j = 0; i < x.length; i++, j++) {
      if (i === at) {
        for (; j < at + extra; j++) v += ' ' + r[j].name + '="' + esc(r[j].value) + '"';
        if (vals[hole] !== undefined) return false;
        vals[hole] = v; j--;
        continue;
      }
      if (x[i].name !== r[j].name || !fit(x[i]._p || (x[i]._p = x[i].value.split(SLOT)), r[j].value, vals)) return false;
    }
    return true;
  }

  /* Whether page nodes a fit shape nodes x (filling vals by slot). */
  Model.prototype.fits = function (x, a, vals, anchors) {
    var j = 0, i, k, p, e, d, n, m, y;
    for (i = 0; i < x.length; i++) {
      n = x[i]; y = a[j];
      if (n.nodeType === 3) {
        p = n._p || (n._p = n.data.split(SLOT));
        /* Script and style text is not escaped. */
        m = n._r === undefined ? (n._r = /^(SCRIPT|STYLE)$/.test(n.parentNode && n.parentNode.nodeName)) : n._r;
        if (y && y.nodeType === 3) { j++; if (!fit(p, y.data, vals, m)) return false; }
        else if (p.length < 2 || !fit(p, '', vals)) return false;
        continue;
      }
      if (!y || y.nodeType !== n.nodeType || y.nodeName !== n.nodeName || y.namespaceURI !== n.namespaceURI) return false;
      j++;
      if (n.nodeType === 8) {
        if (n.data !== y.data) return false;
        if (n.data.charAt(0) !== '[') continue;
        /* An anchored slot: what lies up to its close. */
        for (d = end(y), e = j; e < a.length && a[e] !== d; e++);
        k = anchors.indexOf(n.data.slice(1));
        if (k < 0 || e >= a.length || vals[k] !== undefined || (vals[k] = this.readDyn(Array.prototype.slice.call(a, j, e), y.parentNode)) === null) return false;
        j = e;
        continue;
      }
      if (n.nodeType !== 1 || !attrs(n, y, vals) || !this.fits(n.childNodes, y.childNodes, vals, anchors)) return false;
    }
    return j === a.length;
  };

  /* The body nodes a hold: of statics `only`, or of the one entry they fit
   * (null if none does, false if two that differ do). */
  Model.prototype.readBody = function (a, parent, only) {
    var got = null, k, v, s, i;
    for (k in this.st) {
      if (only != null && k !== only) continue;
      s = this.st[k];
      v = new Array(s[1].length);
      if (!this.fits(this.shape(k, parent), a, v, s[1])) continue;
      for (i = 0; i < v.length; i++) if (v[i] === undefined) break;
      if (i < v.length) continue;
      if (got && this.st[got[0]][0].join('\u0000') !== s[0].join('\u0000')) return false;
      got = [+k].concat(v);
    }
    return got;
  };

  /* An anchored slot's value from its nodes: a list (items start with
   * their markers), a body, or its text or markup as it is (a leaf: the
   * server checked that no slot without an anchor holds markup). Nothing
   * may be an empty list, body or text: a list that a body may replace. */
  Model.prototype.readDyn = function (a, parent) {
    var i, d = 0, at = [], l = { k: [], b: [] }, b, sid = null, h = '';
    for (i = 0; i < a.length; i++) {
      if (a[i].nodeType !== 8) continue;
      if (a[i].data.charAt(0) === '[') d++;
      else if (a[i].data === ']') d--;
      else if (!d && isMark(a[i])) at.push(i);
    }
    if (at.length) {
      if (at[0]) return null;
      at.push(a.length);
      for (i = 0; i + 1 < at.length; i++) {
        b = this.readBody(a.slice(at[i] + 1, at[i + 1]), parent, sid);
        if (!b) return null;
        sid = String(b[0]);
        d = a[at[i]].data;
        if (d === ';') { d = i ? int(l.k[i - 1]) : null; if (d === null) return null; d = String(d + 1); } else d = d.slice(1);
        l.k.push(d); l.b.push(b);
      }
      return l;
    }
    if (!a.length) { l.r = 1; return l; }
    if ((b = this.readBody(a, parent, null)) !== null) return b || null;
    for (i = 0; i < a.length; i++) h += a[i].nodeType === 1 ? a[i].outerHTML : a[i].nodeType === 3 ? esc(a[i].data) : '<!--' + a[i].data + '-->';
    return /<!--[[:;*]/.test(h) ? null : h;
  };

  /* Writes the keys of the page's runs out: <!--*KEY--> starts items that
   * are each one element (with the same whitespace L before and T after
   * it), keys counting up; each element after the first gets its marker
   * (between T and L of the text between two of them). */
  function runs(root) {
    var w = document.createTreeWalker(root, NodeFilter.SHOW_COMMENT), a = [], n, i, k, e, s, y, l, d, at;
    while ((n = w.nextNode())) if (n.data.charAt(0) === '*') a.push(n);
    for (i = 0; i < a.length; i++) {
      n = a[i]; k = int(n.data.slice(1)); n.data = ':' + n.data.slice(1);
      e = n.nextSibling; l = '';
      if (e && e.nodeType === 3) { l = e.data; e = e.nextSibling; }
      while (k !== null && e && e.nodeType === 1) {
        s = e.nextSibling;
        if (s && s.nodeType !== 3) s = null;
        y = s ? s.nextSibling : e.nextSibling;
        if (!y || y.nodeType !== 1) break;
        if (s) {
          d = s.data; at = d.length - l.length;
          if (at < 0 || d.slice(at) !== l) break;
          s = !l ? y : at ? s.splitText(at) : s;
        } else if (l) break;
        else s = y;
        s.parentNode.insertBefore(document.createComment(':' + ++k), s);
        e = y;
      }
    }
  }

  /* The tree of the page in el, or null. */
  Model.prototype.read = function (el) {
    runs(el);
    var b = this.readBody(kids(el), el, null);
    this.shapes = null;
    return b || null;
  };

  /* Old and new children pair by position, and by id where they have one:
   * an element whose id comes later is kept for it (what is new goes in
   * before it), and one the new list has elsewhere is moved into place. */
  function morphList(parent, olds, news, before) {
    var i, o, k, had = {}, has = {};
    for (i = 0; i < olds.length; i++) if (olds[i].id) had[olds[i].id] = olds[i];
    for (i = 0; i < news.length; i++) if (news[i].id) has[news[i].id] = 1;
    for (i = 0; i < news.length; i++) {
      o = olds[i]; k = news[i].id && had[news[i].id];
      if (k && k !== o) { parent.insertBefore(k, o || before); olds.splice(olds.indexOf(k), 1); olds.splice(i, 0, k); }
      else if (o && o.id && o.id !== news[i].id && has[o.id]) { olds.splice(i, 0, news[i]); remember(news[i]); parent.insertBefore(news[i], o); continue; }
      if (i < olds.length) {
        if (olds[i].nodeType === news[i].nodeType && olds[i].nodeName === news[i].nodeName) morph(olds[i], news[i]);
        else { remember(news[i]); parent.replaceChild(news[i], olds[i]); }
      } else { remember(news[i]); parent.insertBefore(news[i], before); }
    }
    for (; i < olds.length; i++) parent.removeChild(olds[i]);
  }

  function morph(a, b) {
    if (a.nodeType !== 1) { if (a.nodeValue !== b.nodeValue) a.nodeValue = b.nodeValue; return; }
    var i, at, aa = a.attributes, ba = b.attributes;
    for (i = aa.length - 1; i >= 0; i--) {
      at = aa[i];
      if (!b.hasAttributeNS(at.namespaceURI, at.localName)) a.removeAttributeNode(at);
    }
    for (i = 0; i < ba.length; i++) {
      at = ba[i];
      if (a.getAttributeNS(at.namespaceURI, at.localName) !== at.value) a.setAttributeNS(at.namespaceURI, at.name, at.value);
    }
    if (a.nodeName === 'TEXTAREA' && typing(a)) return;
    morphList(a, kids(a), kids(b), null);
    sync(a);
  }

  /* A text field with focus holds what the user is typing: left alone. */
  function typing(f) {
    return f === document.activeElement && (f.nodeName === 'TEXTAREA' || f.nodeName === 'INPUT' && !/^(checkbox|radio)$/.test(f.type));
  }

  /* A field's live state (value, checkedness, selection) changes only when
   * the server's rendered state for it changed since the client last saw
   * it: what a user typed or picked, and the server did not change, stays
   * (a focused text field keeps even a change). `seen` holds, per field,
   * the rendered state last seen. */
  var seen = new WeakMap();

  function rendered(f) {
    var n = f.nodeName, o, i, s = '';
    if (n === 'SELECT') {
      for (o = f.options, i = 0; i < o.length; i++) s += (o[i].defaultSelected ? '1' : '0') + o[i].value + '\u0000';
      return s;
    }
    if (f.type === 'checkbox' || f.type === 'radio') return f.defaultChecked;
    return f.defaultValue;
  }

  function isField(f) {
    var n = f.nodeName;
    return n === 'SELECT' || n === 'TEXTAREA' || n === 'INPUT' && f.type !== 'file';
  }

  function sync(f) {
    if (!isField(f)) return;
    var now = rendered(f), last = seen.get(f), o, i;
    seen.set(f, now);
    if (last === undefined || last === now) return;
    if (f.nodeName === 'SELECT') {
      for (o = f.options, i = 0; i < o.length; i++) if (o[i].selected !== o[i].defaultSelected) o[i].selected = o[i].defaultSelected;
    } else if (f.type === 'checkbox' || f.type === 'radio') {
      if (f.checked !== f.defaultChecked) f.checked = f.defaultChecked;
    } else if (!typing(f) && f.value !== f.defaultValue) f.value = f.defaultValue;
  }

  /* What the page was served with, or a new node was rendered with, is
   * what the client has seen of its fields. */
  function remember(root) {
    if (root.nodeType !== 1 && root.nodeType !== 11) return;
    if (root.nodeType === 1 && isField(root)) seen.set(root, rendered(root));
    var fs = root.querySelectorAll('input, textarea, select');
    for (var i = 0; i < fs.length; i++) if (isField(fs[i])) seen.set(fs[i], rendered(fs[i]));
  }

  function Dom(root) { this.root = root; this.idx = new Map(); }

  /* Indexes the anchors in `root` after `from` (all if null) up to
   * `stop`: fragments by id, items by LIST:KEY, their list being the
   * fragment they sit in (the top of `st`). */
  Dom.prototype.index = function (root, from, stop, st) {
    var w = document.createTreeWalker(root, NodeFilter.SHOW_COMMENT), n, c, t, k = [];
    if (from) w.currentNode = from;
    while ((n = w.nextNode()) && n !== stop) {
      c = n.data.charAt(0); t = st.length - 1;
      if (c === '[') { this.idx.set(n.data.slice(1), n); k[st.push(n.data.slice(1)) - 1] = null; }
      else if (n.data === ']') st.pop();
      else if ((c === ':' || n.data === ';') && t >= 0) {
        /* Written out, so that what goes in before it keeps its key. */
        if (c === ';') { if (k[t] == null) continue; n.data = ':' + (k[t] + 1); }
        k[t] = int(n.data.slice(1));
        this.idx.set(st[t] + n.data, n);
      }
    }
  };

  Dom.prototype.reindex = function () {
    this.idx.clear();
    this.index(this.root, null, null, []);
  };

  Dom.prototype.start = function (id) {
    var n = this.idx.get(id), c = id.indexOf(':');
    if (!n || n.data !== (c < 0 ? '[' + id : id.slice(c)) || !this.root.contains(n)) { this.reindex(); n = this.idx.get(id); }
    if (!n) fail('no anchor ' + id);
    return n;
  };

  /* A fragment's close, or what ends an item: the next item or the close
   * of its list. */
  function end(s) {
    var item = s.data.charAt(0) === ':', c;
    for (var d = 0, n = s.nextSibling; n; n = n.nextSibling) {
      if (n.nodeType !== 8) continue;
      c = n.data.charAt(0);
      if (c === '[') d++;
      else if (n.data === ']') { if (!d) return n; d--; }
      else if (item && !d && (c === ':' || c === ';')) return n;
    }
    fail('unbalanced anchor ' + s.data);
  }

  /* The nodes of a fragment or item, its anchors included. */
  Dom.prototype.range = function (id) {
    var s = this.start(id), e = end(s), nodes = [];
    for (var n = s; n !== e; n = n.nextSibling) nodes.push(n);
    if (s.data.charAt(0) === '[') nodes.push(e);
    return nodes;
  };

  /* Where what goes after item `after` of `list` (its first if null) is put. */
  Dom.prototype.at = function (list, after) {
    return after == null ? this.start(list).nextSibling : end(this.start(list + ':' + after));
  };

  /* Applies one action; a select whose options it touched then takes the
   * selection its markup says. */
  Dom.prototype.act = function (a, model) {
    var s, e, olds, n, list, f, p, nodes, i, c;
    switch (a.k) {
      case 'root':
        p = this.root;
        morphList(p, kids(p), kids(parse(p, model.toHtml())), null);
        this.idx.clear();
        break;
      case 'h':
        s = this.start(a.id); e = end(s); olds = []; p = s.parentNode;
        for (n = s.nextSibling; n !== e; n = n.nextSibling) olds.push(n);
        morphList(p, olds, kids(parse(p, a.html)), e);
        /* What the morph reused may now be another anchor. */
        c = a.id.indexOf(':');
        this.index(p, s, e, [c < 0 ? a.id : a.id.slice(0, c)]);
        break;
      case 'i':
        n = this.at(a.list, a.after);
        p = n.parentNode;
        f = parse(p, a.html);
        remember(f);
        this.index(f, null, null, [a.list]);
        p.insertBefore(f, n);
        break;
      case 'x':
        nodes = this.range(a.id); p = nodes[0].parentNode;
        for (i = 0; i < nodes.length; i++) p.removeChild(nodes[i]);
        break;
      case 'm':
        nodes = this.range(a.id);
        f = document.createDocumentFragment();
        for (i = 0; i < nodes.length; i++) f.appendChild(nodes[i]);
        n = this.at(a.list, a.after);
        p = n.parentNode;
        p.insertBefore(f, n);
        break;
    }
    if (p && p.closest && (p = p.closest('select'))) sync(p);
  };

  /* ---- The connection. ---- */
  var EVENTS = ['click', 'submit', 'input', 'change', 'keydown'];

  function setState(s) {
    var c = document.documentElement.classList;
    c.toggle('st-connected', s === 'connected');
    c.toggle('st-reconnecting', s === 'reconnecting');
  }

  /* Events not yet answered, in order, at most OUTBOX: kept while the
   * socket is down and resent after each reconnect (the server applies an
   * event at most once: by client id and ref). A new event beyond the
   * limit is refused with an st:error (code outbox_full). */
  var OUTBOX = 100;

  function Client(el) {
    this.el = el;
    this.out = [];
    var b = new Uint8Array(6);
    (window.crypto || window.msCrypto).getRandomValues(b);
    this.cid = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join('');
    this.sid = el.getAttribute('data-st-session');
    this.token = el.getAttribute('data-st-token');
    this.path = el.getAttribute('data-st-ws') || '/statetemplate/ws';
    this.model = new Model();
    this.dom = new Dom(el);
    this.epoch = null;
    /* A page that says its seq and incarnation: the client starts from it
     * and connects for what changed since (p=1); the hello brings the
     * statics to read the model from the page with. */
    var q = el.getAttribute('data-st-seq');
    if (/^\d+$/.test(q) && el.getAttribute('data-st-epoch')) {
      this.model.seq = +q; this.epoch = el.getAttribute('data-st-epoch'); this.paged = true;
    }
    this.tries = 0;
    this.ref = 0;
    this.max = 65536; // the largest message the server reads (hello says)
    this.timers = new WeakMap();
    remember(el);
    this.recovered = recover(el);
    this.bind();
    this.connect();
  }

  /* Form recovery: before the page reloads (its session is gone), the
   * values the user typed and the server does not hold (text fields and
   * selects whose value differs from the rendered one, outside
   * [st-recover="off"]) are kept in sessionStorage; the reloaded page puts
   * them back and, once connected, fires input and change on each, so the
   * app's st-input/st-change handlers get them. */
  var RECOVER = 'st-recover:';

  function fieldKey(f) {
    if (f.id) return '#' + f.id;
    var n = attr(f, 'name');
    return f.form && f.form.id && n ? f.form.id + '|' + n : null;
  }

  function typed(root) {
    var out = [], fs = root.querySelectorAll('input, textarea, select');
    for (var i = 0; i < fs.length; i++) {
      var f = fs[i], k = fieldKey(f);
      if (!k || f.closest('[st-recover="off"]') || f.type === 'hidden' || f.type === 'password' ||
        f.type === 'checkbox' || f.type === 'radio' || f.type === 'file') continue;
      var d = f.nodeName === 'SELECT' ? null : f.defaultValue;
      if (d === null ? f.selectedIndex >= 0 && !f.options[f.selectedIndex].defaultSelected : f.value !== d) out.push([k, f.value]);
    }
    return out;
  }

  /* The field fieldKey() named, if it is in root. */
  function byKey(root, key) {
    var f = null, j = key.indexOf('|'), form;
    if (key.charAt(0) === '#') f = document.getElementById(key.slice(1));
    else if (j > 0) { form = document.getElementById(key.slice(0, j)); f = form && form.elements.namedItem(key.slice(j + 1)); }
    return f && root.contains(f) && isField(f) ? f : null;
  }

  function recover(root) {
    var k = RECOVER + location.pathname, saved, out = [];
    try { saved = JSON.parse(sessionStorage.getItem(k) || '[]'); sessionStorage.removeItem(k); } catch (x) { return out; }
    for (var i = 0; i < saved.length; i++) {
      var f = byKey(root, saved[i][0]);
      if (!f) continue;
      f.value = saved[i][1];
      out.push(f);
    }
    return out;
  }

  Client.prototype.url = function () {
    var l = location, e = encodeURIComponent;
    var u = (l.protocol === 'https:' ? 'wss://' : 'ws://') + l.host + this.path +
      '?v=2&sid=' + e(this.sid) + '&token=' + e(this.token) + '&c=' + this.cid;
    if (this.epoch && (this.model.root || this.paged)) u += '&seq=' + this.model.seq + '&epoch=' + e(this.epoch) + (this.paged ? '&p=1' : '');
    return u;
  };

  Client.prototype.connect = function () {
    var self = this, ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = function () { self.heard = Date.now(); };
    ws.onmessage = function (m) {
      self.heard = Date.now();
      // Frames of a socket that closed meanwhile are dropped: the resume
      // asks for them again.
      later(function () { if (self.ws === ws) self.frame(m.data); });
    };
    ws.onclose = function (e) {
      if (self.ws !== ws) return;
      self.ws = null;
      // 4001, 4002: the session is gone; 4003: another protocol version.
      if (e.code === 4001 || e.code === 4002 || e.code === 4003) return self.reload();
      setState('reconnecting');
      var d = Math.min(10000, 250 * Math.pow(2, self.tries++));
      setTimeout(function () { self.connect(); }, d / 2 + Math.random() * d / 2);
    };
    clearInterval(this.beat);
    this.beat = setInterval(function () {
      if (self.ws !== ws || ws.readyState !== 1) return;
      if (Date.now() - self.heard > 45000) return ws.close();
      self.send({ t: 'ping' });
    }, 15000);
  };

  /* Fires input and change on the fields of `list` ([key, value] from
   * typed()) that still hold the user's value. */
  Client.prototype.refire = function (list) {
    for (var i = 0; i < list.length; i++) {
      var f = byKey(this.el, list[i][0]);
      if (!f || f.value !== list[i][1]) continue;
      f.dispatchEvent(new Event('input', { bubbles: true }));
      f.dispatchEvent(new Event('change', { bubbles: true }));
    }
  };

  Client.prototype.reload = function () {
    setState('reconnecting');
    try { sessionStorage.setItem(RECOVER + location.pathname, JSON.stringify(typed(this.el))); } catch (x) { /* storage off */ }
    var k = 'st-reloads', n = +(sessionStorage.getItem(k) || 0);
    sessionStorage.setItem(k, n + 1);
    setTimeout(function () { location.reload(); }, Math.min(10000, n ? 500 * Math.pow(2, n) : 0));
  };

  /* Latency simulation, for seeing loading states on a fast machine:
   * statetemplate.latencySim(ms) delays every message each way by ms in
   * this tab (kept in sessionStorage, so it survives reloads);
   * latencySim(0) turns it off. */
  var LAT = 'st-latency';
  function lat() { try { return +sessionStorage.getItem(LAT) || 0; } catch (x) { return 0; } }
  function later(f) { var d = lat(); if (d) setTimeout(f, d); else f(); }
  function latencySim(ms) {
    try { ms ? sessionStorage.setItem(LAT, ms) : sessionStorage.removeItem(LAT); } catch (x) { /* storage off */ }
  }

  /* Sends m (a message, or one already in JSON). */
  Client.prototype.send = function (m) {
    var ws = this.ws, s = typeof m === 'string' ? m : JSON.stringify(m);
    if (ws && ws.readyState === 1) later(function () { if (ws.readyState === 1) ws.send(s); });
  };

  /* An event from element t: numbered when sent (the server takes a ref at
   * or below the highest it applied as a resend, so refs follow the send
   * order, debounced events included), queued until answered, shown as
   * loading. Returns true once queued (nothing when refused). */
  Client.prototype.emit = function (m, t, cb) {
    m.r = ++this.ref;
    var s = JSON.stringify(m);
    // Over the server's limit it would close the connection (1009) on
    // every resend: refused here, and what the user typed stays put.
    if (!this.fits(s)) return this.big({ m: m, cb: cb });
    if (this.out.length >= OUTBOX) {
      this.flash({ t: 'error', code: 'outbox_full', msg: 'Too many actions waiting. Try again soon.', r: m.r });
      if (cb) cb({ code: 'outbox_full' });
      return;
    }
    this.out.push({ m: m, t: t, cb: cb });
    busy(t, true);
    this.pending();
    // Before the hello it waits: the hello's resend sends it, once the
    // server's limit is known.
    if (this.greeted === this.ws) this.send(s);
    return true;
  };

  /* Whether the JSON text s is within the server's limit (UTF-8 bytes). */
  Client.prototype.fits = function (s) {
    return s.length * 3 <= this.max || new Blob([s]).size <= this.max;
  };

  /* Event o ({m, cb}) is refused as too large. */
  Client.prototype.big = function (o) {
    this.flash({ t: 'error', code: 'too_large', msg: 'That is too large to send (at most ' + (this.max >> 10) + ' KB).', r: o.m.r, max: this.max });
    if (o.cb) o.cb({ code: 'too_large' });
  };

  /* Takes waiting event i out of the outbox: its element stops showing
   * as loading once nothing of it waits. */
  Client.prototype.take = function (i) {
    var o = this.out.splice(i, 1)[0];
    if (!this.out.some(function (x) { return x.t === o.t; })) busy(o.t, false);
    this.pending();
    return o;
  };

  /* The event with ref r is answered (applied, with the handler's reply d,
   * refused, or failed: err); its callback, if it has one, learns which. */
  Client.prototype.done = function (r, d, err) {
    for (var i = 0; i < this.out.length; i++) {
      if (this.out[i].m.r !== r) continue;
      var o = this.take(i);
      if (o.cb) o.cb(err, d);
      return;
    }
    this.pending();
  };

  /* An error: the st:error event on the root (cancelable: an app that
   * calls preventDefault shows it itself), then, for what the user should
   * see (code user, handler, outbox_full, too_large), its message in the
   * page's [st-flash] element (outside the root, or morphs clear it), or a
   * default one, for 6 s. */
  Client.prototype.flash = function (f) {
    if (window.console) console.warn('statetemplate:', f.code, f.msg);
    var ev = new CustomEvent('st:error', { detail: f, bubbles: true, cancelable: true });
    if (!this.el.dispatchEvent(ev) || !/^(user|handler|outbox_full|too_large)$/.test(f.code)) return;
    this.show(f.msg, 'error');
  };

  /* A message in the page's [st-flash] element, its kind (info, success,
   * warning, error) as data-st-kind, for 6 s. */
  Client.prototype.show = function (msg, kind) {
    var box = document.querySelector('[st-flash]');
    if (!box) {
      box = document.createElement('div');
      box.setAttribute('st-flash', '');
      box.setAttribute('role', 'alert');
      box.className = 'st-flash';
      box.style.cssText = 'position:fixed;bottom:1em;left:50%;transform:translateX(-50%);color:#fff;padding:.5em 1em;border-radius:4px;font:14px sans-serif;z-index:2147483647';
      document.body.appendChild(box);
    }
    box.setAttribute('data-st-kind', kind);
    if (box.className === 'st-flash') box.style.background = kind === 'error' ? '#b00020' : '#333';
    box.textContent = msg;
    box.hidden = false;
    clearTimeout(this.flashing);
    this.flashing = setTimeout(function () { box.hidden = true; }, 6000);
  };

  Client.prototype.pending = function () {
    this.el.setAttribute('data-st-pending', this.out.length);
  };

  /* Loading state: the class st-loading, aria-busy on a form, and
   * st-disable-with="Saving…" disables the element (or a form's submit
   * buttons) and shows that text until the answer. */
  function busy(t, on) {
    t.classList.toggle('st-loading', on);
    if (!on && t.getAttribute('class') === '') t.removeAttribute('class');
    if (isForm(t)) { if (on) t.setAttribute('aria-busy', 'true'); else t.removeAttribute('aria-busy'); }
    var bs = isForm(t) ? t.querySelectorAll('[st-disable-with]') : t.hasAttribute('st-disable-with') ? [t] : [];
    for (var i = 0; i < bs.length; i++) {
      var b = bs[i];
      if (on && !b.hasAttribute('data-st-was')) {
        b.setAttribute('data-st-was', b.textContent);
        b.textContent = b.getAttribute('st-disable-with');
        b.disabled = true;
      } else if (!on && b.hasAttribute('data-st-was')) {
        b.textContent = b.getAttribute('data-st-was');
        b.removeAttribute('data-st-was');
        b.disabled = false;
      }
    }
  }

  Client.prototype.frame = function (text) {
    var f, acts, ae, sel, i;
    try {
      f = JSON.parse(text);
      if (typeof f === 'number') return this.done(f); // an event's answer: its ref
      if (f.t === 'hello') {
        this.epoch = f.epoch;
        if (f.token) this.token = f.token;
        if (f.max > 0) this.max = f.max;
        if (this.paged && f.s) {
          this.paged = false;
          try { this.model.statics(f.s); this.model.root = this.model.read(this.el); } catch (x) { this.model.root = null; }
          if (!this.model.root) {
            /* The page did not read: a join instead. */
            this.model = new Model(); this.epoch = null; this.unread = 1; this.ws.close();
            return;
          }
        }
        this.paged = false;
        this.greeted = this.ws;
        this.tries = 0;
        this.hellos = (this.hellos || 0) + 1;
        sessionStorage.removeItem('st-reloads');
        setState('connected');
        for (var k = 0, s; k < this.out.length; k++) {
          s = JSON.stringify(this.out[k].m);
          if (this.fits(s)) this.send(s); else this.big(this.take(k--));
        }
        var rec = this.recovered;
        this.recovered = [];
        for (k = 0; k < rec.length; k++) {
          rec[k].dispatchEvent(new Event('input', { bubbles: true }));
          rec[k].dispatchEvent(new Event('change', { bubbles: true }));
        }
        return;
      }
      if (f.t === 'error') {
        if (typeof f.r === 'number') this.done(f.r, null, f);
        this.flash(f);
        return;
      }
      if (f.t === 'reply') return this.done(f.r, f.d);
      if (f.t === 'push') {
        if (f.n === 'st:flash' && f.d) this.show(String(f.d.msg), String(f.d.kind));
        this.el.dispatchEvent(new CustomEvent('st:push', { detail: { name: f.n, payload: f.d }, bubbles: true }));
        return;
      }
      if (f.t) return;
      ae = document.activeElement;
      try { sel = ae && [ae.selectionStart, ae.selectionEnd, ae.selectionDirection]; } catch (x) { sel = null; }
      if (!Array.isArray(f)) this.joins = (this.joins || 0) + 1;
      // A join after a reconnect: the session may be fresh or restored, so
      // what the user typed and it does not show is fired again below.
      var refire = !Array.isArray(f) && this.hellos > 1 ? typed(this.el) : null;
      acts = this.model.apply(f);
      this.last = Array.isArray(f) ? text : null;
      for (i = 0; i < acts.length; i++) this.dom.act(acts[i], this.model);
      if (ae && ae !== document.activeElement && ae.isConnected) {
        ae.focus();
        if (sel && sel[0] != null) try { ae.setSelectionRange(sel[0], sel[1], sel[2]); } catch (x) { /* not a text field */ }
      }
      if (refire) this.refire(refire);
      this.el.dispatchEvent(new CustomEvent('st:update', { detail: { seq: this.model.seq }, bubbles: true }));
      this.ack();
    } catch (err) {
      // Out of step: drop the model and ask for the whole page again.
      if (window.console) console.error(err);
      this.model = new Model();
      this.epoch = null;
      if (this.ws) this.ws.close();
    }
  };

  Client.prototype.ack = function () {
    var self = this;
    if (this.acking) return;
    this.acking = setTimeout(function () {
      self.acking = null;
      self.send(self.last ? { t: 'ack', q: self.model.seq, h: hash(self.last) } : { t: 'ack', q: self.model.seq });
    }, 1000);
  };

  /* Attributes and properties read past a form's named fields (a field
   * named `name`, `id`, `action` or `value` shadows the form's own). */
  function attr(t, a) { return Element.prototype.getAttribute.call(t, a); }
  function isForm(t) { return t instanceof HTMLFormElement; }

  function payload(type, t, e) {
    var d = {}, k, ds = isForm(t) ? null : t.dataset;
    if (isForm(t)) {
      for (k = 0; k < t.attributes.length; k++) {
        var an = t.attributes[k].name;
        if (an.indexOf('data-') === 0) d[an.slice(5).replace(/-([a-z])/g, function (m, c) { return c.toUpperCase(); })] = t.attributes[k].value;
      }
    } else for (k in ds) d[k] = ds[k];
    if (type === 'submit') {
      var seenName = {};
      new FormData(t).forEach(function (v, name) {
        if (typeof v !== 'string') return;
        d[name] = seenName[name] ? [].concat(d[name], v) : v;
        seenName[name] = 1;
      });
    } else if (!isForm(t) && (type !== 'click' || 'value' in t && t.tagName !== 'BUTTON')) {
      if ('value' in t) d.value = t.value;
      if (t.type === 'checkbox' || t.type === 'radio') d.checked = t.checked;
    }
    var nm = attr(t, 'name');
    if (nm && d.name === undefined) d.name = nm;
    if (type === 'keydown') d.key = e.key;
    return d;
  }

  Client.prototype.bind = function () {
    var self = this;
    EVENTS.forEach(function (type) {
      self.el.addEventListener(type, function (e) {
        var t = e.target && e.target.closest ? e.target.closest('[st-' + type + ']') : null;
        if (!t || !self.el.contains(t)) return;
        if (type === 'keydown' && t.hasAttribute('st-key') && t.getAttribute('st-key') !== e.key) return;
        if (type === 'submit' || type === 'click' && (t.tagName === 'A' || t.type === 'submit')) e.preventDefault();
        // A form already being submitted is not submitted again (a double click).
        if (type === 'submit' && self.out.some(function (o) { return o.t === t; })) return;
        var m = { t: 'ev', n: t.getAttribute('st-' + type), d: payload(type, t, e) };
        // st-reset clears the form once its submit is on its way (not when
        // it was refused: too large, outbox full; the user's text stays).
        var go = function () {
          if (self.emit(m, t) && type === 'submit' && t.hasAttribute('st-reset')) HTMLFormElement.prototype.reset.call(t);
        };
        var wait = +t.getAttribute('st-debounce');
        if (!wait) return go();
        clearTimeout(self.timers.get(t));
        self.timers.set(t, setTimeout(go, wait));
      });
    });
  };

  function start() {
    var els = document.querySelectorAll('[data-st-root]'), out = [];
    for (var i = 0; i < els.length; i++) out.push(new Client(els[i]));
    window.statetemplate = { clients: out, Model: Model, Dom: Dom, payload: payload, remember: remember, latencySim: latencySim };
    if (lat()) console.info('statetemplate: ' + lat() + ' ms simulated latency');
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
