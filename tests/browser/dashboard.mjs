// Drives the web dashboard in headless Chromium against a running server.
//
// Run by the Rust integration test (which starts the server and uploads the
// components and the input for tenant acme) as `node tests/browser/dashboard.mjs`
// with: SLUICE_URL, TOKEN_A (tenant acme), TOKEN_B (tenant other), ADMIN_TOKEN,
// SPEC_FILE (a TOML word count with digests, a throttled file source, checkpoints
// on), COMPONENT_FILE (a .wasm to upload through the page), SCREENSHOT_DIR, CHROMIUM.
//
// Prints `RESULT {"job": …, "savepoint": …}` and exits 0, or prints what failed
// and exits 1. Every wait is bounded; the whole run ends within TOTAL_TIMEOUT_MS.
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error(`dashboard test FAILED: cannot load playwright-core (${e.message}); run \`npm ci\` in tests/browser`);
  process.exit(1);
}

const STEP_TIMEOUT_MS = 20_000;
const TOTAL_TIMEOUT_MS = 150_000;

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`environment variable ${name} is not set`);
  return v;
}

const BASE = env('SLUICE_URL').replace(/\/+$/, '');
const ORIGIN = new URL(BASE).origin;
const TOKEN_A = env('TOKEN_A');
const TOKEN_B = env('TOKEN_B');
const ADMIN_TOKEN = env('ADMIN_TOKEN');
const SPEC_FILE = env('SPEC_FILE');
const COMPONENT_FILE = env('COMPONENT_FILE');
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || path.join(process.cwd(), 'target', 'dashboard-screenshots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let step = 'start';
let browser = null;
let page = null;
const pageErrors = [];
const cspViolations = [];
const outsideRequests = [];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (msg) => console.log(`[dashboard] ${msg}`);
const attr = (v) => JSON.stringify(String(v)); // a quoted CSS attribute value

class Failure extends Error {}
function check(cond, message) {
  if (!cond) throw new Failure(message);
}

/** Polls `fn` until it returns something truthy; fails with `what` after `timeout` ms. */
async function waitUntil(what, fn, timeout = STEP_TIMEOUT_MS) {
  const end = Date.now() + timeout;
  let last = null;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) {
      const shown = await errorShown().catch(() => null);
      throw new Failure(`timed out after ${timeout} ms waiting for ${what}` +
        (last ? ` (last error: ${last.message})` : '') + (shown ? `; the page's error area says: ${shown}` : ''));
    }
    await sleep(200);
  }
}

/** The text of the first element matching `selector`, or null. */
const text = (selector) => page.evaluate((s) => document.querySelector(s)?.textContent ?? null, selector);
const count = (selector) => page.evaluate((s) => document.querySelectorAll(s).length, selector);
const visible = (selector) => page.evaluate((s) => {
  const e = document.querySelector(s);
  return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;
}, selector);
const errorShown = async () => ((await visible('#error')) ? (await text('#error'))?.trim() || null : null);
const hash = () => page.evaluate(() => location.hash);
const goHash = (h) => page.evaluate((x) => { location.hash = x; }, h);

/** An API call from Node (not the page), to know what the page should show. */
async function api(token, method, p, body, headers = {}) {
  const res = await fetch(BASE + p, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...headers },
    body,
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const raw = await res.text();
  let json = null;
  try {
    json = raw ? JSON.parse(raw) : null;
  } catch {
    json = null;
  }
  return { status: res.status, json, raw };
}

async function signIn(token, expectWho) {
  await page.fill('#token', token);
  await page.click('#signin');
  await waitUntil(`#whoami to show ${expectWho}`, async () => (await text('#whoami'))?.includes(expectWho));
  const storage = await page.evaluate(() => ({
    session: sessionStorage.length, local: localStorage.length, cookie: document.cookie,
    tokenInSession: Object.keys(sessionStorage).some((k) => sessionStorage.getItem(k)),
  }));
  check(storage.local === 0, `localStorage must stay empty, it has ${storage.local} items`);
  check(storage.cookie === '', `no cookie may be set, got ${JSON.stringify(storage.cookie)}`);
  check(storage.tokenInSession, 'the token should be kept in sessionStorage');
}

async function signOut() {
  await page.click('#signout');
  await waitUntil('the sign-in form after signing out', () => visible('#token'));
  const left = await page.evaluate(() => ({ session: sessionStorage.length, view: document.querySelector('#view').childElementCount, who: document.querySelector('#whoami').textContent }));
  check(left.session === 0, `sign out must clear sessionStorage, it still has ${left.session} items`);
  check(left.view === 0 && left.who === '', 'sign out must clear the previous user\'s page');
}

