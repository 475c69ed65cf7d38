// The Sluice web dashboard: a single page over the HTTP API (docs/api.md),
// with no build step and no framework. Served by the server itself under a
// Content-Security-Policy that allows only its own scripts, so: no inline
// scripts or handlers, no eval, and every string from the API enters the
// DOM as text (textContent / createElement), never as HTML.
//
// Libraries (vendored, served from /ui/vendor/): dagre (global `dagre`) lays
// out the job graph, uPlot (global `uPlot`) draws the throughput chart.
'use strict';

const TOKEN_KEY = 'sluice.token';
const POLL_JOB_MS = 1000;
const POLL_JOB_ENDED_MS = 5000;
const POLL_LOGS_MS = 1500;
const POLL_OVERVIEW_MS = 2000;
const LOG_TAIL = 200;
const CHART_POINTS = 180;
const STATES = ['created', 'running', 'restarting', 'finished', 'canceled', 'failed'];
const ENDED = new Set(['finished', 'canceled', 'failed']);

// ---------------------------------------------------------------------------
// DOM helpers

const $ = (selector, root = document) => root.querySelector(selector);
const SVG_NS = 'http://www.w3.org/2000/svg';

/** An HTML element: attributes (`on` = event listeners, `text` = textContent) and children (nodes or text). */
function el(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, like `el`. */
function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'on') {
      for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    } else if (key === 'text') {
      node.textContent = value;
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replaces a node's children (skipping null, false and undefined, unlike replaceChildren). */
function fill(node, ...children) {
  node.replaceChildren();
  return build(node, {}, children);
}

function table(testid, headers, extra = {}) {
  const body = el('tbody');
  const t = el('table', { class: 'table', 'data-testid': testid, ...extra },
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))), body);
  return { table: t, body };
}

function emptyRow(body, columns, text) {
  fill(body, el('tr', { class: 'empty' }, el('td', { colspan: columns }, text)));
}

function section(title, ...children) {
  return el('section', { class: 'card' }, title ? el('h2', {}, title) : null, ...children);
}

function stateBadge(state, attrs = {}) {
  return el('span', { class: `badge state-${state}`, ...attrs }, state);
}

// ---------------------------------------------------------------------------
// Formatting

const numberFormat = new Intl.NumberFormat('en-US');
const fmtNum = (n) => (n === null || n === undefined ? '–' : numberFormat.format(n));
const fmtPct = (f) => (f === null || f === undefined ? '–' : `${Math.round(f * 100)}%`);
const fmtRate = (r) => (r === null || r === undefined ? '–' : `${fmtNum(Math.round(r))}/s`);

function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h ? `${h}h ${m}m ${sec}s` : `${m}m ${sec}s`;
}

/** A time in ms since the epoch, as ISO 8601 (UTC). */
function fmtTime(ms) {
  if (ms === null || ms === undefined) return '–';
  const d = new Date(ms);
  return Number.isFinite(d.getTime()) ? d.toISOString() : String(ms);
}

/** A watermark (ms since the epoch; null: none yet; the largest: the end of the input). */
function fmtWatermark(ms) {
  if (ms === null || ms === undefined) return 'none';
  if (ms >= 8.64e15) return 'end of input';
  if (ms <= -8.64e15) return 'none';
  return fmtTime(ms);
}

const shortDigest = (digest) => {
  const [algo, hex] = String(digest).split(':');
  return hex ? `${algo}:${hex.slice(0, 12)}…` : String(digest).slice(0, 19);
};

const clamp01 = (x) => (Number.isFinite(x) ? Math.max(0, Math.min(1, x)) : 0);
const num = (x) => (Number.isFinite(x) ? x : 0);
const enc = (s) => encodeURIComponent(s).replace(/%3A/gi, ':');

// ---------------------------------------------------------------------------
// Session, views and the API

/** Who is signed in: the token (also in sessionStorage) and GET /v1/whoami's answer. */
const session = { token: null, who: null };
const isAdmin = () => session.who?.admin === true;

/**
 * The page being shown: its polls (timers) and in-flight requests (abort).
 * Replaced on every navigation and on sign-in/out, so nothing of a previous
 * page or user keeps running or lands in the DOM.
 */
let view = { gen: 0, abort: new AbortController(), timers: new Set(), onResize: null };

function endView() {
  view.abort.abort();
  for (const t of view.timers) clearTimeout(t);
  view = { gen: view.gen + 1, abort: new AbortController(), timers: new Set(), onResize: null };
  return view;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** One API call: JSON bodies are serialised; an error answer throws an ApiError with the API's code and message. */
async function api(method, path, body, headers = {}) {
  const init = {
    method,
    headers: { ...headers },
    cache: 'no-store',
    credentials: 'omit',
    signal: view.abort.signal,
  };
  if (session.token) init.headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) {
    if (typeof body === 'string' || body instanceof Blob || body instanceof ArrayBuffer) {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] ??= 'application/json';
    }
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network_error', `cannot reach the server: ${e.message}`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) {
    const err = data && typeof data === 'object' ? data.error : null;
    const message = err?.message ?? (typeof data === 'string' && data ? data : `HTTP ${res.status} ${res.statusText}`);
    throw new ApiError(res.status, err?.code ?? `http_${res.status}`, message);
  }
  return data;
}

/**
 * Runs `fn` now and then every `interval()` ms (null: stop) while the view
 * that started it is shown; one call at a time. `now()` runs it at once.
 */
function poll(interval, fn) {
  const owner = view;
  let timer = null;
  let running = false;
  let again = false;
  const tick = async () => {
    if (owner !== view) return;
    if (running) {
      again = true;
      return;
    }
    clearTimeout(timer);
    owner.timers.delete(timer);
    running = true;
    try {
      await fn();
      if (owner === view) clearError('poll');
    } catch (e) {
      if (owner === view) showError(e, 'poll');
    }
    running = false;
    if (owner !== view) return;
    if (again) {
      again = false;
      tick();
      return;
    }
    const ms = typeof interval === 'function' ? interval() : interval;
    if (ms === null || ms === undefined) return;
    timer = setTimeout(tick, ms);
    owner.timers.add(timer);
  };
  tick();
  return { now: tick };
}

// ---------------------------------------------------------------------------
// The error area

let errorSource = null;

/** Shows an error (an ApiError: the API's message and code, verbatim). A 401 signs out first. */
function showError(err, source = 'action') {
  if (err?.name === 'AbortError') return;
  if (err instanceof ApiError && err.status === 401 && session.who) signOut();
  const box = $('#error');
  const code = err?.code ?? 'error';
  const status = err instanceof ApiError && err.status ? ` (${err.status})` : '';
  fill(box,
    el('span', { class: 'error-code', 'data-testid': 'error-code' }, `${code}${status}`),
    el('span', { class: `error-message${/\n/.test(err?.message ?? '') ? ' multiline' : ''}`, 'data-testid': 'error-message' }, err?.message ?? String(err)),
    el('button', { type: 'button', class: 'error-close', 'aria-label': 'Dismiss', on: { click: () => clearError() } }, '×'),
  );
  box.hidden = false;
  errorSource = source;
}

/** Hides the error area (with a source: only if the shown error came from it). */
function clearError(source) {
  if (source && errorSource !== source) return;
  const box = $('#error');
  box.hidden = true;
  box.replaceChildren();
  errorSource = null;
}

const localError = (message, code = 'invalid_input') => ({ code, message });

// ---------------------------------------------------------------------------
// Sign in and out

/** Forgets everything of the signed-in user: polls, requests, data in memory and in the DOM, the token. */
function resetAll() {
  endView();
  session.token = null;
  session.who = null;
  sessionStorage.clear();
  $('#view').replaceChildren();
  $('#whoami').replaceChildren();
  $('#whoami').removeAttribute('data-tenant');
  $('#whoami').removeAttribute('data-role');
  $('#nav').hidden = true;
  $('#session').hidden = true;
  clearError();
}

