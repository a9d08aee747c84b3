// The /ui page's script: follows the cluster through the API and draws it.
//
// Per kind it lists (GET /apis/topo.dev/v1alpha1/<plural>) and then watches from the list's
// resourceVersion (?watch=true, newline-delimited events), as `topoctl get -w` does; a
// broken stream resumes from the last resourceVersion seen, an expired one (410) lists
// again. Every request carries the browser's client certificate (TLS) or, once the user has
// pasted one, `Authorization: Bearer <token>` from sessionStorage — never a URL parameter.
// A 401 or 403 stops everything and shows the API's own message above the token form.
// `/ui?l=SELECTOR` narrows the containers and links to a label selector, as `topoctl graph
// -l` does (the API filters; a selector it refuses is shown as its 400).
//
// The picture follows `topoctl graph` (cli/src/graph.rs): a box per object, coloured by its
// Ready condition (green, red, grey; networks blue when Ready); edges container -> network
// (labelled with its address), container -> node ("on", dashed), link consumer -> target,
// tunnel -> each node it joins ("gre", dashed). The layout is columns — networks,
// containers (grouped by node), nodes, tunnels — so it needs no layout engine. Everything
// is built with DOM calls (textContent), never from HTML strings: names, reasons and
// messages are data.
'use strict';