/** The TOML (or JSON) spec with `parallelism` misspelled in its first operator. */
function misspellParallelism(spec) {
  if (spec.trim().startsWith('{')) {
    const j = JSON.parse(spec);
    const op = j.operators?.[0];
    check(op, 'SPEC_FILE has no operator');
    op.paralelism = op.parallelism ?? 2;
    delete op.parallelism;
    return JSON.stringify(j, null, 2);
  }
  const lines = spec.split('\n');
  let inOperator = false;
  for (let i = 0; i < lines.length; i += 1) {
    const t = lines[i].trim();
    if (t.startsWith('[')) {
      inOperator = t === '[[operators]]';
    } else if (inOperator && /^parallelism\s*=/.test(t)) {
      lines[i] = lines[i].replace('parallelism', 'paralelism');
      return lines.join('\n');
    }
  }
  const first = lines.findIndex((l) => l.trim() === '[[operators]]');
  check(first >= 0, 'SPEC_FILE has no [[operators]]');
  lines.splice(first + 1, 0, 'paralelism = 2');
  return lines.join('\n');
}

async function screenshot(name) {
  await fs.mkdir(SCREENSHOT_DIR, { recursive: true });
  const file = path.join(SCREENSHOT_DIR, name);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

async function run() {
  const specText = await fs.readFile(SPEC_FILE, 'utf8');
  const componentBytes = await fs.readFile(COMPONENT_FILE);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: STEP_TIMEOUT_MS,
  });
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  // The page may load nothing from outside the server (no CDN).
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith('data:') || new URL(url).origin === ORIGIN) return route.continue();
    outsideRequests.push(url);
    return route.abort();
  });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  page.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  page.on('dialog', (d) => d.accept().catch(() => {}));
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content.Security.Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
  });

  step = '1. sign in as tenant acme';
  await page.goto(`${BASE}/`);
  await page.waitForSelector('#token', { state: 'visible' });
  await waitUntil('the page to load its libraries', () => page.evaluate(() => typeof dagre !== 'undefined' && typeof uPlot !== 'undefined'));
  await signIn(TOKEN_A, 'acme');
  check(await page.evaluate(() => document.querySelector('#whoami').dataset.tenant === 'acme'), '#whoami should carry data-tenant="acme"');
  log('signed in as acme');

  step = '2. upload a component';
  await page.click('#nav a[data-route=components]');
  await page.waitForSelector('#component-file', { state: 'attached' });
  await page.setInputFiles('#component-file', COMPONENT_FILE);
  await page.click('#upload-component');
  const digest = (await waitUntil('the uploaded digest', async () => {
    const shown = await errorShown();
    if (shown) throw new Failure(`upload failed: ${shown}`);
    return text('[data-testid=upload-digest]');
  }, 60_000)).trim();
  check(/^sha256:[0-9a-f]{64}$/.test(digest), `the digest shown after the upload looks wrong: ${digest}`);
  const fileHash = `sha256:${crypto.createHash('sha256').update(componentBytes).digest('hex')}`;
  if (digest !== fileHash) log(`note: the digest ${digest} is not the sha256 of the file (${fileHash})`);
  await waitUntil(`the components table to list ${digest}`, () => count(`[data-testid=components-table] tr[data-digest=${attr(digest)}]`));
  const listed = await api(TOKEN_A, 'GET', '/v1/components');
  check(listed.json?.components?.some((c) => c.digest === digest), `GET /v1/components does not list ${digest}`);
  log(`uploaded ${digest}`);

  step = '3. submit the job';
  await page.click('#nav a[data-route=submit]');
  await page.waitForSelector('#submit-spec');
  await page.fill('#submit-spec', specText);
  await page.click('#submit-job');
  const jobId = await waitUntil('the job page after submitting', async () => {
    const shown = await errorShown();
    if (shown) throw new Failure(`the submission failed: ${shown}`);
    const m = (await hash()).match(/^#\/jobs\/([^/?]+)/);
    return m ? decodeURIComponent(m[1]) : null;
  });
  log(`submitted job ${jobId}`);
  await waitUntil('the job state to become running', async () => (await text('[data-testid=job-state]')) === 'running', 30_000);
  const details = (await api(TOKEN_A, 'GET', `/v1/jobs/${encodeURIComponent(jobId)}`)).json;
  const graphNodes = details?.graph?.nodes ?? [];
  check(graphNodes.length > 0, `GET /v1/jobs/${jobId} has no graph nodes`);
  for (const n of graphNodes) await page.waitForSelector(`svg g.node[data-node=${attr(n.name)}]`);
  for (const name of ['tokenize', 'count', 'out']) {
    check(await count(`svg g.node[data-node=${attr(name)}]`) === 1, `the graph should draw the node ${name}`);
  }
  check(await count('svg g.node') === graphNodes.length, `the graph should draw ${graphNodes.length} nodes`);
  const readOut = () => page.evaluate(() => Object.fromEntries([...document.querySelectorAll('svg g.node')].map((g) => [
    g.dataset.node, Number((g.querySelector('[data-testid=records-out]')?.textContent ?? '').replace(/[^0-9]/g, '') || 0)])));
  const before = await readOut();
  await sleep(2500);
  const rose = await waitUntil('a node\'s records-out counter to rise', async () => {
    const now = await readOut();
    const up = Object.keys(now).filter((k) => now[k] > (before[k] ?? 0));
    return up.length ? { up, now } : null;
  }, 15_000);
  log(`records out rose on ${rose.up.join(', ')}: ${JSON.stringify(before)} → ${JSON.stringify(rose.now)}`);
  const clicked = graphNodes.find((n) => n.name === 'tokenize') ?? graphNodes[0];
  await page.click(`svg g.node[data-node=${attr(clicked.name)}]`);
  const rowsSel = `[data-testid=subtasks-table][data-node=${attr(clicked.name)}] tbody tr[data-subtask]`;
  await waitUntil(`the subtasks table of ${clicked.name} with ${clicked.parallelism} rows`, async () => (await count(rowsSel)) === clicked.parallelism);
  await waitUntil('the throughput chart', () => count('#throughput .uplot'));
  await sleep(1500); // a few more points on the chart
  await screenshot('job.png');

  step = '4. take a savepoint';
  await waitUntil('a completed checkpoint (a savepoint needs one)', async () => {
    const d = (await api(TOKEN_A, 'GET', `/v1/jobs/${encodeURIComponent(jobId)}`)).json;
    return (d?.checkpoints?.completed ?? 0) >= 1;
  }, 30_000);
  await page.click('#savepoint-btn');
  const during = (await text('#action-status')) ?? '';
  check(during.includes('taking savepoint') || (await count('[data-testid=savepoint-result]')) > 0,
    `the page should say "taking savepoint…" while the savepoint runs, it says ${JSON.stringify(during)}`);
  const savepoint = (await waitUntil('the savepoint id on the job page', async () => {
    const shown = await errorShown();
    if (shown) throw new Failure(`the savepoint failed: ${shown}`);
    return text('[data-testid=savepoint-result]');
  }, 60_000)).trim();
  check(savepoint.startsWith(`${jobId}/savepoint-`), `unexpected savepoint id ${savepoint}`);
  await page.click('[data-tab=checkpoints]');
  await waitUntil(`the savepoints table to list ${savepoint}`, () => count(`[data-testid=savepoints-table] tr[data-savepoint=${attr(savepoint)}]`));
  log(`savepoint ${savepoint}`);

  step = '5. cancel the job';
  await page.click('#cancel-btn');
  await waitUntil('the job state to become canceled', async () => (await text('[data-testid=job-state]')) === 'canceled', 30_000);
  log('canceled');

  step = '6. submit a bad spec';
  const bad = misspellParallelism(specText);
  await page.click('#nav a[data-route=submit]');
  await page.waitForSelector('#submit-spec');
  await page.fill('#submit-spec', bad);
  await page.click('#submit-job');
  const shownMessage = await waitUntil('the error area to show the API\'s message', async () => ((await visible('#error')) ? text('#error [data-testid=error-message]') : null));
  const isJson = bad.trim().startsWith('{');
  const direct = await api(TOKEN_A, 'POST', '/v1/jobs', isJson ? JSON.stringify({ spec: JSON.parse(bad) }) : bad,
    { 'Content-Type': isJson ? 'application/json' : 'application/toml' });
  check(direct.status >= 400 && direct.status < 500, `POST /v1/jobs with the bad spec answered ${direct.status}: ${direct.raw}`);
  const apiMessage = direct.json?.error?.message;
  check(typeof apiMessage === 'string' && apiMessage, `the API's answer has no error.message: ${direct.raw}`);
  check(shownMessage === apiMessage, `the page shows ${JSON.stringify(shownMessage)}, the API says ${JSON.stringify(apiMessage)}`);
  check((await text('#error')).includes(direct.json.error.code), `the error area should show the code ${direct.json.error.code}`);
  check((await hash()).startsWith('#/submit'), 'a refused spec must leave the page on the submit form');
  log(`bad spec refused: ${apiMessage}`);

  step = '7. overview';
  await page.click('#nav a[data-route=overview]');
  const rowSel = `[data-testid=jobs-table] tr[data-job-id=${attr(jobId)}]`;
  await page.waitForSelector(rowSel);
  check((await text(`${rowSel} [data-col=state]`)) === 'canceled', 'the overview should list the job as canceled');
  await screenshot('overview.png');

  step = '8. tenant other sees none of acme\'s jobs';
  await signOut();
  await signIn(TOKEN_B, 'other');
  await page.waitForSelector('[data-testid=jobs-table][data-loaded=true]');
  const acmeJobs = ((await api(TOKEN_A, 'GET', '/v1/jobs')).json?.jobs ?? []).map((j) => j.id);
  check(acmeJobs.includes(jobId), `GET /v1/jobs as acme does not list ${jobId}`);
  const shownIds = await page.evaluate(() => [...document.querySelectorAll('[data-testid=jobs-table] tr[data-job-id]')].map((r) => r.dataset.jobId));
  const leaked = shownIds.filter((id) => acmeJobs.includes(id));
  check(leaked.length === 0, `tenant other's overview lists acme's jobs: ${leaked.join(', ')}`);
  const otherView = (await api(TOKEN_B, 'GET', `/v1/jobs/${encodeURIComponent(jobId)}`));
  check(otherView.status === 404, `GET /v1/jobs/${jobId} as other answered ${otherView.status}, expected 404`);
  await goHash(`#/jobs/${encodeURIComponent(jobId)}`);
  const notFound = await waitUntil('the not-found error on acme\'s job page', async () => ((await visible('#error')) ? text('#error [data-testid=error-message]') : null));
  check(notFound === otherView.json?.error?.message, `the page shows ${JSON.stringify(notFound)}, the API says ${JSON.stringify(otherView.json?.error?.message)}`);
  check(await count('[data-testid=job-state]') === 0, 'no job state may be shown for another tenant\'s job');
  check(await count('svg g.node') === 0, 'no job graph may be shown for another tenant\'s job');
  const bodyText = await page.evaluate(() => document.body.innerText);
  for (const n of graphNodes) check(!bodyText.includes(n.name) || n.name.length < 4, `the page shows ${n.name} of acme's job`);
  log('tenant other sees nothing of acme');

  step = '9. the admin sees every job, read-only';
  await signOut();
  await signIn(ADMIN_TOKEN, 'admin');
  check(await page.evaluate(() => document.querySelector('#whoami').dataset.role === 'admin'), '#whoami should carry data-role="admin"');
  await page.waitForSelector(rowSel);
  check((await text(`${rowSel} [data-col=tenant]`)) === 'acme', 'the admin\'s overview should show the job\'s tenant acme');
  check(!(await visible('#nav a[data-route=submit]')), 'the admin should not be offered the submit page');
  check(await count('button[data-action=delete]') === 0, 'the admin should not be offered delete buttons');
  await goHash(`#/jobs/${encodeURIComponent(jobId)}`);
  await waitUntil('the job page for the admin', async () => (await text('[data-testid=job-state]')) === 'canceled');
  await page.waitForSelector('svg g.node');
  for (const sel of ['#cancel-btn', '#savepoint-btn', '#stop-btn', '#delete-btn']) check(await count(sel) === 0, `the admin should not see ${sel}`);
  await goHash('#/components');
  await page.waitForSelector('[data-testid=components-table][data-loaded=true]');
  check(await count('#upload-component') === 0, 'the admin should not be offered the upload');
  check(await count(`[data-testid=components-table] tr[data-digest=${attr(digest)}] [data-col=tenant]`) >= 1, 'the admin\'s components list should show tenants');
  log('admin view is read-only');

  step = 'final checks';
  check(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join(' | ')}`);
  check(cspViolations.length === 0, `Content-Security-Policy violations: ${cspViolations.join(' | ')}`);
  check(outsideRequests.length === 0, `the page tried to load from outside the server: ${outsideRequests.join(', ')}`);
  return { job: jobId, savepoint };
}

async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  await Promise.race([b.close().catch(() => {}), sleep(5000)]);
}

const watchdog = setTimeout(async () => {
  console.error(`dashboard test FAILED: did not finish within ${TOTAL_TIMEOUT_MS} ms (at step "${step}")`);
  await closeBrowser();
  process.exit(1);
}, TOTAL_TIMEOUT_MS);

try {
  const result = await run();
  clearTimeout(watchdog);
  await closeBrowser();
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(0);
} catch (e) {
  clearTimeout(watchdog);
  console.error(`dashboard test FAILED at step "${step}": ${e instanceof Failure ? e.message : e.stack ?? e}`);
  if (page) {
    const url = await page.evaluate(() => location.href).catch(() => '?');
    const shown = await errorShown().catch(() => null);
    console.error(`  page: ${url}${shown ? `\n  error area: ${shown}` : ''}`);
    if (pageErrors.length) console.error(`  uncaught page errors: ${pageErrors.join(' | ')}`);
    await screenshot('failure.png').catch(() => {});
  }
  await closeBrowser();
  process.exit(1);
}