function showSignIn() {
  $('#view').replaceChildren();
  $('#signin-view').hidden = false;
  $('#token').value = '';
  $('#token').focus();
}

function signOut() {
  resetAll();
  showSignIn();
}

async function signIn(token) {
  resetAll();
  const owner = view;
  session.token = token;
  let who;
  try {
    who = await api('GET', '/v1/whoami');
  } catch (e) {
    if (owner !== view) return; // signed in or out again meanwhile
    session.token = null;
    showSignIn();
    showError(e);
    return;
  }
  if (owner !== view) return;
  session.who = who;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('#token').value = '';
  $('#signin-view').hidden = true;
  const whoami = $('#whoami');
  if (who?.admin) {
    whoami.setAttribute('data-role', 'admin');
    whoami.append('admin ', el('span', { class: 'muted' }, '(read-only, every tenant)'));
  } else {
    whoami.setAttribute('data-role', 'tenant');
    whoami.setAttribute('data-tenant', who?.tenant ?? '');
    whoami.append('tenant ', el('strong', {}, who?.tenant ?? '?'));
  }
  for (const a of document.querySelectorAll('#nav [data-tenant-only]')) a.hidden = isAdmin();
  $('#nav').hidden = false;
  $('#session').hidden = false;
  route();
}

// ---------------------------------------------------------------------------
// Routing: #/overview, #/jobs/ID, #/submit, #/components, #/taskmanagers

function route() {
  if (!session.who) {
    showSignIn();
    return;
  }
  endView();
  clearError();
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const params = new URLSearchParams(query ?? '');
  const main = $('#view');
  main.replaceChildren();
  const page = parts[0] ?? 'overview';
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.route === (page === 'jobs' ? 'overview' : page));
  }
  if (page === 'overview') overviewPage(main);
  else if (page === 'jobs' && parts[1]) jobPage(main, parts[1]);
  else if (page === 'jobs') overviewPage(main);
  else if (page === 'submit' && !isAdmin()) submitPage(main, params);
  else if (page === 'components') componentsPage(main);
  else if (page === 'taskmanagers') taskManagersPage(main);
  else main.append(section('Not found', el('p', {}, 'No such page. '), el('a', { href: '#/overview' }, 'Go to the overview')));
}

// ---------------------------------------------------------------------------
// Overview

function overviewPage(main) {
  const counts = el('div', { class: 'state-counts', 'data-testid': 'state-counts' });
  const headers = ['ID', 'Name', 'State', ...(isAdmin() ? ['Tenant'] : []), 'Submitted', 'Duration', ...(isAdmin() ? [] : [''])];
  const jobs = table('jobs-table', headers);
  const tm = el('div', { 'data-testid': 'tm-summary' }, 'loading…');
  const comps = table('overview-components', ['Digest', 'World', 'Size', ...(isAdmin() ? ['Tenant'] : [])]);
  main.append(
    section('Jobs', counts, el('div', { class: 'scroll' }, jobs.table)),
    el('div', { class: 'grid2' },
      section('TaskManagers', tm, el('p', {}, el('a', { href: '#/taskmanagers' }, 'TaskManagers →'))),
      section('Uploaded components', el('div', { class: 'scroll' }, comps.table),
        el('p', {}, el('a', { href: '#/components' }, isAdmin() ? 'Components →' : 'Upload a component →')))),
  );

  const refresh = poll(POLL_OVERVIEW_MS, async () => {
    const [jobList, tms, components] = await Promise.all([
      api('GET', '/v1/jobs'),
      api('GET', '/v1/taskmanagers'),
      api('GET', '/v1/components'),
    ]);
    renderStateCounts(counts, jobList.jobs ?? []);
    renderJobsTable(jobs, jobList.jobs ?? [], headers.length, () => refresh.now());
    renderTmSummary(tm, tms.taskmanagers ?? []);
    renderComponentsSummary(comps, components.components ?? []);
  });
}

function renderStateCounts(box, jobs) {
  const n = new Map(STATES.map((s) => [s, 0]));
  for (const j of jobs) n.set(j.state, (n.get(j.state) ?? 0) + 1);
  fill(box,
    el('span', { class: 'count-chip total' }, el('strong', {}, fmtNum(jobs.length)), ' jobs'),
    ...[...n].map(([state, count]) => el('span', { class: `count-chip state-${state}${count ? '' : ' zero'}`, 'data-testid': 'state-count', 'data-state': state },
      el('strong', {}, fmtNum(count)), ` ${state}`)),
  );
}

function renderJobsTable({ table: t, body }, jobs, columns, refresh) {
  t.setAttribute('data-loaded', 'true');
  if (!jobs.length) {
    emptyRow(body, columns, isAdmin() ? 'No jobs.' : 'No jobs yet: submit one.');
    return;
  }
  const now = Date.now();
  const sorted = [...jobs].sort((a, b) => (b.submitted_ms ?? 0) - (a.submitted_ms ?? 0));
  fill(body, ...sorted.map((j) => {
    const ended = ENDED.has(j.state);
    const duration = (j.ended_ms ?? now) - j.submitted_ms;
    return el('tr', { 'data-job-id': j.id },
      el('td', {}, el('a', { href: `#/jobs/${encodeURIComponent(j.id)}`, class: 'mono' }, j.id)),
      el('td', {}, j.name),
      el('td', { 'data-col': 'state' }, stateBadge(j.state)),
      isAdmin() ? el('td', { 'data-col': 'tenant' }, j.tenant ?? '') : null,
      el('td', { class: 'mono' }, fmtTime(j.submitted_ms)),
      el('td', {}, fmtDuration(duration)),
      isAdmin() ? null : el('td', {}, ended
        ? el('button', { type: 'button', class: 'btn small danger', 'data-action': 'delete', on: { click: () => deleteJob(j.id, refresh) } }, 'Delete')
        : null),
    );
  }));
}

async function deleteJob(id, after) {
  if (!confirm(`Delete job ${id} and its files (checkpoints, savepoints)?`)) return;
  try {
    await api('DELETE', `/v1/jobs/${enc(id)}`);
    after();
  } catch (e) {
    showError(e);
  }
}

function renderTmSummary(box, tms) {
  if (!tms.length) {
    fill(box, el('p', { 'data-testid': 'embedded' },
      el('strong', {}, 'Embedded mini cluster'), ': this server (', el('code', {}, 'sluice serve'),
      ') runs every job itself; there are no TaskManagers.'));
    return;
  }
  const total = tms.reduce((s, t) => s + (t.slots_total ?? 0), 0);
  const free = tms.reduce((s, t) => s + (t.slots_free ?? 0), 0);
  const tasks = tms.reduce((s, t) => s + (t.tasks?.length ?? 0), 0);
  fill(box, el('div', { class: 'stats' },
    stat('TaskManagers', fmtNum(tms.length)),
    stat('Slots free', `${fmtNum(free)} of ${fmtNum(total)}`),
    stat('Tasks', fmtNum(tasks))));
}

function stat(label, value, attrs = {}) {
  return el('div', { class: 'stat', ...attrs }, el('div', { class: 'stat-value' }, value), el('div', { class: 'stat-label' }, label));
}

function renderComponentsSummary({ table: t, body }, components) {
  t.setAttribute('data-loaded', 'true');
  if (!components.length) {
    emptyRow(body, isAdmin() ? 4 : 3, 'No components uploaded.');
    return;
  }
  fill(body, ...components.map((c) => el('tr', { 'data-digest': c.digest },
    el('td', { class: 'mono', title: c.digest }, shortDigest(c.digest)),
    el('td', {}, c.world ?? ''),
    el('td', {}, fmtBytes(c.size)),
    isAdmin() ? el('td', { 'data-col': 'tenant' }, c.tenant ?? '') : null)));
}

// ---------------------------------------------------------------------------
// A job