(function () {
  const API = '/apis/topo.dev/v1alpha1';
  const KINDS = [
    ['Node', 'nodes'],
    ['Network', 'networks'],
    ['Container', 'containers'],
    ['Link', 'links'],
    ['Tunnel', 'tunnels'],
  ];
  const TOKEN_KEY = 'topo.token';
  const FILL = { True: '#c8e6c9', False: '#ffcdd2', Unknown: '#e0e0e0' };
  const NETWORK_READY = '#bbdefb';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const BOX_W = 210;
  const BOX_H = 52;
  const GAP_Y = 18;
  const TOP = 44;
  const COLUMN_X = { network: 20, container: 360, node: 800, tunnel: 1100 };
  // Beyond these the browser would crawl: the picture gives way to the table, and the table
  // is cut (the counts in the header stay whole).
  const MAX_DRAWN = 2000;
  const MAX_ROWS = 5000;
  const SELECTOR = new URLSearchParams(location.search).get('l') || '';
  const NARROWED = new Set(['Container', 'Link']);

  const $ = (id) => document.getElementById(id);
  let objects = new Map(KINDS.map(([k]) => [k, new Map()]));
  let generation = 0;
  let aborts = [];
  const live = new Set();
  let renderPending = false;

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function headers() {
    const t = token();
    return t ? { Authorization: 'Bearer ' + t } : {};
  }

  async function httpError(resp) {
    let message = resp.statusText;
    try {
      const body = await resp.json();
      if (body && body.message) message = body.message;
    } catch (_) {
      // Not an ApiError body: keep the status text.
    }
    return new HttpError(resp.status, message);
  }

  async function request(path, signal) {
    const resp = await fetch(API + path, {
      headers: headers(),
      signal,
      cache: 'no-store',
      credentials: 'same-origin',
    });
    if (!resp.ok) throw await httpError(resp);
    return resp;
  }

  async function* lines(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) yield line;
      }
    }
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // The query of a kind's list (and, after `&`, of its watch): its label selector, if any.
  function selectorQuery(kind) {
    return SELECTOR && NARROWED.has(kind) ? 'labelSelector=' + encodeURIComponent(SELECTOR) : '';
  }

  // One kind: list, then watch from the list's revision; resumes until the page restarts.
  async function follow(kind, plural, gen) {
    const sel = selectorQuery(kind);
    let rv = null;
    let pause = 500;
    while (gen === generation) {
      const abort = new AbortController();
      aborts.push(abort);
      try {
        if (rv === null) {
          const list = await (await request('/' + plural + (sel ? '?' + sel : ''), abort.signal)).json();
          if (gen !== generation) return;
          objects.set(kind, new Map(list.items.map((o) => [o.metadata.name, o])));
          rv = (list.metadata && list.metadata.resourceVersion) || '0';
          connected(kind);
        }
        const q = '?watch=true&resourceVersion=' + encodeURIComponent(rv) + (sel ? '&' + sel : '');
        const resp = await request('/' + plural + q, abort.signal);
        connected(kind);
        pause = 500;
        for await (const line of lines(resp.body)) {
          if (gen !== generation) return;
          rv = applyEvent(kind, JSON.parse(line), rv);
        }
      } catch (e) {
        if (gen !== generation) return;
        if (e instanceof HttpError && (e.status === 401 || e.status === 403)) {
          refused(e);
          return;
        }
        if (e instanceof HttpError && e.status === 400) {
          failed('400 Bad Request: ' + e.message);
          return;
        }
        if (e && e.expired) rv = null;
        // Anything else (the network, a restarting controller, 429, 503) is retried; the
        // indicator's tooltip says what happened last.
        $('live').title = kind + ': ' + ((e && e.message) || String(e));
      }
      live.delete(kind);
      showLive();
      await sleep(pause);
      pause = Math.min(pause * 2, 5000);
    }
  }

  // Applies one watch event; returns the resourceVersion to resume from.
  function applyEvent(kind, ev, rv) {
    if (ev.type === 'ERROR') {
      const err = new Error((ev.error && ev.error.message) || 'watch error');
      err.expired = !!(ev.error && ev.error.code === 410);
      throw err;
    }
    const mine = objects.get(kind);
    if (ev.object && ev.object.metadata) {
      const name = ev.object.metadata.name;
      if (ev.type === 'DELETED') mine.delete(name);
      else mine.set(name, ev.object);
      scheduleRender();
    }
    return ev.resourceVersion || rv;
  }

  function connected(kind) {
    live.add(kind);
    $('error').hidden = true;
    $('login').hidden = true;
    $('main').hidden = false;
    document.body.dataset.state = 'live';
    showLive();
    scheduleRender();
  }

  function showLive() {
    const all = live.size === KINDS.length;
    $('live').textContent = all ? 'live' : 'reconnecting';
    $('live').className = 'live ' + (all ? 'on' : 'off');
  }

  // 401/403: stop every stream, say why in the API's words, offer the token form.
  function refused(e) {
    stop();
    const label = e.status === 401 ? '401 Unauthorized' : '403 Forbidden';
    const hint = token()
      ? 'The token was refused; paste another one.'
      : 'Sign in with a bearer token (or use a client certificate).';
    $('error').textContent = label + ': ' + e.message + '. ' + hint;
    $('error').hidden = false;
    $('main').hidden = true;
    $('login').hidden = false;
    $('signout').hidden = true;
    $('live').textContent = 'signed out';
    $('live').className = 'live off';
    document.body.dataset.state = 'refused';
    sessionStorage.removeItem(TOKEN_KEY);
  }

  // A request the API will never accept (a bad selector): say so and stop.
  function failed(text) {
    stop();
    $('error').textContent = text;
    $('error').hidden = false;
    $('main').hidden = true;
    $('live').textContent = 'stopped';
    $('live').className = 'live off';
    document.body.dataset.state = 'failed';
  }

  function stop() {
    generation += 1;
    aborts.forEach((a) => a.abort());
    aborts = [];
    live.clear();
  }

  function start() {
    stop();
    objects = new Map(KINDS.map(([k]) => [k, new Map()]));
    document.body.dataset.state = 'connecting';
    $('signout').hidden = !token();
    $('selector').textContent = SELECTOR ? 'containers and links: -l ' + SELECTOR : '';
    const gen = generation;
    KINDS.forEach(([kind, plural]) => follow(kind, plural, gen));
  }

  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(() => {
      renderPending = false;
      render();
    }, 50);
  }

  function ready(o) {
    const conds = (o.status && o.status.conditions) || [];
    const c = conds.find((x) => x.type === 'Ready');
    if (!c) return { status: 'Unknown', reason: 'NoStatus', message: '' };
    return { status: c.status, reason: c.reason || '', message: c.message || '' };
  }

  function sorted(kind) {
    return [...objects.get(kind).values()].sort((a, b) =>
      a.metadata.name.localeCompare(b.metadata.name),
    );
  }

  function render() {
    const total = [...objects.values()].reduce((n, m) => n + m.size, 0);
    const picture = $('picture');
    if (total > MAX_DRAWN) {
      const note = document.createElement('p');
      note.textContent = `${total} objects are too many to draw; narrow the containers and links with /ui?l=SELECTOR. The table lists them.`;
      picture.replaceChildren(note);
    } else {
      picture.replaceChildren(drawPicture());
    }
    fillTable();
    const n = (k) => objects.get(k).size;
    $('counts').textContent = KINDS.map(([k, p]) => p + ' ' + n(k)).join(' · ');
  }

  function svgEl(name, attrs, text) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function clip(s, n) {
    return s.length > n ? s.slice(0, n - 1) + '…' : s;
  }

  // A box: the object's kind and name, a detail line and its Ready state.
  function box(layer, v) {
    const g = svgEl('g', {
      'data-ref': v.ref,
      'data-ready': v.status,
      'data-reason': v.reason,
      transform: `translate(${v.x},${v.y})`,
    });
    g.appendChild(svgEl('title', {}, `${v.ref}: ${v.status} ${v.reason} ${v.message}`.trim()));
    g.appendChild(svgEl('rect', { width: BOX_W, height: BOX_H, rx: 5, fill: v.fill }));
    g.appendChild(svgEl('text', { x: 8, y: 16, class: 'title' }, clip(v.label, 30)));
    g.appendChild(svgEl('text', { x: 8, y: 31 }, clip(v.detail, 32)));
    const state = v.status === 'True' ? 'Ready' : v.reason || v.status;
    g.appendChild(svgEl('text', { x: 8, y: 46, class: 'state' }, clip(state, 32)));
    layer.appendChild(g);
  }

  function vertex(kind, o, detail, x, y) {
    const r = ready(o);
    let fill = FILL[r.status] || FILL.Unknown;
    if (kind === 'network' && r.status === 'True') fill = NETWORK_READY;
    return {
      ref: kind + '/' + o.metadata.name,
      label: kind + ' ' + o.metadata.name,
      detail,
      x,
      y,
      fill,
      ...r,
    };
  }

  const rowY = (i) => TOP + i * (BOX_H + GAP_Y);

  function layout() {
    const at = new Map();
    const place = (v) => at.set(v.ref, v);
    sorted('Network').forEach((o, i) =>
      place(vertex('network', o, o.spec.cidr || '', COLUMN_X.network, rowY(i))),
    );
    const containers = sorted('Container').sort((a, b) =>
      (a.spec.node || '').localeCompare(b.spec.node || ''),
    );
    containers.forEach((o, i) =>
      place(vertex('container', o, 'on ' + (o.spec.node || '?'), COLUMN_X.container, rowY(i))),
    );
    let extra = containers.length;
    for (const l of sorted('Link')) {
      const to = l.spec.to || {};
      if (!to.container && to.address) {
        const ref = to.address + ':' + to.port;
        if (!at.has(ref)) {
          const v = vertex('address', { metadata: { name: ref } }, 'outside topo', COLUMN_X.container, rowY(extra++));
          at.set(ref, { ...v, ref, label: ref });
        }
      }
    }
    sorted('Node').forEach((o, i) =>
      place(vertex('node', o, (o.spec && o.spec.address) || '', COLUMN_X.node, rowY(i))),
    );
    sorted('Tunnel').forEach((o, i) => {
      const t = o.spec || {};
      const detail = (t.network || '') + (t.remote ? ' → ' + t.remote : '');
      place(vertex('tunnel', o, detail, COLUMN_X.tunnel, rowY(i)));
    });
    return at;
  }

  function line(layer, a, b, label, cls, labelAt) {
    layer.appendChild(svgEl('line', { x1: a[0], y1: a[1], x2: b[0], y2: b[1], class: cls, 'marker-end': 'url(#arrow)' }));
    if (label) {
      const t = labelAt === undefined ? 0.5 : labelAt;
      const x = a[0] + (b[0] - a[0]) * t;
      const y = a[1] + (b[1] - a[1]) * t - 4;
      layer.appendChild(svgEl('text', { x, y, class: 'edgelabel', 'text-anchor': 'middle' }, label));
    }
  }

  // A link between two boxes of the container column: an arc into the gap on the right,
  // coloured by the link's Ready condition (style.css).
  function arc(layer, from, to, l, label) {
    // label: ["link NAME", listen address], one line each beside the arc's apex.
    const r = ready(l);
    const g = svgEl('g', { 'data-ref': 'link/' + l.metadata.name, 'data-ready': r.status, 'data-reason': r.reason });
    g.appendChild(svgEl('title', {}, `link/${l.metadata.name}: ${r.status} ${r.reason} ${r.message}`.trim()));
    const x = from.x + BOX_W;
    const y1 = from.y + BOX_H / 2;
    const y2 = to.y + BOX_H / 2 + 6;
    const bulge = x + 90 + Math.min(Math.abs(y2 - y1) / 6, 60);
    const d = `M${x},${y1} C${bulge},${y1} ${bulge},${y2} ${x},${y2}`;
    g.appendChild(svgEl('path', { d, class: 'edge link ' + r.status, 'marker-end': 'url(#arrow)' }));
    const state = r.status === 'True' ? '' : ' (' + (r.reason || r.status) + ')';
    const y = (y1 + y2) / 2;
    g.appendChild(svgEl('text', { x: bulge, y: y - 2, class: 'edgelabel', 'text-anchor': 'middle' }, label[0] + state));
    g.appendChild(svgEl('text', { x: bulge, y: y + 11, class: 'edgelabel', 'text-anchor': 'middle' }, label[1]));
    layer.appendChild(g);
  }

  function drawEdges(layer, at) {
    const mid = (v, right) => [v.x + (right ? BOX_W : 0), v.y + BOX_H / 2];
    for (const c of objects.get('Container').values()) {
      const me = at.get('container/' + c.metadata.name);
      const node = at.get('node/' + c.spec.node);
      if (me && node) line(layer, mid(me, true), mid(node, false), 'on', 'edge dashed', 0.5);
      const addrs = (c.status && c.status.addresses) || {};
      for (const a of c.spec.networks || []) {
        const net = at.get('network/' + a.network);
        const ip = addrs[a.network] || a.ip || '';
        if (me && net) line(layer, mid(me, false), mid(net, true), ip, 'edge', 0.3);
      }
    }
    for (const l of objects.get('Link').values()) {
      const to = l.spec.to || {};
      const from = at.get('container/' + l.spec.from);
      const target = to.container ? at.get('container/' + to.container) : at.get(to.address + ':' + to.port);
      const listen = l.spec.listen || '127.0.0.1:' + to.port;
      if (from && target) arc(layer, from, target, l, ['link ' + l.metadata.name, listen]);
    }
    for (const t of objects.get('Tunnel').values()) {
      const me = at.get('tunnel/' + t.metadata.name);
      const ends = [...(t.spec.nodes || []), ...(t.spec.node ? [t.spec.node] : [])];
      for (const n of ends) {
        const node = at.get('node/' + n);
        if (me && node) line(layer, mid(me, false), mid(node, true), 'gre', 'edge dashed', 0.5);
      }
    }
  }

  function drawPicture() {
    const at = layout();
    let rows = 1;
    for (const v of at.values()) rows = Math.max(rows, (v.y - TOP) / (BOX_H + GAP_Y) + 1);
    const width = COLUMN_X.tunnel + BOX_W + 20;
    const height = rowY(rows) + 10;
    const svg = svgEl('svg', { xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}` });
    const defs = svgEl('defs', {});
    const marker = svgEl('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    marker.appendChild(svgEl('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#546e7a' }));
    defs.appendChild(marker);
    svg.appendChild(defs);
    for (const [title, x] of [['Networks', COLUMN_X.network], ['Containers', COLUMN_X.container], ['Nodes', COLUMN_X.node], ['Tunnels', COLUMN_X.tunnel]]) {
      svg.appendChild(svgEl('text', { x, y: 24, class: 'title' }, title));
    }
    const edges = svgEl('g', { class: 'edges' });
    drawEdges(edges, at);
    svg.appendChild(edges);
    const boxes = svgEl('g', { class: 'boxes' });
    for (const v of at.values()) box(boxes, v);
    svg.appendChild(boxes);
    return svg;
  }

  function where(kind, o) {
    const s = o.spec || {};
    switch (kind) {
      case 'Node': return s.address || '';
      case 'Network': return s.cidr || '';
      case 'Container': return s.node || '';
      case 'Link': return (s.from || '') + ' → ' + ((s.to && (s.to.container || s.to.address)) || '') + ':' + ((s.to && s.to.port) || '');
      case 'Tunnel': return [...(s.nodes || []), ...(s.node ? [s.node] : []), ...(s.remote ? [s.remote] : [])].join(' ↔ ');
      default: return '';
    }
  }

  function fillTable() {
    const rows = [];
    for (const [kind] of KINDS) {
      for (const o of sorted(kind)) {
        const r = ready(o);
        const tr = document.createElement('tr');
        tr.dataset.ref = kind.toLowerCase() + '/' + o.metadata.name;
        const cells = [kind, o.metadata.name, r.status, r.reason, where(kind, o), r.message];
        cells.forEach((text, i) => {
          const td = document.createElement('td');
          td.textContent = text;
          if (i === 2) td.className = r.status;
          tr.appendChild(td);
        });
        rows.push(tr);
      }
    }
    if (rows.length > MAX_ROWS) {
      const more = rows.length - MAX_ROWS;
      rows.length = MAX_ROWS;
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = 6;
      td.textContent = `… and ${more} more`;
      tr.appendChild(td);
      rows.push(tr);
    }
    document.querySelector('#objects tbody').replaceChildren(...rows);
  }

  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    $('token').value = '';
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    start();
  });
  $('signout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    start();
  });
  start();
})();