function jobPage(main, id) {
  const owner = view;
  const st = {
    id,
    job: null,
    prev: null, // the previous poll's sample: { t, ops: Map(name → operator) }
    graphKey: null,
    nodes: new Map(), // name → SVG refs
    selected: null,
    tab: 'operators',
    logsPolling: false,
    pending: false,
    gone: false,
    chart: null,
    chartSeries: [], // [{ name, field }]
    chartData: null,
    ops: new Map(), // name → the operator's metrics of the last poll
    rates: new Map(), // name → { out, in, busy, bp, subtasks: [{ out, busy, bp }] }
    savepoints: null,
    retained: null,
  };
  const page = el('div', { id: 'job-page', 'data-job-id': id });
  page.append(el('p', { class: 'muted' }, 'loading job ', el('code', {}, id), '…'));
  main.append(page);

  const refresh = poll(() => (st.gone ? null : st.job && ENDED.has(st.job.state) ? POLL_JOB_ENDED_MS : POLL_JOB_MS), async () => {
    let job;
    try {
      job = await api('GET', `/v1/jobs/${enc(id)}`);
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 403)) {
        st.gone = true;
        fill(page, section('Job not available',
          el('p', { 'data-testid': 'job-missing' }, 'This job cannot be shown. '), el('a', { href: '#/overview' }, 'Back to the overview')));
      }
      throw e;
    }
    if (owner !== view) return;
    const first = !st.job;
    st.job = job;
    if (first) buildJobPage(page, st);
    renderJob(st);
    if (st.tab === 'checkpoints') await loadRetained(st);
    page.setAttribute('data-loaded', 'true');
  });
  st.refresh = refresh;
  owner.onResize = () => resizeChart(st);
}

function buildJobPage(page, st) {
  st.ui = {};
  const ui = st.ui;
  ui.title = el('h1', {}, st.job.name);
  ui.state = stateBadge(st.job.state, { 'data-testid': 'job-state' });
  ui.meta = el('dl', { class: 'meta' });
  ui.jobError = el('div', { class: 'job-error', hidden: true });
  ui.status = el('div', { class: 'action-status', id: 'action-status', 'aria-live': 'polite' });
  ui.actions = isAdmin() ? null : el('div', { class: 'actions' },
    el('button', { type: 'button', id: 'savepoint-btn', class: 'btn', on: { click: () => takeSavepoint(st, false) } }, 'Savepoint'),
    el('button', { type: 'button', id: 'stop-btn', class: 'btn', on: { click: () => takeSavepoint(st, true) } }, 'Stop with savepoint'),
    el('button', { type: 'button', id: 'cancel-btn', class: 'btn danger', on: { click: () => cancelJob(st) } }, 'Cancel'),
    el('button', { type: 'button', id: 'delete-btn', class: 'btn danger', on: { click: () => deleteJob(st.id, () => { location.hash = '#/overview'; }) } }, 'Delete'));

  ui.graphBox = el('div', { id: 'job-graph', class: 'graph-box' });
  ui.subtasks = el('div', { id: 'subtasks', class: 'subtasks', hidden: true });
  ui.chartBox = el('div', { id: 'throughput', class: 'chart-box' });
  ui.chartNote = el('p', { class: 'muted small' }, 'Records per second out of each node (into each sink), from successive polls.');
  const tabs = [['operators', 'Operators'], ['checkpoints', 'Checkpoints'], ['exceptions', 'Exceptions'], ['logs', 'Logs'], ['spec', 'Spec']];
  ui.tabButtons = new Map();
  ui.tabBar = el('div', { class: 'tabs', role: 'tablist' }, tabs.map(([name, label]) => {
    const b = el('button', { type: 'button', class: 'tab', role: 'tab', id: `tab-${name}`, 'data-tab': name, on: { click: () => selectTab(st, name) } }, label);
    ui.tabButtons.set(name, b);
    return b;
  }));
  ui.panel = el('div', { class: 'tab-panel', id: 'tab-panel', role: 'tabpanel' });

  fill(page,
    el('div', { class: 'card job-head' },
      el('div', { class: 'job-title' }, ui.title, ui.state),
      el('div', { class: 'muted mono' }, st.id),
      ui.meta, ui.jobError, ui.actions, ui.status),
    section('Job graph', ui.graphBox, legend(), ui.subtasks),
    section('Throughput', ui.chartBox, ui.chartNote),
    el('div', { class: 'card' }, ui.tabBar, ui.panel),
  );
  selectTab(st, st.tab, false);
}

function legend() {
  return el('div', { class: 'legend' },
    el('span', {}, 'idle'),
    el('span', { class: 'legend-scale', style: `background: linear-gradient(to right, ${busyColour(0)}, ${busyColour(0.5)}, ${busyColour(1)})` }),
    el('span', {}, 'busy'),
    el('span', { class: 'legend-bp' }, el('span', { class: 'legend-swatch bp' }), 'hatched, black border: backpressured'),
    el('span', { class: 'legend-task' }, el('span', { class: 'legend-swatch task' }), 'dashed box: nodes chained into one task'));
}

function renderJob(st) {
  const { job, ui } = st;
  const now = Date.now();
  computeRates(st, now);

  ui.title.textContent = job.name;
  ui.state.className = `badge state-${job.state}`;
  ui.state.textContent = job.state;
  const meta = [
    ['Submitted', fmtTime(job.submitted_ms)],
    ['Ended', job.ended_ms ? fmtTime(job.ended_ms) : '–'],
    ['Duration', fmtDuration((job.ended_ms ?? now) - job.submitted_ms)],
    ['Restarts', fmtNum(job.restarts ?? 0)],
    ['Total parallelism', fmtNum(job.parallelism)],
  ];
  if (job.stopped_with_savepoint) meta.push(['Stopped with savepoint', typeof job.stopped_with_savepoint === 'string' ? job.stopped_with_savepoint : 'yes']);
  if (job.status) meta.push(['Status', job.status]);
  if (job.components?.length) meta.push(['Components', job.components.map(shortDigest).join(', ')]);
  fill(ui.meta, ...meta.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  ui.jobError.hidden = !job.error;
  ui.jobError.textContent = job.error ? `Error: ${job.error}` : '';
  updateActions(st);

  const key = JSON.stringify(job.graph ?? null);
  if (key !== st.graphKey) {
    st.graphKey = key;
    drawGraph(st);
    setupChart(st);
  }
  updateGraph(st);
  renderSubtasks(st);
  pushChart(st, now);
  ui.tabButtons.get('exceptions').textContent = job.exceptions?.length ? `Exceptions (${job.exceptions.length})` : 'Exceptions';
  if (st.tab === 'operators') renderOperatorsTab(st);
  else if (st.tab === 'checkpoints') renderCheckpointsTab(st);
  else if (st.tab === 'exceptions') renderExceptionsTab(st);
}

/** Rates over the last poll interval: records/s, busy and backpressured fractions (Δbusy_ms / (Δwall_ms × parallelism)). */
function computeRates(st, now) {
  const ops = new Map((st.job.operators ?? []).map((o) => [o.name, o]));
  const prev = st.prev;
  st.rates = new Map();
  if (prev) {
    const dt = now - prev.t;
    for (const [name, o] of ops) {
      const p = prev.ops.get(name);
      if (!p || dt <= 0) continue;
      const par = Math.max(1, o.parallelism ?? 1);
      const subtasks = (o.subtasks ?? []).map((s, i) => {
        const ps = p.subtasks?.[i];
        if (!ps) return null;
        return {
          out: Math.max(0, ((num(s.records_out) - num(ps.records_out)) * 1000) / dt),
          busy: clamp01((num(s.busy_ms) - num(ps.busy_ms)) / dt),
          bp: clamp01((num(s.backpressured_ms) - num(ps.backpressured_ms)) / dt),
        };
      });
      const delta = (field) => num(o[field]) - num(p[field]);
      st.rates.set(name, {
        out: Math.max(0, (delta('records_out') * 1000) / dt),
        in: Math.max(0, (delta('records_in') * 1000) / dt),
        busy: clamp01(delta('busy_ms') / (dt * par)),
        bp: clamp01(delta('backpressured_ms') / (dt * par)),
        subtasks,
      });
    }
  }
  st.ops = ops;
  st.prev = { t: now, ops };
}

function updateActions(st) {
  if (!st.ui.actions) return;
  const live = !ENDED.has(st.job.state);
  $('#savepoint-btn', st.ui.actions).disabled = !live || st.pending;
  $('#stop-btn', st.ui.actions).disabled = !live || st.pending;
  $('#cancel-btn', st.ui.actions).disabled = !live || st.pending;
  $('#delete-btn', st.ui.actions).disabled = live || st.pending;
}

function setStatus(st, ...content) {
  fill(st.ui.status, ...content);
}

async function takeSavepoint(st, stop) {
  if (stop && !confirm(`Stop job ${st.id} with a savepoint?`)) return;
  const owner = view;
  st.pending = true;
  updateActions(st);
  setStatus(st, el('span', { class: 'spinner' }), stop ? 'stopping with a savepoint…' : 'taking savepoint…');
  try {
    const r = await api('POST', `/v1/jobs/${enc(st.id)}/${stop ? 'stop' : 'savepoints'}`);
    if (owner !== view) return;
    setStatus(st, stop || r.stopped ? 'stopped with savepoint ' : 'savepoint ', el('code', { 'data-testid': 'savepoint-result' }, r.savepoint));
    selectTab(st, 'checkpoints');
  } catch (e) {
    if (owner !== view) return;
    setStatus(st);
    showError(e);
  } finally {
    st.pending = false;
    if (owner === view) {
      updateActions(st);
      st.refresh.now();
    }
  }
}

async function cancelJob(st) {
  if (!confirm(`Cancel job ${st.id}?`)) return;
  const owner = view;
  st.pending = true;
  updateActions(st);
  try {
    await api('POST', `/v1/jobs/${enc(st.id)}/cancel`);
    if (owner === view) setStatus(st, 'cancel requested');
  } catch (e) {
    if (owner === view) showError(e);
  } finally {
    st.pending = false;
    if (owner === view) {
      updateActions(st);
      st.refresh.now();
    }
  }
}

// --- the job graph ----------------------------------------------------------

const NODE_W = 250;
const NODE_H = 138;

function busyColour(busy) {
  // Flink's colouring: idle blue → busy red.
  const f = clamp01(busy ?? 0);
  const idle = [196, 220, 255];
  const hot = [245, 95, 85];
  const c = idle.map((v, i) => Math.round(v + (hot[i] - v) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

/** An edge's label: its partition, and its output (if not main) and input (into a two-input operator). */
function edgeLabel(e, twoInputs) {
  const word = (x) => (x && typeof x === 'object' ? Object.entries(x).map(([k, v]) => `${k} ${v}`).join(' ') : String(x));
  const parts = [e.partition ? word(e.partition) : 'default'];
  if (e.output && e.output !== 'main') parts.push(`${word(e.output)} output`);
  if (twoInputs.has(e.to)) parts.push(`input ${word(e.input ?? 0)}`);
  return parts.join(' · ');
}

function drawGraph(st) {
  const box = st.ui.graphBox;
  st.nodes = new Map();
  const graph = st.job.graph;
  if (!graph?.nodes?.length) {
    fill(box, el('p', { class: 'muted' }, 'No graph.'));
    return;
  }
  if (typeof dagre === 'undefined') {
    fill(box, el('p', { class: 'muted' }, 'The graph library (dagre) did not load.'));
    return;
  }
  const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
  g.setGraph({ rankdir: 'LR', nodesep: 28, ranksep: 56, edgesep: 16, marginx: 16, marginy: 16 });
  g.setDefaultEdgeLabel(() => ({}));
  const perTask = new Map();
  for (const n of graph.nodes) perTask.set(n.task, (perTask.get(n.task) ?? 0) + 1);
  const clusterId = (task) => `\u0001task ${task}`;
  for (const n of graph.nodes) {
    g.setNode(n.name, { width: NODE_W, height: NODE_H });
    if (n.task !== undefined && n.task !== null && perTask.get(n.task) > 1) {
      g.setNode(clusterId(n.task), { task: n.task });
      g.setParent(n.name, clusterId(n.task));
    }
  }
  // Targets whose edges come into more than one input (joins, two-input keyed-process).
  const inputs = new Map();
  for (const e of graph.edges ?? []) inputs.set(e.to, (inputs.get(e.to) ?? new Set()).add(e.input ?? 0));
  const twoInputs = new Set([...inputs].filter(([, set]) => set.size > 1).map(([to]) => to));
  (graph.edges ?? []).forEach((e, i) => {
    if (!g.hasNode(e.from) || !g.hasNode(e.to)) return;
    const label = edgeLabel(e, twoInputs);
    g.setEdge(e.from, e.to, { label, width: label.length * 6.6 + 12, height: 18, labelpos: 'c', side: Boolean(e.output && e.output !== 'main') }, String(i));
  });
  dagre.layout(g);
  const { width, height } = g.graph();

  const root = svg('svg', {
    class: 'graph', width: Math.ceil(width), height: Math.ceil(height),
    viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`, role: 'img', 'aria-label': 'job graph',
  });
  root.append(svg('defs', {},
    svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' })),
    svg('pattern', { id: 'hatch', width: 8, height: 8, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
      svg('rect', { width: 3, height: 8, fill: '#1b1b1b' }))));

  for (const v of g.nodes()) {
    const c = g.node(v);
    if (c.task === undefined) continue;
    root.append(svg('g', { class: 'task-cluster', 'data-task': c.task },
      svg('rect', { x: c.x - c.width / 2, y: c.y - c.height / 2, width: c.width, height: c.height, rx: 8 }),
      svg('text', { x: c.x - c.width / 2 + 8, y: c.y - c.height / 2 + 14, class: 'task-label' }, `task ${c.task} (chained)`)));
  }
  for (const e of g.edges()) {
    const lab = g.edge(e);
    const pts = lab.points ?? [];
    if (!pts.length) continue;
    const d = pts.map((p, i) => `${i ? 'L' : 'M'}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
    root.append(svg('g', { class: `edge${lab.side ? ' side' : ''}`, 'data-from': e.v, 'data-to': e.w },
      svg('path', { d, 'marker-end': 'url(#arrow)' }),
      lab.label ? svg('g', { class: 'edge-label', transform: `translate(${lab.x},${lab.y})` },
        svg('rect', { x: -lab.width / 2, y: -9, width: lab.width, height: 18, rx: 4 }),
        svg('text', { 'text-anchor': 'middle', y: 4 }, lab.label)) : null));
  }
  for (const n of graph.nodes) {
    const pos = g.node(n.name);
    const refs = {};
    const name = n.name.length > 30 ? `${n.name.slice(0, 29)}…` : n.name;
    const line = (y, cls, ...content) => svg('text', { x: 10, y, class: cls }, ...content);
    refs.box = svg('rect', { class: 'box', width: NODE_W, height: NODE_H, rx: 6 });
    refs.hatch = svg('rect', { class: 'hatch', width: NODE_W, height: NODE_H, rx: 6, fill: 'url(#hatch)', opacity: 0 });
    refs.recIn = svg('tspan', { 'data-testid': 'records-in' }, '0');
    refs.recOut = svg('tspan', { 'data-testid': 'records-out' }, '0');
    refs.rate = svg('tspan', { 'data-testid': 'rate' }, '–');
    refs.busy = svg('tspan', { 'data-testid': 'busy' }, '–');
    refs.bp = svg('tspan', { 'data-testid': 'backpressure' }, '–');
    refs.bpLine = line(99, 'line', 'busy ', refs.busy, ' · backpressured ', refs.bp);
    refs.wm = svg('tspan', { 'data-testid': 'watermark' }, '–');
    refs.lag = svg('tspan', { 'data-testid': 'watermark-lag' }, '–');
    refs.g = svg('g', {
      class: `node role-${n.role ?? 'operator'}`, 'data-node': n.name, 'data-task': n.task, tabindex: 0, role: 'button',
      transform: `translate(${(pos.x - NODE_W / 2).toFixed(1)},${(pos.y - NODE_H / 2).toFixed(1)})`,
      on: {
        click: () => selectNode(st, n.name),
        keydown: (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); selectNode(st, n.name); } },
      },
    },
    svg('title', {}, `${n.name}: ${n.role} ${n.kind}, parallelism ${n.parallelism}, task ${n.task} — click for its subtasks`),
    svg('rect', { class: 'sel', x: -4, y: -4, width: NODE_W + 8, height: NODE_H + 8, rx: 9 }),
    refs.box, refs.hatch,
    line(19, 'name', name),
    line(35, 'line muted', `${n.role ?? ''} · ${n.kind ?? ''}`),
    line(50, 'line muted', `parallelism ${n.parallelism ?? '?'} · task ${n.task ?? '?'}`),
    line(67, 'line', 'in ', refs.recIn),
    svg('text', { x: 128, y: 67, class: 'line' }, 'out ', refs.recOut),
    line(83, 'line', refs.rate, n.role === 'sink' ? ' in' : ' out'),
    refs.bpLine,
    line(116, 'line small', 'wm ', refs.wm),
    line(130, 'line small', 'lag ', refs.lag));
    root.append(refs.g);
    st.nodes.set(n.name, refs);
  }
  fill(box, root);
  // Fit a wide graph to the page while its text stays readable; scroll beyond that.
  if (width > box.clientWidth && width * 0.6 <= box.clientWidth) root.classList.add('fit');
  if (st.selected) st.nodes.get(st.selected)?.g.classList.add('selected');
}

function updateGraph(st) {
  for (const [name, refs] of st.nodes) {
    const o = st.ops.get(name);
    const r = st.rates.get(name);
    refs.recIn.textContent = fmtNum(o?.records_in ?? 0);
    refs.recOut.textContent = fmtNum(o?.records_out ?? 0);
    const sink = refs.g.classList.contains('role-sink');
    refs.rate.textContent = r ? fmtRate(sink ? r.in : r.out) : '–/s';
    refs.busy.textContent = r ? fmtPct(r.busy) : '–';
    refs.bp.textContent = r ? fmtPct(r.bp) : '–';
    refs.wm.textContent = fmtWatermark(o?.watermark);
    refs.lag.textContent = o?.watermark_lag_ms !== null && o?.watermark_lag_ms !== undefined ? fmtDuration(o.watermark_lag_ms) : '–';
    const busy = r?.busy ?? 0;
    const bp = r?.bp ?? 0;
    refs.box.style.fill = busyColour(busy);
    refs.box.style.stroke = bp >= 0.05 ? '#111' : '#4d5d75';
    refs.box.style.strokeWidth = String(bp >= 0.05 ? 1.5 + 3 * bp : 1.2);
    refs.hatch.setAttribute('opacity', (bp * 0.45).toFixed(2));
    refs.bpLine.classList.toggle('bp-high', bp >= 0.05);
    refs.g.setAttribute('data-busy', r ? r.busy.toFixed(3) : '');
    refs.g.setAttribute('data-backpressured', r ? r.bp.toFixed(3) : '');
  }
}

function selectNode(st, name) {
  st.selected = st.selected === name ? null : name;
  for (const [n, refs] of st.nodes) refs.g.classList.toggle('selected', n === st.selected);
  renderSubtasks(st);
  if (st.selected) st.ui.subtasks.scrollIntoView({ block: 'nearest' });
}

function renderSubtasks(st) {
  const box = st.ui.subtasks;
  const o = st.selected ? st.ops.get(st.selected) : null;
  if (!st.selected) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.hidden = false;
  const rates = st.rates.get(st.selected)?.subtasks ?? [];
  // On a JobManager: where each subtask runs (tasks are named `a+b#i` for the chain a, b).
  const placed = new Map();
  for (const p of st.job.subtasks ?? []) {
    const [chain, index] = String(p.task).split('#');
    for (const name of chain.split('+')) placed.set(`${name}#${index}`, p.taskmanager);
  }
  const where = Array.isArray(st.job.subtasks);
  const headers = ['Subtask', 'Records in', 'Records out', 'Out/s', 'Busy', 'Backpressured', 'Watermark', ...(where ? ['TaskManager'] : [])];
  const t = table('subtasks-table', headers, { 'data-node': st.selected });
  const subtasks = o?.subtasks ?? [];
  if (!subtasks.length) emptyRow(t.body, headers.length, 'No subtask metrics yet.');
  else {
    fill(t.body, ...subtasks.map((s, i) => {
      const r = rates[i];
      const index = s.subtask ?? i;
      return el('tr', { 'data-subtask': index },
        el('td', {}, String(index)),
        el('td', { class: 'num' }, fmtNum(s.records_in)),
        el('td', { class: 'num' }, fmtNum(s.records_out)),
        el('td', { class: 'num' }, r ? fmtRate(r.out) : '–'),
        el('td', { class: 'num' }, r ? fmtPct(r.busy) : '–'),
        el('td', { class: 'num' }, r ? fmtPct(r.bp) : '–'),
        el('td', { class: 'mono' }, fmtWatermark(s.watermark)),
        where ? el('td', { class: 'mono' }, placed.get(`${st.selected}#${index}`) ?? '–') : null);
    }));
  }
  fill(box,
    el('div', { class: 'subtasks-head' },
      el('h3', {}, 'Subtasks of ', el('code', {}, st.selected)),
      el('button', { type: 'button', class: 'btn small', id: 'close-subtasks', on: { click: () => selectNode(st, st.selected) } }, 'Close')),
    el('div', { class: 'scroll' }, t.table));
}

// --- the throughput chart --------------------------------------------------

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22'];

function setupChart(st) {
  st.chart?.destroy();
  st.chart = null;
  const nodes = [...(st.job.graph?.nodes ?? [])];
  const order = { source: 0, operator: 1, sink: 2 };
  nodes.sort((a, b) => (order[a.role] ?? 1) - (order[b.role] ?? 1));
  st.chartSeries = nodes.map((n) => ({ name: n.name, field: n.role === 'sink' ? 'in' : 'out' }));
  st.chartData = [[], ...st.chartSeries.map(() => [])];
  st.ui.chartBox.replaceChildren();
}

function pushChart(st, now) {
  const d = st.chartData;
  if (!st.chart && d[0].length < 2) {
    const ended = ENDED.has(st.job.state);
    st.ui.chartBox.setAttribute('data-empty', 'true');
    st.ui.chartBox.textContent = ended ? `The job has ended (${st.job.state}).` : 'collecting samples…';
  }
  // An ended job's counters stand still: keep the chart as it was.
  if (!st.chartSeries.length || !st.rates.size || ENDED.has(st.job.state)) return;
  d[0].push(now / 1000);
  st.chartSeries.forEach((s, i) => {
    const r = st.rates.get(s.name);
    d[i + 1].push(r ? r[s.field] : null);
  });
  if (d[0].length > CHART_POINTS) for (const a of d) a.shift();
  if (typeof uPlot === 'undefined') {
    st.ui.chartNote.textContent = 'The chart library (uPlot) did not load.';
    return;
  }
  if (!st.chart && d[0].length >= 2) {
    fill(st.ui.chartBox);
    st.ui.chartBox.removeAttribute('data-empty');
    const width = Math.max(320, st.ui.chartBox.clientWidth - 4);
    st.chart = new uPlot({
      width,
      height: 220,
      scales: { x: { time: true } },
      series: [
        { label: 'time (UTC)', value: (u, v) => (v === null || v === undefined ? '–' : new Date(v * 1000).toISOString().slice(11, 19)) },
        ...st.chartSeries.map((s, i) => ({
          label: `${s.name} ${s.field}/s`,
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          points: { show: false },
          value: (u, v) => (v === null || v === undefined ? '–' : fmtNum(Math.round(v))),
        })),
      ],
      axes: [
        // Whole seconds, as UTC clock times (the page shows every time in UTC).
        { space: 90, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600], values: (u, vals) => vals.map((v) => new Date(v * 1000).toISOString().slice(11, 19)) },
        { size: 70, values: (u, vals) => vals.map((v) => fmtNum(v)) },
      ],
    }, d, st.ui.chartBox);
  } else if (st.chart) {
    st.chart.setData(d);
  }
}

function resizeChart(st) {
  if (st.chart) st.chart.setSize({ width: Math.max(320, st.ui.chartBox.clientWidth - 4), height: 220 });
}

// --- tabs -----------------------------------------------------------------------

function selectTab(st, name, load = true) {
  st.tab = name;
  for (const [n, b] of st.ui.tabButtons) {
    b.classList.toggle('active', n === name);
    b.setAttribute('aria-selected', String(n === name));
  }
  st.ui.panel.replaceChildren();
  st.ui.panel.setAttribute('data-tab', name);
  if (name === 'operators') renderOperatorsTab(st);
  else if (name === 'checkpoints') {
    renderCheckpointsTab(st);
    if (load) loadRetained(st).catch((e) => showError(e));
  } else if (name === 'exceptions') renderExceptionsTab(st);
  else if (name === 'logs') startLogs(st);
  else if (name === 'spec') showSpec(st);
}

function renderOperatorsTab(st) {
  const t = table('operators-table', ['Name', 'Role', 'Kind', 'Parallelism', 'Task', 'Records in', 'Records out', 'Out/s', 'Failed', 'Late', 'Late dropped', 'Busy', 'Backpressured', 'Watermark', 'Lag']);
  const nodes = st.job.graph?.nodes ?? [];
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const names = nodes.length ? nodes.map((n) => n.name) : [...st.ops.keys()];
  fill(t.body, ...names.map((name) => {
    const o = st.ops.get(name) ?? {};
    const n = byName.get(name) ?? {};
    const r = st.rates.get(name);
    return el('tr', { 'data-operator': name },
      el('td', {}, el('a', { href: '#', on: { click: (ev) => { ev.preventDefault(); if (st.selected !== name) selectNode(st, name); } } }, name)),
      el('td', {}, n.role ?? ''), el('td', {}, n.kind ?? ''),
      el('td', { class: 'num' }, fmtNum(o.parallelism ?? n.parallelism)), el('td', { class: 'num' }, n.task ?? ''),
      el('td', { class: 'num' }, fmtNum(o.records_in)), el('td', { class: 'num' }, fmtNum(o.records_out)),
      el('td', { class: 'num' }, r ? fmtRate(r.out) : '–'),
      el('td', { class: 'num' }, fmtNum(o.records_failed)), el('td', { class: 'num' }, fmtNum(o.records_late)),
      el('td', { class: 'num' }, fmtNum(o.records_late_dropped)),
      el('td', { class: 'num' }, r ? fmtPct(r.busy) : '–'), el('td', { class: 'num' }, r ? fmtPct(r.bp) : '–'),
      el('td', { class: 'mono' }, fmtWatermark(o.watermark)),
      el('td', { class: 'num' }, o.watermark_lag_ms !== null && o.watermark_lag_ms !== undefined ? fmtDuration(o.watermark_lag_ms) : '–'));
  }));
  fill(st.ui.panel, el('div', { class: 'scroll' }, t.table));
}

async function loadRetained(st) {
  const owner = view;
  const [sp, cp] = await Promise.all([
    api('GET', `/v1/jobs/${enc(st.id)}/savepoints`),
    api('GET', `/v1/jobs/${enc(st.id)}/checkpoints`),
  ]);
  if (owner !== view) return;
  st.savepoints = sp.savepoints ?? [];
  st.retained = cp.checkpoints ?? [];
  if (st.tab === 'checkpoints') renderCheckpointsTab(st);
}

function renderCheckpointsTab(st) {
  const c = st.job.checkpoints;
  const parts = [];
  if (!c) {
    parts.push(el('p', { class: 'muted', 'data-testid': 'checkpoints-off' }, st.job.state === 'created'
      ? 'The job has not started yet: no checkpoint.'
      : 'No checkpoint statistics for this job.'));
  } else {
    parts.push(el('div', { class: 'stats', 'data-testid': 'checkpoint-counts' },
      stat('Completed', fmtNum(c.completed), { 'data-testid': 'checkpoints-completed' }),
      stat('Aborted', fmtNum(c.aborted), { 'data-testid': 'checkpoints-aborted' }),
      stat('Last', c.last ? `#${c.last.id}` : '–'),
      stat('Last duration', c.last ? fmtDuration(c.last.duration_ms) : '–'),
      stat('Last size', c.last ? fmtBytes(c.last.size_bytes) : '–')));
    const h = table('checkpoints-history', ['ID', 'Kind', 'Status', 'Started', 'Duration', 'Size', 'Reason']);
    const history = [...(c.history ?? [])].reverse();
    if (!history.length) emptyRow(h.body, 7, 'No checkpoint yet.');
    else {
      fill(h.body, ...history.map((x) => el('tr', { 'data-checkpoint': x.id, class: x.status === 'aborted' ? 'aborted' : '' },
        el('td', { class: 'num' }, String(x.id)), el('td', {}, x.kind ?? ''), el('td', {}, x.status ?? ''),
        el('td', { class: 'mono' }, fmtTime(x.started_ms)), el('td', { class: 'num' }, fmtDuration(x.duration_ms)),
        el('td', { class: 'num' }, fmtBytes(x.size_bytes)), el('td', {}, x.reason ?? ''))));
    }
    parts.push(el('h3', {}, 'History (newest first)'), el('div', { class: 'scroll' }, h.table));
  }

  const s = table('savepoints-table', ['ID', 'Savepoint', 'Kind', 'Completed', 'Size', ...(isAdmin() ? [] : [''])]);
  s.table.setAttribute('data-loaded', st.savepoints ? 'true' : 'false');
  const savepoints = st.savepoints ?? [];
  if (!st.savepoints) emptyRow(s.body, 6, 'loading…');
  else if (!savepoints.length) emptyRow(s.body, 6, 'No savepoint retained.');
  else {
    fill(s.body, ...[...savepoints].reverse().map((x) => el('tr', { 'data-savepoint': x.savepoint },
      el('td', { class: 'num' }, String(x.id)),
      el('td', { class: 'mono' }, x.savepoint),
      el('td', {}, x.kind ?? ''),
      el('td', { class: 'mono' }, fmtTime(x.completed_ms)),
      el('td', { class: 'num' }, fmtBytes(x.size_bytes)),
      isAdmin() ? null : el('td', {}, el('a', {
        class: 'btn small', href: `#/submit?from=${encodeURIComponent(st.id)}&savepoint=${encodeURIComponent(x.savepoint)}`,
      }, 'Restore in a new job…')))));
  }
  parts.push(el('h3', {}, 'Retained savepoints'), el('div', { class: 'scroll' }, s.table));

  const r = table('retained-checkpoints', ['ID', 'Kind', 'Completed', 'Size']);
  const retained = st.retained ?? [];
  if (!retained.length) emptyRow(r.body, 4, st.retained ? 'None retained.' : 'loading…');
  else {
    fill(r.body, ...[...retained].reverse().map((x) => el('tr', { 'data-checkpoint': x.id },
      el('td', { class: 'num' }, String(x.id)), el('td', {}, x.kind ?? ''),
      el('td', { class: 'mono' }, fmtTime(x.completed_ms)), el('td', { class: 'num' }, fmtBytes(x.size_bytes)))));
  }
  parts.push(el('h3', {}, 'Retained checkpoints'), el('div', { class: 'scroll' }, r.table));
  fill(st.ui.panel, ...parts);
}

function renderExceptionsTab(st) {
  const job = st.job;
  const t = table('exceptions-table', ['Time', 'Message']);
  const list = [...(job.exceptions ?? [])].reverse();
  if (!list.length) emptyRow(t.body, 2, 'No exceptions.');
  else fill(t.body, ...list.map((x) => el('tr', {}, el('td', { class: 'mono' }, fmtTime(x.time_ms)), el('td', { class: 'pre' }, x.message))));
  fill(st.ui.panel,
    el('div', { class: 'stats' }, stat('Restarts', fmtNum(job.restarts ?? 0), { 'data-testid': 'restarts' }), stat('Exceptions', fmtNum(list.length))),
    job.error ? el('p', { class: 'job-error pre' }, `The job failed: ${job.error}`) : null,
    el('div', { class: 'scroll' }, t.table));
}

function startLogs(st) {
  const counts = el('div', { class: 'muted small', 'data-testid': 'log-counts' }, 'loading…');
  const lines = el('div', { class: 'log', id: 'log-lines', 'data-testid': 'log-lines' });
  fill(st.ui.panel, el('p', { class: 'muted small' }, `The newest ${LOG_TAIL} guest log lines, live.`), counts, lines);
  if (st.logsPolling) return;
  st.logsPolling = true;
  const owner = view;
  poll(() => {
    if (owner === view && st.tab === 'logs') return POLL_LOGS_MS;
    st.logsPolling = false;
    return null;
  }, async () => {
    if (st.tab !== 'logs') return;
    const r = await api('GET', `/v1/jobs/${enc(st.id)}/logs?tail=${LOG_TAIL}`);
    if (owner !== view || st.tab !== 'logs') return;
    const box = $('#log-lines', st.ui.panel);
    const countBox = $('[data-testid=log-counts]', st.ui.panel);
    if (!box || !countBox) return;
    countBox.textContent = `written ${fmtNum(r.written)} · rate-limited ${fmtNum(r.rate_limited)} · evicted ${fmtNum(r.evicted)}`;
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 24;
    const list = r.lines ?? [];
    if (!list.length) fill(box, el('div', { class: 'muted' }, 'No log lines.'));
    else {
      fill(box, ...list.map((l) => el('div', { class: `log-line level-${String(l.level ?? '').toLowerCase()}` },
        el('span', { class: 'log-time' }, fmtTime(l.time_ms)), ' ',
        el('span', { class: 'log-level' }, l.level ?? ''), ' ',
        el('span', { class: 'log-op' }, `${l.operator ?? ''}[${l.subtask ?? ''}]`), ' ',
        el('span', { class: 'log-msg' }, l.message ?? ''))));
    }
    if (atBottom) box.scrollTop = box.scrollHeight;
  });
}

async function showSpec(st) {
  const owner = view;
  const pre = el('pre', { id: 'spec-text', class: 'code' }, 'loading…');
  fill(st.ui.panel,
    isAdmin() ? null : el('p', {}, el('a', { class: 'btn small', href: `#/submit?from=${encodeURIComponent(st.id)}` }, 'Edit and submit as a new job…')),
    pre);
  try {
    const r = await api('GET', `/v1/jobs/${enc(st.id)}/spec`);
    if (owner !== view) return;
    pre.textContent = JSON.stringify(r.spec ?? r, null, 2);
    pre.setAttribute('data-loaded', 'true');
  } catch (e) {
    pre.textContent = '';
    showError(e);
  }
}

// ---------------------------------------------------------------------------
// Submit a job

function submitPage(main, params) {
  const owner = view;
  const text = el('textarea', {
    id: 'submit-spec', rows: 24, spellcheck: 'false', 'aria-label': 'job spec',
    placeholder: 'Paste a job spec: TOML (name = "…", [[sources]], [[operators]], …) or JSON ({"name": …}).\n' +
      'A component is the digest of an uploaded component: component = "sha256:…".',
  });
  const file = el('input', { type: 'file', id: 'spec-file', accept: '.toml,.json,text/plain,application/json,application/toml' });
  file.addEventListener('change', async () => {
    const f = file.files?.[0];
    if (f) text.value = await f.text();
  });
  const picker = el('select', { id: 'component-picker', 'aria-label': 'uploaded components' }, el('option', { value: '' }, 'loading components…'));
  const insert = el('button', {
    type: 'button', id: 'insert-digest', class: 'btn small',
    on: {
      click: () => {
        if (!picker.value) return;
        const { selectionStart: s, selectionEnd: e } = text;
        text.setRangeText(picker.value, s ?? text.value.length, e ?? text.value.length, 'end');
        text.focus();
      },
    },
  }, 'Insert digest at cursor');
  const savepoint = el('input', { id: 'savepoint', type: 'text', list: 'savepoint-options', spellcheck: 'false', placeholder: '<job id>/savepoint-<n> (optional)', value: params.get('savepoint') ?? '' });
  const savepoints = el('datalist', { id: 'savepoint-options' });
  const allow = el('input', { type: 'checkbox', id: 'allow-non-restored' });
  const status = el('span', { class: 'action-status', id: 'submit-status' });
  const submit = el('button', { type: 'button', id: 'submit-job', class: 'btn primary' }, 'Submit job');
  submit.addEventListener('click', async () => {
    clearError();
    const src = text.value;
    const trimmed = src.trim();
    const sp = savepoint.value.trim();
    if (!trimmed) {
      showError(localError('the spec is empty: paste a TOML or JSON job spec'));
      return;
    }
    submit.disabled = true;
    status.textContent = 'submitting…';
    try {
      let job;
      if (trimmed.startsWith('{')) {
        let parsed;
        try {
          parsed = JSON.parse(trimmed);
        } catch (e) {
          throw localError(`the spec is not valid JSON: ${e.message}`, 'invalid_json');
        }
        // A whole submit body ({"spec": {…}, …}) is sent as it is; a bare spec is wrapped.
        const body = parsed && typeof parsed.spec === 'object' && !('sources' in parsed) ? { ...parsed } : { spec: parsed };
        if (sp) body.savepoint = sp;
        if (allow.checked || body.allow_non_restored_state === undefined) body.allow_non_restored_state = allow.checked;
        job = await api('POST', '/v1/jobs', body);
      } else {
        const q = new URLSearchParams();
        if (sp) q.set('savepoint', sp);
        if (allow.checked) q.set('allow_non_restored_state', 'true');
        const qs = q.toString();
        job = await api('POST', `/v1/jobs${qs ? `?${qs}` : ''}`, src, { 'Content-Type': 'application/toml' });
      }
      if (owner !== view) return;
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (e) {
      if (owner !== view) return;
      status.textContent = '';
      showError(e);
    } finally {
      submit.disabled = false;
    }
  });

  main.append(section('Submit a job',
    el('div', { class: 'form-row' }, el('label', { for: 'spec-file' }, 'Load a spec file '), file),
    text,
    el('div', { class: 'form-row' }, el('label', { for: 'component-picker' }, 'Uploaded components '), picker, insert,
      el('a', { href: '#/components', class: 'small' }, 'upload…')),
    el('div', { class: 'form-row' }, el('label', { for: 'savepoint' }, 'Restore from savepoint '), savepoint, savepoints),
    el('div', { class: 'form-row' }, allow, el('label', { for: 'allow-non-restored' }, ' allow non-restored state (savepoint state of operators the new job does not have is dropped)')),
    el('div', { class: 'form-row' }, submit, status),
    el('p', { class: 'muted small' }, 'Text starting with { is sent as JSON ({"spec": …}); anything else as TOML.')));

  api('GET', '/v1/components').then((r) => {
    if (owner !== view) return;
    const list = r.components ?? [];
    fill(picker, ...(list.length
      ? list.map((c) => el('option', { value: c.digest }, `${shortDigest(c.digest)} — ${c.world ?? '?'} (${fmtBytes(c.size)})`))
      : [el('option', { value: '' }, 'no component uploaded')]));
  }).catch((e) => showError(e));

  // The savepoints of the tenant's recent jobs, offered in the savepoint field.
  api('GET', '/v1/jobs').then(async (r) => {
    const jobs = [...(r.jobs ?? [])].sort((a, b) => (b.submitted_ms ?? 0) - (a.submitted_ms ?? 0)).slice(0, 20);
    const lists = await Promise.all(jobs.map((j) => api('GET', `/v1/jobs/${enc(j.id)}/savepoints`).then(
      (x) => (x.savepoints ?? []).map((s) => ({ ...s, job: j })),
      (e) => {
        if (e instanceof ApiError && e.status === 404) return [];
        throw e;
      })));
    if (owner !== view) return;
    fill(savepoints, ...lists.flat().map((s) => el('option', { value: s.savepoint }, `${s.job.name}: ${fmtTime(s.completed_ms)}`)));
  }).catch((e) => showError(e));

  const from = params.get('from');
  if (from) {
    api('GET', `/v1/jobs/${enc(from)}/spec`).then((r) => {
      if (owner !== view || text.value) return;
      text.value = JSON.stringify(r.spec ?? r, null, 2);
    }).catch((e) => showError(e));
  }
}

// ---------------------------------------------------------------------------
// Components

function componentsPage(main) {
  const owner = view;
  const headers = ['Digest', 'World', 'Size', 'Imports', 'Uploaded', ...(isAdmin() ? ['Tenant'] : ['', ''])];
  const t = table('components-table', headers);
  const load = async () => {
    const r = await api('GET', '/v1/components');
    if (owner !== view) return;
    renderComponents(t, r.components ?? [], headers.length, load);
  };
  if (!isAdmin()) {
    const file = el('input', { type: 'file', id: 'component-file', accept: '.wasm,application/wasm' });
    const result = el('div', { id: 'upload-result', class: 'action-status', 'aria-live': 'polite' });
    const upload = el('button', { type: 'button', id: 'upload-component', class: 'btn primary' }, 'Upload');
    upload.addEventListener('click', async () => {
      const f = file.files?.[0];
      if (!f) {
        showError(localError('choose a .wasm component file first'));
        return;
      }
      clearError();
      upload.disabled = true;
      fill(result, el('span', { class: 'spinner' }), `uploading and validating ${f.name}…`);
      try {
        const r = await api('POST', '/v1/components', f, { 'Content-Type': 'application/wasm' });
        if (owner !== view) return;
        fill(result, 'stored ', el('code', { 'data-testid': 'upload-digest' }, r.digest),
          ` · world ${r.world ?? '?'} · ${fmtBytes(r.size)}`);
        await load();
      } catch (e) {
        if (owner !== view) return;
        result.replaceChildren();
        showError(e);
      } finally {
        upload.disabled = false;
      }
    });
    main.append(section('Upload a component',
      el('p', { class: 'muted' }, 'A WebAssembly component built for a Sluice world. Its digest goes in a job spec: component = "sha256:…".'),
      el('div', { class: 'form-row' }, file, upload), result));
  }
  main.append(section('Components', el('div', { class: 'scroll' }, t.table)));
  load().catch((e) => showError(e));
}

function renderComponents({ table: t, body }, list, columns, reload) {
  t.setAttribute('data-loaded', 'true');
  if (!list.length) {
    emptyRow(body, columns, 'No components uploaded.');
    return;
  }
  fill(body, ...list.map((c) => el('tr', { 'data-digest': c.digest },
    el('td', { class: 'mono digest', title: c.digest }, c.digest),
    el('td', {}, c.world ?? ''),
    el('td', { class: 'num' }, fmtBytes(c.size)),
    el('td', { class: 'small' }, c.imports?.length
      ? el('details', {}, el('summary', {}, `${c.imports.length} imports`), el('div', { class: 'imports' }, c.imports.join('\n')))
      : 'none'),
    el('td', { class: 'mono' }, fmtTime(c.uploaded_ms)),
    isAdmin() ? el('td', { 'data-col': 'tenant' }, c.tenant ?? '') : [
      el('td', {}, el('button', {
        type: 'button', class: 'btn small', 'data-action': 'copy',
        on: { click: () => navigator.clipboard?.writeText(c.digest).catch(() => {}) },
      }, 'Copy digest')),
      el('td', {}, el('button', {
        type: 'button', class: 'btn small danger', 'data-action': 'delete',
        on: {
          click: async () => {
            if (!confirm(`Delete component ${c.digest}?`)) return;
            try {
              await api('DELETE', `/v1/components/${enc(c.digest)}`);
              await reload();
            } catch (e) {
              showError(e);
            }
          },
        },
      }, 'Delete')),
    ])));
}

// ---------------------------------------------------------------------------
// TaskManagers

function taskManagersPage(main) {
  const headers = ['ID', 'Data address', 'PID', 'Slots free / total', 'Tasks', 'Heartbeat', 'Memory (RSS)', 'Sent', 'Received', 'Registered'];
  const t = table('taskmanagers-table', headers);
  const note = el('div');
  main.append(section('TaskManagers', note, el('div', { class: 'scroll' }, t.table)));
  poll(POLL_OVERVIEW_MS, async () => {
    const r = await api('GET', '/v1/taskmanagers');
    const list = r.taskmanagers ?? [];
    t.table.setAttribute('data-loaded', 'true');
    if (!list.length) {
      fill(note, el('p', { 'data-testid': 'embedded' }, el('strong', {}, 'Embedded mini cluster'),
        ': this server (', el('code', {}, 'sluice serve'), ') runs every job in its own process; there are no TaskManagers.'));
      emptyRow(t.body, headers.length, 'No TaskManagers.');
      return;
    }
    note.replaceChildren();
    fill(t.body, ...list.map((m) => el('tr', { 'data-taskmanager': m.id },
      el('td', { class: 'mono' }, m.id),
      el('td', { class: 'mono' }, m.data_address ?? ''),
      el('td', { class: 'num' }, m.pid ?? ''),
      el('td', { class: 'num' }, `${fmtNum(m.slots_free)} / ${fmtNum(m.slots_total)}`),
      el('td', { title: (m.tasks ?? []).join('\n') }, `${fmtNum(m.tasks?.length ?? 0)}`,
        m.tasks?.length ? el('div', { class: 'small muted' }, m.tasks.slice(0, 6).join(', '), m.tasks.length > 6 ? ', …' : '') : null),
      el('td', { class: 'num' }, `${fmtDuration(m.last_heartbeat_ms_ago)} ago`),
      el('td', { class: 'num' }, fmtBytes(m.rss_bytes)),
      el('td', { class: 'num' }, fmtBytes(m.bytes_sent)),
      el('td', { class: 'num' }, fmtBytes(m.bytes_received)),
      el('td', { class: 'mono' }, fmtTime(m.registered_ms)))));
  });
}

// ---------------------------------------------------------------------------
// Start

function start() {
  $('#signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('#token').value.trim();
    if (!token) {
      showError(localError('enter a token'));
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(token)) {
      showError(localError('a token is printable ASCII without spaces'));
      return;
    }
    signIn(token);
  });
  $('#signout').addEventListener('click', () => {
    // Leave nothing of this user in the address bar either.
    history.replaceState(null, '', '#/overview');
    signOut();
  });
  window.addEventListener('hashchange', () => route());
  window.addEventListener('resize', () => view.onResize?.());
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showSignIn();
}

start();
