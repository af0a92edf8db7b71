// Drives the built page (dist/, served on 127.0.0.1) in headless Chromium with WebGPU on SwiftShader, as a user
// would: load the default model, chat, monitor, steer, screen, export/import vectors, a bad file, the model cache.
// Replies are compared with the native CPU reference computed by run.sh. Prints one PASS/FAIL line per test and a
// total; saves a screenshot of each step under the artifacts directory.
//
//   node app.mjs <base url> <fixtures dir> <artifacts dir>
//
// fixtures: messages.json, impolite.gguf (a vector with a recommended layer), page-extract.json and page-eval.json
// (the native extract --json / eval --json at the settings the extraction test types in), expected-chat.json (generate
// --monitor), expected-steer.json (generate --steer V:L:ALPHA --monitor), steer.json ({layer, alpha}),
// screen.jsonl, expected-screen.json (screen --json) and screen-out.jsonl, eval-report.json (eval --json),
// not-a-model.txt, broken.gguf.
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, fixtures, artifacts] = process.argv.slice(2);
if (!base || !fixtures || !artifacts) {
  console.error('usage: node app.mjs <base url> <fixtures dir> <artifacts dir>');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const fixture = (name) => join(fixtures, name);
const json = (name) => JSON.parse(readFileSync(fixture(name), 'utf8'));

// SwiftShader runs every kernel on the CPU: a reply of a few tokens takes tens of seconds on 2 busy cores.
const LOAD_TIMEOUT = Number(process.env.LOAD_TIMEOUT_MS ?? 6 * 60_000);
const REPLY_TIMEOUT = Number(process.env.REPLY_TIMEOUT_MS ?? 6 * 60_000);
const MAX_TOKENS = Number(process.env.MAX_TOKENS ?? 6);
// GPU (f32 on SwiftShader) vs CPU reference projections: a raw score of about 10-30 agrees to ~1e-3 relative.
const RAW_TOL_REL = 0.01;
const RAW_TOL_ABS = 0.05;
const Z_TOL = 0.05;

const messages = json('messages.json');
const userText = messages.find((m) => m.role === 'user').content;
const expectedChat = json('expected-chat.json');
const expectedSteer = json('expected-steer.json');
const steer = json('steer.json');
const expectedScreen = json('expected-screen.json');
const screenOut = readFileSync(fixture('screen-out.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

const results = [];
const figures = {};
let shot = 0;
let page;

async function screenshot(name) {
  const path = join(artifacts, `${String(++shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path, fullPage: true }).catch((e) => console.log(`  screenshot ${name} failed: ${e.message}`));
  return path;
}

/** Runs one test; a thrown error fails it. `needs` names earlier tests it depends on. */
async function test(name, fn, needs = []) {
  const missing = needs.filter((n) => !results.find((r) => r.name === n && r.ok));
  const started = Date.now();
  if (missing.length) {
    results.push({ name, ok: false });
    console.log(`FAIL ${name}: skipped, needs ${missing.join(', ')}`);
    return;
  }
  console.log(`\n-- ${name}`);
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`PASS ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.push({ name, ok: false });
    await screenshot(`failure-${name.toLowerCase().replace(/[^a-z0-9]+/g, '-').slice(0, 40)}`);
    console.log(`FAIL ${name} (${((Date.now() - started) / 1000).toFixed(1)} s): ${e.stack ?? e}`);
  }
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const close = (a, b) => Math.abs(a - b) <= RAW_TOL_ABS + RAW_TOL_REL * Math.abs(b);

async function tab(name) {
  await page.click(`#tab-${name}`);
}

async function modelStatus() {
  return page.locator('[data-testid="model-status"]').evaluate((el) => ({ text: el.textContent, state: el.dataset.state }));
}

async function waitStatus(states, timeout) {
  await page.waitForFunction(
    (s) => s.includes(document.querySelector('[data-testid="model-status"]').dataset.state),
    states,
    { timeout, polling: 500 },
  );
  return modelStatus();
}

async function setSampling() {
  await tab('chat');
  await page.locator('details:has(#max-tokens) > summary').click();
  await page.fill('#max-tokens', String(MAX_TOKENS));
  await page.fill('#temperature', '0');
  await page.fill('#repetition-penalty', '1');
  await page.locator('details:has(#max-tokens) > summary').click();
}

/** Sends `text` in the chat and waits for the reply; returns its text, ids, per-token scores and timing. */
async function sendChat(text) {
  await tab('chat');
  await page.fill('[data-testid="chat-input"]', text);
  await page.click('[data-testid="chat-send"]');
  const reply = page.locator('[data-testid="chat-reply"]').last();
  // The page must stay responsive while the worker computes: a round trip to the main thread takes little time.
  let worstMs = 0;
  const deadline = Date.now() + REPLY_TIMEOUT;
  while (!(await reply.getAttribute('data-done'))) {
    check(Date.now() < deadline, `no reply after ${REPLY_TIMEOUT} ms`);
    const t = Date.now();
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
    worstMs = Math.max(worstMs, Date.now() - t);
    await page.waitForTimeout(500);
  }
  const error = await reply.getAttribute('data-error');
  check(!error, `the reply failed: ${error}`);
  const out = await reply.evaluate((el) => ({
    text: el.dataset.text,
    ids: JSON.parse(el.dataset.ids),
    stop: el.dataset.stop,
    steered: el.dataset.steered === 'true',
    tokens: [...el.querySelectorAll('.tok')].map((s) => ({ text: s.textContent, scores: s.dataset.scores ? JSON.parse(s.dataset.scores) : [] })),
  }));
  const speed = await page.locator('[data-testid="chat-speed"]').evaluate((el) => ({ text: el.textContent, ...el.dataset }));
  console.log(`  reply ${JSON.stringify(out.text)} ids ${JSON.stringify(out.ids)} (${out.stop}); ${speed.text}`);
  console.log(`  slowest animation frame while generating: ${worstMs} ms`);
  return { ...out, speed, worstFrameMs: worstMs };
}

function compareScores(tokens, expected, what) {
  const native = expected.scores[0].tokens;
  check(tokens.length === native.length, `${what}: ${tokens.length} scored tokens in the page, ${native.length} natively`);
  let worst = 0;
  tokens.forEach((t, i) => {
    const s = t.scores[0];
    check(s, `${what}: token ${i} has no score`);
    check(close(s.raw, native[i].raw), `${what}: token ${i} raw ${s.raw} vs native ${native[i].raw}`);
    check(Math.abs(s.z - native[i].z) <= Z_TOL, `${what}: token ${i} z ${s.z} vs native ${native[i].z}`);
    worst = Math.max(worst, Math.abs(s.raw - native[i].raw));
  });
  console.log(`  ${what}: ${tokens.length} token scores match the native monitor (largest raw difference ${worst.toExponential(2)})`);
}

// ---------------------------------------------------------------------------------------------------------------

const profile = mkdtempSync(join(tmpdir(), 'personascope-chromium-'));
const hosts = new Set();
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 800 },
    acceptDownloads: true,
    args: [
      '--enable-unsafe-webgpu',
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
    ],
  });
  context.on('request', (r) => hosts.add(new URL(r.url()).origin));
  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`  [console.${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`  [pageerror] ${e.message}`));
  page.on('crash', () => console.log('  [page crashed]'));

  await test('page starts with WebGPU', async () => {
    await page.goto(`${base}/index.html`);
    await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
    check((await page.getAttribute('body', 'data-webgpu')) === 'true', 'the page reports no WebGPU');
    check(await page.locator('#no-webgpu').isHidden(), 'the "WebGPU is missing" explanation is shown');
    const csp = await page.getAttribute('meta[http-equiv="Content-Security-Policy"]', 'content');
    check(/default-src 'self'/.test(csp) && /script-src 'self' 'wasm-unsafe-eval'/.test(csp), `unexpected CSP ${csp}`);
    // The server's header adds what a <meta> policy cannot say: no framing. And no directory is listed.
    const header = (await page.request.get(`${base}/index.html`)).headers()['content-security-policy'] ?? '';
    check(header.includes("frame-ancestors 'none'"), `the policy header does not forbid framing: ${header}`);
    const listing = await page.request.get(`${base}/fixtures/`);
    check(listing.status() === 404, `a directory listing was served (status ${listing.status()})`);
    // Keyboard: Tab reaches the tabs; arrow keys move between them.
    await page.focus('#tab-model');
    await page.keyboard.press('ArrowRight');
    check((await page.getAttribute('#tab-chat', 'aria-selected')) === 'true', 'ArrowRight does not select the next tab');
    await page.keyboard.press('Home');
    await screenshot('start');
  });

  await test('load the default model', async () => {
    await tab('model');
    await page.check('input[name="source"][value="default"]');
    const started = Date.now();
    await page.click('[data-testid="model-load"]');
    // One screenshot while the model is on its way to the GPU (progress bars).
    await page.waitForFunction(() => !document.querySelector('#progress-upload').hasAttribute('value') || document.querySelector('[data-testid="model-status"]').dataset.state !== 'busy', null, { timeout: LOAD_TIMEOUT, polling: 100 });
    await screenshot('model-loading');
    const s = await waitStatus(['ready', 'error'], LOAD_TIMEOUT);
    check(s.state === 'ready', `status: ${s.text}`);
    check(/downloaded and cached/.test(s.text), `the first load should download and cache the model: ${s.text}`);
    figures.loadSeconds = (Date.now() - started) / 1000;
    const info = await page.evaluate(() => window.personascope.deviceInfo());
    figures.adapter = info.adapter;
    console.log(`  ${s.text}`);
    console.log(`  adapter: ${info.adapter}; ${info.layers} layers; GPU memory ${(info.gpu_bytes / 1e6).toFixed(1)} MB`);
    console.log(`  ${await page.locator('#device-info').innerText()}`.replace(/\n/g, ' | '));
    await screenshot('model-loaded');
  });

  await test('import a trait vector', async () => {
    await tab('vectors');
    await page.setInputFiles('[data-testid="vector-import"]', fixture('impolite.gguf'));
    await page.waitForFunction(() => /Imported|Importing .*:/.test(document.querySelector('[data-testid="vector-status"]').textContent), null, { timeout: 30_000 });
    const status = await page.textContent('[data-testid="vector-status"]');
    check(/^Imported/.test(status), status);
    check((await page.locator('[data-testid="vector-table"] tbody tr[data-vector]').count()) === 1, 'one vector row expected');
    const monitored = await page.locator('[data-testid="vector-table"] tbody tr[data-vector="0"] input[type="checkbox"]').isChecked();
    check(monitored, 'a vector with a recommended layer should be monitored at once');
    check((await page.locator('[data-testid="trait-score"]').count()) === 1, 'one trait-score expected');
    await screenshot('vectors');
  }, ['load the default model']);

  await test('API: bad calls are rejected with clear messages, nothing panics', async () => {
    const outcomes = await page.evaluate(async () => {
      const ps = window.personascope;
      const user = [{ role: 'user', content: 'Hi' }];
      const cases = {
        'no messages': () => ps.chat([], { max_tokens: 1 }),
        'a message without a role': () => ps.chat([{ content: 'x' }], { max_tokens: 1 }),
        'an unknown option': () => ps.chat(user, { max_tokens: 1, temprature: 0 }),
        'a negative temperature': () => ps.chat(user, { max_tokens: 1, temperature: -1 }),
        'steering an unknown vector': () => ps.setSteering([{ vector: 99, layer: 1, alpha: 1 }]),
        'steering a layer out of range': () => ps.setSteering([{ vector: 0, layer: 999, alpha: 1 }]),
        'an infinite alpha': () => ps.setSteering([{ vector: 0, layer: 20, alpha: Infinity }]),
        'monitoring an unknown vector': () => ps.setMonitor([{ vector: 7 }]),
        'importing junk as a vector': () => ps.importVector(new Uint8Array([1, 2, 3])),
        'exporting an unknown vector': () => ps.exportVector(42),
        'exporting samples before screening': () => ps.exportSamples([1]),
        'screening with an unknown vector': () => ps.screen(5, '{}'),
        'an unknown built-in trait': () => ps.extract('grumpy', { questions: 1 }),
        'a model URL that is not http(s)': () => ps.loadModel('ftp://example.org/m.gguf'),
      };
      const out = {};
      for (const [name, f] of Object.entries(cases)) {
        try {
          await f();
          out[name] = { ok: true };
        } catch (e) {
          out[name] = { ok: false, message: e.message, code: e.code, isError: e instanceof Error };
        }
      }
      out.stillWorks = (await ps.deviceInfo())?.layers ?? null;
      return out;
    });
    const { stillWorks, ...cases } = outcomes;
    // Each failure's stable code (ErrorCode in personascope.d.ts), which programs branch on.
    const codes = {
      'no messages': 'invalid_input',
      'a message without a role': 'invalid_input',
      'an unknown option': 'invalid_input',
      'a negative temperature': 'invalid_input',
      'steering an unknown vector': 'unknown_vector',
      'steering a layer out of range': 'invalid_input',
      'an infinite alpha': 'invalid_input',
      'monitoring an unknown vector': 'unknown_vector',
      'importing junk as a vector': 'invalid_vector',
      'exporting an unknown vector': 'unknown_vector',
      'exporting samples before screening': 'invalid_input',
      'screening with an unknown vector': 'unknown_vector',
      'an unknown built-in trait': 'invalid_trait',
      'a model URL that is not http(s)': 'invalid_input',
    };
    const wrong = [];
    for (const [name, r] of Object.entries(cases)) {
      console.log(`  ${name}: ${r.ok ? 'ACCEPTED' : `[${r.code}] ${r.message}`}`);
      if (r.ok || !r.isError || r.message.length < 10 || /unreachable|RuntimeError|panicked/.test(r.message)) wrong.push(name);
      else if (r.code !== codes[name]) wrong.push(`${name} (code ${r.code}, expected ${codes[name]})`);
    }
    check(wrong.length === 0, `not rejected clearly: ${wrong.join(', ')}`);
    check(stillWorks > 0, 'the engine stopped answering after the bad calls');
  }, ['import a trait vector']);

  await test('chat: streamed greedy reply equals the native reference, scores equal the native monitor', async () => {
    await setSampling();
    const r = await sendChat(userText);
    figures.chat = r.speed;
    check(JSON.stringify(r.ids) === JSON.stringify(expectedChat.ids), `ids ${JSON.stringify(r.ids)} vs native ${JSON.stringify(expectedChat.ids)} (${JSON.stringify(expectedChat.text)})`);
    check(r.text === expectedChat.text, `text ${JSON.stringify(r.text)} vs native ${JSON.stringify(expectedChat.text)}`);
    check(r.tokens.map((t) => t.text).join('') === r.text, 'the streamed tokens do not add up to the reply');
    check(r.worstFrameMs < 2000, `the page froze for ${r.worstFrameMs} ms while generating`);
    compareScores(r.tokens, expectedChat, 'unsteered');
    // The live panel shows the mean over the reply when it is done.
    const shown = await page.locator('[data-testid="trait-score"]').first().evaluate((el) => ({ z: Number(el.dataset.z), text: el.textContent }));
    const nativeMean = expectedChat.scores[0].tokens.reduce((a, t) => a + t.z, 0) / expectedChat.scores[0].tokens.length;
    check(Math.abs(shown.z - nativeMean) <= Z_TOL, `trait-score z ${shown.z} vs native mean ${nativeMean}`);
    console.log(`  trait-score shows "${shown.text}" (native mean z ${nativeMean.toFixed(3)})`);
    const prompt = await page.locator('[data-testid="prompt-score"]').first().textContent();
    const nativePromptZ = expectedChat.scores[0].prompt_last.z;
    check(Math.abs(Number(prompt.match(/z ([-+0-9.]+)/)[1]) - nativePromptZ) <= 0.01, `prompt score "${prompt}" vs native z ${nativePromptZ}`);
    // Hovering a token shows its numbers.
    await page.locator('[data-testid="chat-reply"] .tok').nth(3).hover();
    const tip = await page.locator('#token-tip').innerText();
    check(/impolite \(layer \d+\): z [-+]\d/.test(tip), `hover tooltip: ${tip}`);
    await screenshot('chat-monitor');
  }, ['import a trait vector']);

  await test('a file that is not a GGUF gives a clear error and the page keeps working', async () => {
    await tab('model');
    await page.setInputFiles('#model-file', fixture('not-a-model.txt'));
    await page.click('[data-testid="model-load"]');
    const s = await waitStatus(['error', 'ready'], 60_000);
    check(s.state === 'error', `expected an error, got: ${s.text}`);
    check(/not a GGUF model file/.test(s.text), `unclear error: ${s.text}`);
    check(/previous model .* is still loaded/.test(s.text), `the status should say the model is still loaded: ${s.text}`);
    console.log(`  ${s.text}`);
    await screenshot('not-a-gguf');
    // Still working: the engine answers and the vector is still there.
    const info = await page.evaluate(() => window.personascope.deviceInfo());
    check(info && info.layers > 0, 'the engine lost its model');
    const vectors = await page.evaluate(() => window.personascope.vectors());
    check(vectors.length === 1, 'the engine lost its vector');
    // A truncated GGUF reaches the engine's parser: its error must be a rejection, not a crash.
    await page.setInputFiles('#model-file', fixture('broken.gguf'));
    await page.click('[data-testid="model-load"]');
    const s2 = await waitStatus(['error', 'ready'], 60_000);
    check(s2.state === 'error' && /loading the model/.test(s2.text), `broken GGUF: ${s2.text}`);
    console.log(`  ${s2.text}`);
    await page.check('input[name="source"][value="default"]');
  }, ['chat: streamed greedy reply equals the native reference, scores equal the native monitor']);

  await test('steering: moving a slider changes the reply (steered vs unsteered)', async () => {
    await tab('steer');
    const slider = page.locator(`[data-testid="steer-slider"][data-vector="0"]`);
    // Keyboard only: each ArrowRight adds one step of 0.5.
    await slider.focus();
    for (let i = 0; i < steer.alpha / 0.5; i++) await page.keyboard.press('ArrowRight');
    check(Number(await slider.inputValue()) === steer.alpha, `slider at ${await slider.inputValue()}`);
    const layer = await page.locator('#steer-list select').first().inputValue();
    check(Number(layer) === steer.layer, `the steering layer is ${layer}, the reference used ${steer.layer}`);
    await page.waitForFunction(() => /Next reply steered/.test(document.querySelector('[data-testid="steer-summary"]').textContent), null, { timeout: 30_000 });
    await page.fill('#compare-input', userText);
    await page.click('[data-testid="compare-run"]');
    await page.waitForSelector('[data-testid="compare-steered"][data-done="true"]', { timeout: 2 * REPLY_TIMEOUT });
    const plain = await page.getAttribute('[data-testid="compare-plain"]', 'data-text');
    const steered = await page.getAttribute('[data-testid="compare-steered"]', 'data-text');
    console.log(`  unsteered ${JSON.stringify(plain)}; steered (alpha ${steer.alpha}, layer ${steer.layer}) ${JSON.stringify(steered)}`);
    check(plain === expectedChat.text, `unsteered ${JSON.stringify(plain)} vs native ${JSON.stringify(expectedChat.text)}`);
    check(steered === expectedSteer.text, `steered ${JSON.stringify(steered)} vs native steered ${JSON.stringify(expectedSteer.text)}`);
    check(steered !== plain, 'steering did not change the reply');
    const tokens = await page.locator('[data-testid="compare-steered"] .tok').evaluateAll((els) => els.map((s) => ({ text: s.textContent, scores: JSON.parse(s.dataset.scores ?? '[]') })));
    compareScores(tokens, expectedSteer, 'steered');
    await screenshot('steer');
    // Back to neutral for the tests that follow.
    await page.click('#steer-reset');
  }, ['chat: streamed greedy reply equals the native reference, scores equal the native monitor']);

  await test('export a vector and import it back', async () => {
    await tab('vectors');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('tr[data-vector="0"] [data-testid="vector-export"]')]);
    const file = join(artifacts, 'exported-impolite.gguf');
    await download.saveAs(file);
    const bytes = readFileSync(file);
    check(bytes.subarray(0, 4).toString('latin1') === 'GGUF', 'the export is not a GGUF file');
    await page.setInputFiles('[data-testid="vector-import"]', file);
    await page.waitForSelector('tr[data-vector="1"]', { timeout: 30_000 });
    const [v0, v1] = await page.evaluate(() => window.personascope.vectors());
    for (const k of ['trait', 'mode', 'layer', 'alpha', 'screen_layer', 'calibrated', 'layers']) {
      check(JSON.stringify(v0[k]) === JSON.stringify(v1[k]), `${k} differs after the round trip: ${v0[k]} vs ${v1[k]}`);
    }
    check(v0.norms.every((n, i) => n === v1.norms[i]), 'the directions differ after the round trip');
    const again = await page.evaluate(async () => Array.from(await window.personascope.exportVector(1)));
    check(Buffer.from(again).equals(bytes), 'exporting the imported vector does not give the same bytes');
    console.log(`  ${bytes.length} bytes, identical after export -> import -> export`);
    await screenshot('vectors-roundtrip');
    // Keep one vector so the next tests see the same state.
    await page.locator('tr[data-vector="1"] button', { hasText: 'Remove' }).click();
    await page.waitForSelector('tr[data-vector="1"]', { state: 'detached' });
  }, ['import a trait vector']);

  await test('screen a JSONL file with a malformed line', async () => {
    await tab('screen');
    await page.selectOption('#screen-vector', '0');
    await page.setInputFiles('[data-testid="screen-file"]', fixture('screen.jsonl'));
    await page.waitForSelector('[data-testid="screen-table"] tbody tr', { timeout: REPLY_TIMEOUT });
    const errors = await page.locator('[data-testid="screen-errors"] li').evaluateAll((els) => els.map((e) => ({ line: Number(e.dataset.line), text: e.textContent })));
    const nativeErrors = expectedScreen.malformed.map((m) => m.line);
    check(JSON.stringify(errors.map((e) => e.line)) === JSON.stringify(nativeErrors), `error lines ${JSON.stringify(errors)} vs native ${JSON.stringify(nativeErrors)}`);
    console.log(`  errors: ${errors.map((e) => e.text).join('; ')}`);
    const rows = await page.locator('[data-testid="screen-table"] tbody tr').evaluateAll((trs) => trs.map((tr) => ({ line: Number(tr.dataset.line), cells: [...tr.cells].map((c) => c.textContent) })));
    const byRank = [...screenOut].sort((a, b) => a.rank - b.rank);
    check(JSON.stringify(rows.map((r) => r.line)) === JSON.stringify(byRank.map((s) => s.line)), `ranking ${JSON.stringify(rows.map((r) => r.line))} vs native ${JSON.stringify(byRank.map((s) => s.line))}`);
    for (const r of rows) {
      const n = screenOut.find((s) => s.line === r.line);
      check(close(Number(r.cells[2]), n.score), `line ${r.line}: score ${r.cells[2]} vs native ${n.score}`);
    }
    // The response cell shows the dataset text as text.
    const rude = rows.find((r) => r.line === byRank[0].line);
    console.log(`  ranked: ${rows.map((r) => `line ${r.line} score ${r.cells[2]}`).join(', ')}; top response ${JSON.stringify(rude.cells[5])}`);
    // Sorting by line number (a header button) reorders the table.
    await page.click('[data-testid="screen-table"] button[data-sort="line"]');
    const lines = await page.locator('[data-testid="screen-table"] tbody tr').evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.line)));
    check(JSON.stringify(lines) === JSON.stringify([...lines].sort((a, b) => a - b)), `not sorted by line: ${lines}`);
    await page.click('[data-testid="screen-table"] button[data-sort="rank"]');
    // Exports: the CSV report and the flagged samples (original lines).
    const [csv] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
    const csvText = readFileSync(await csv.path(), 'utf8');
    check(csvText.split('\n')[0].startsWith('rank,line,score'), `CSV header: ${csvText.split('\n')[0]}`);
    const [flagged] = await Promise.all([page.waitForEvent('download'), page.click('#export-flagged')]);
    const flaggedText = readFileSync(await flagged.path(), 'utf8');
    const source = readFileSync(fixture('screen.jsonl'), 'utf8').split('\n');
    // The default threshold flags what the calibration calls unusual (z >= 2): the rude answer.
    const unusual = screenOut.filter((s) => s.z >= 2).map((s) => source[s.line - 1]);
    check(unusual.length > 0 && JSON.stringify(flaggedText.trim().split('\n')) === JSON.stringify(unusual), `flagged export:\n${flaggedText}`);
    for (const l of flaggedText.trim().split('\n').filter(Boolean)) check(source.includes(l), `exported line not in the source: ${l}`);
    console.log(`  CSV ${csvText.trim().split('\n').length - 1} rows; flagged export ${flaggedText.trim().split('\n').filter(Boolean).length} lines`);
    await screenshot('screen');
  }, ['import a trait vector']);

  await test('the model cache: a broken or partial copy is downloaded again', async () => {
    // A small file that starts like a GGUF: it is cached before the engine rejects it, which keeps this test
    // fast; the bookkeeping is the same as for a real model.
    const url = `${base}/fixtures/broken.gguf`;
    const r = await page.evaluate(async (u) => {
      const ps = window.personascope;
      const attempt = async () => {
        const stages = new Set();
        let error = null;
        await ps.loadModel(u, { onProgress: (p) => stages.add(p.stage) }).catch((e) => { error = e.message; });
        return { stages: [...stages], error };
      };
      await ps.clearCache(u);
      const first = await attempt();
      const cached = (await ps.cacheStatus()).entries.find((e) => e.url === u) ?? null;
      const second = await attempt();
      // Cut the cached copy short, as an interrupted write would.
      const c = await caches.open('personascope-models-v1');
      await c.put(u, new Response(new Uint8Array(10)));
      const third = await attempt();
      // And a copy without its integrity record.
      const meta = await caches.open('personascope-models-meta-v1');
      await meta.delete(u);
      const fourth = await attempt();
      await ps.clearCache(u);
      return { first, cached, second, third, fourth };
    }, url);
    console.log(`  ${JSON.stringify(r)}`);
    check(r.first.stages.includes('download'), 'the first load should download');
    check(r.cached && r.cached.size > 0 && /^[0-9a-f]{64}$/.test(r.cached.sha256), 'no integrity record after the download');
    check(r.second.stages.includes('cache') && !r.second.stages.includes('download'), 'the second load should come from the cache');
    check(r.third.stages.includes('download'), 'a partial cached copy must be downloaded again');
    check(r.fourth.stages.includes('download'), 'a copy without its record must be downloaded again');
    for (const a of [r.first, r.second, r.third, r.fourth]) check(/loading the model/.test(a.error ?? ''), `expected the engine's rejection, got ${a.error}`);
  }, ['load the default model']);

  await test('the model cache notices a changed file behind the same URL', async () => {
    // The server's Last-Modified is the file's mtime: a new file (other bytes, a later time) behind the same URL
    // must be downloaded again, the same file must not.
    const dir = process.env.SITE_FIXTURES;
    check(dir, 'SITE_FIXTURES (the served fixtures directory) is not set');
    const file = join(dir, 'changing.gguf');
    const write = (fill, n, secs) => {
      writeFileSync(file, Buffer.concat([Buffer.from('GGUF\x03\x00\x00\x00', 'latin1'), Buffer.alloc(n, fill)]));
      utimesSync(file, secs, secs);
    };
    const t0 = Math.floor(Date.now() / 1000) - 3600;
    write('A', 100, t0);
    const url = `${base}/fixtures/changing.gguf`;
    const attempt = () => page.evaluate(async (u) => {
      const ps = window.personascope;
      const stages = new Set();
      let error = null;
      await ps.loadModel(u, { onProgress: (p) => stages.add(p.stage) }).catch((e) => { error = e.message; });
      const entry = (await ps.cacheStatus()).entries.find((e) => e.url === u) ?? null;
      return { stages: [...stages], error, entry };
    }, url);
    await page.evaluate((u) => window.personascope.clearCache(u), url);
    const first = await attempt();
    const same = await attempt();
    write('B', 200, t0 + 60);
    const changed = await attempt();
    const again = await attempt();
    await page.evaluate((u) => window.personascope.clearCache(u), url);
    console.log(`  ${JSON.stringify({ first, same, changed, again })}`);
    check(first.stages.includes('download') && first.entry?.size === 108, 'the first load should download and cache 108 bytes');
    check(first.entry.lastModified, 'the cache record keeps the server\'s Last-Modified');
    check(same.stages.includes('revalidate') && same.stages.includes('cache') && !same.stages.includes('download'), 'an unchanged file should come from the cache after a check');
    check(changed.stages.includes('revalidate') && changed.stages.includes('download'), 'a changed file must be downloaded again');
    check(changed.entry?.size === 208 && changed.entry.sha256 !== first.entry.sha256, `the cache should now hold the new file: ${JSON.stringify(changed.entry)}`);
    check(again.stages.includes('cache') && !again.stages.includes('download'), 'the new copy should be used from the cache');
    for (const a of [first, same, changed, again]) check(/loading the model/.test(a.error ?? ''), `expected the engine's rejection, got ${a.error}`);
  }, ['load the default model']);

  await test('the next visit loads the model from the browser cache', async () => {
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
    const cached = await page.locator('#cache-list').innerText();
    check(/SmolLM2-135M-Instruct\.Q4_1\.gguf/.test(cached), `the cache list does not show the model: ${cached}`);
    await page.check('input[name="source"][value="default"]');
    const started = Date.now();
    await page.click('[data-testid="model-load"]');
    const s = await waitStatus(['ready', 'error'], LOAD_TIMEOUT);
    check(s.state === 'ready' && /from the browser cache/.test(s.text), s.text);
    figures.cachedLoadSeconds = (Date.now() - started) / 1000;
    console.log(`  ${s.text}`);
    await screenshot('model-from-cache');
  }, ['load the default model']);

  await test('chat: Stop ends a reply early, New conversation clears it', async () => {
    // After the reload: no vector, so no monitoring pass; a short system prompt keeps the prompt short.
    await tab('chat');
    await page.locator('details:has(#max-tokens) > summary').click();
    await page.fill('#system-prompt', 'Be brief.');
    await page.fill('#max-tokens', '40');
    await page.locator('details:has(#max-tokens) > summary').click();
    await page.fill('[data-testid="chat-input"]', 'Tell me a story.');
    await page.keyboard.press('Enter'); // Enter sends (focus is still in the input after fill)
    const reply = page.locator('[data-testid="chat-reply"]').last();
    await reply.locator('.tok').first().waitFor({ timeout: REPLY_TIMEOUT });
    await page.click('[data-testid="chat-stop"]');
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid="chat-reply"]')].pop().dataset.done === 'true', null, { timeout: REPLY_TIMEOUT });
    const stop = await reply.getAttribute('data-stop');
    const n = await reply.locator('.tok').count();
    console.log(`  stopped after ${n} tokens: ${JSON.stringify(await reply.getAttribute('data-text'))} (${stop})`);
    check(stop === 'cancelled' && n < 40, `stop ${stop} after ${n} tokens`);
    await screenshot('chat-stopped');
    await page.click('#chat-new');
    check((await page.locator('#chat-log li').count()) === 0, 'New conversation left turns in the log');
  }, ['the next visit loads the model from the browser cache']);

  await test('extract: progress, cancel, and the result view', async () => {
    await tab('extract');
    const options = await page.locator('#extract-trait option').count();
    check(options >= 8, `expected the 7 built-in traits and "your own", got ${options}`);
    await page.selectOption('#extract-trait', 'impolite');
    check((await page.inputValue('#def-name')) === 'impolite', 'choosing a built-in trait does not fill the form');
    // "Your own trait": a definition typed into the form (short texts keep each forward pass short).
    await page.selectOption('#extract-trait', '');
    check((await page.inputValue('#def-name')) === '', '"Your own trait" should start from an empty form');
    const n = (k, f) => Array.from({ length: k }, (_, i) => f(i + 1)).join('\n');
    await page.fill('#def-name', 'curt');
    await page.fill('#def-pos-adj', 'curt');
    await page.fill('#def-neg-adj', 'warm');
    await page.fill('#def-description', 'Answers in a short, cold way.');
    await page.fill('#def-instructions', n(5, (i) => `Be curt ${i}. | Be warm ${i}.`));
    await page.fill('#def-questions', n(20, (i) => `Question ${i}?`));
    await page.fill('#def-eval', n(20, (i) => `Held-out ${i}? | No. | Gladly, here you go.`));
    await page.selectOption('#extract-mode', 'prompt-last');
    await page.fill('#extract-pairs', '1');
    await page.fill('#extract-questions', '4');
    // A first run of the typed-in trait, cancelled once it reports progress.
    await page.click('[data-testid="extract-run"]');
    await page.waitForFunction(() => /^extract: \d+ of \d+/.test(document.querySelector('#extract-status').textContent), null, { timeout: REPLY_TIMEOUT, polling: 250 });
    const progress = await page.textContent('#extract-status');
    await screenshot('extract-running');
    await page.click('#extract-cancel');
    await page.waitForFunction(() => /cancelled/.test(document.querySelector('#extract-status').textContent), null, { timeout: REPLY_TIMEOUT });
    console.log(`  progress "${progress}", then "${await page.textContent('#extract-status')}"`);
    check(await page.locator('[data-testid="extract-run"]').isEnabled(), 'Extract stays disabled after the cancel');
  }, ['the next visit loads the model from the browser cache']);

  await test('extract and evaluate a built-in trait to the end, as the native CLI does', async () => {
    // The whole job in the page on SwiftShader: extraction, calibration, then the evaluation (separation on
    // held-out questions, reference answers, steering sweep, perplexity), at small settings; the vector and the
    // report must be the native CLI's at the same settings (tests/browser/run.sh).
    await tab('extract');
    await page.selectOption('#extract-trait', 'impolite');
    await page.selectOption('#extract-mode', 'prompt-last');
    await page.fill('#extract-pairs', '1');
    await page.fill('#extract-questions', '4');
    await page.fill('#extract-neutral', '2');
    await page.check('#extract-evaluate');
    await page.fill('#eval-questions', '2');
    await page.fill('#eval-pairs', '1');
    await page.fill('#eval-layers', '20');
    await page.fill('#eval-alphas', '2');
    const started = Date.now();
    await page.click('[data-testid="extract-run"]');
    await page.waitForFunction(() => /^done: /.test(document.querySelector('#extract-status').textContent) || document.querySelector('#extract-status').classList.contains('error'), null, { timeout: 4 * REPLY_TIMEOUT, polling: 500 });
    const status = await page.textContent('#extract-status');
    check(/^done: /.test(status), `the extraction ended with "${status}"`);
    figures.extractEvaluateSeconds = (Date.now() - started) / 1000;
    console.log(`  ${status} (${figures.extractEvaluateSeconds.toFixed(0)} s)`);
    await page.waitForSelector('#extract-result:not([hidden])', { timeout: 30_000 });
    const native = json('page-extract.json');
    const nativeReport = json('page-eval.json');
    const [vector, report] = await page.evaluate(async () => {
      const ps = window.personascope;
      const vs = await ps.vectors();
      return [vs[vs.length - 1], window.personascopeLastReport ?? null];
    });
    check(vector.counts[0] === native.kept[0] && vector.counts[1] === native.kept[1], `counts ${vector.counts} vs native ${native.kept}`);
    let worst = 0;
    for (let l = 1; l < native.norms.length; l++) {
      const e = Math.abs(vector.norms[l] - native.norms[l]) / Math.max(native.norms[l], 1e-6);
      worst = Math.max(worst, e);
      check(e < 1e-3, `layer ${l}: vector norm ${vector.norms[l]} vs native ${native.norms[l]}`);
    }
    console.log(`  vector norms equal the native CLI's (largest relative difference ${worst.toExponential(1)})`);
    check(report !== null, 'the page kept no evaluation report');
    for (const [i, l] of nativeReport.layers.entries()) {
      const g = report.layers[i];
      if (l.effect_size !== null) {
        check(Math.abs(g.effect_size - l.effect_size) <= 1e-2 * Math.max(1, Math.abs(l.effect_size)), `layer ${l.layer}: effect size ${g.effect_size} vs native ${l.effect_size}`);
        check(g.auroc === l.auroc, `layer ${l.layer}: AUROC ${g.auroc} vs native ${l.auroc}`);
      }
    }
    const [gs, ns] = [report.steering[0], nativeReport.steering[0]];
    check(gs.layer === ns.layer && Math.abs(gs.margin_change - ns.margin_change) < 5e-3, `steering row ${JSON.stringify(gs)} vs native ${JSON.stringify(ns)}`);
    check(Math.abs(report.baseline_perplexity / nativeReport.baseline_perplexity - 1) < 1e-3, `perplexity ${report.baseline_perplexity} vs native ${nativeReport.baseline_perplexity}`);
    check(report.recommended.screen_layer === nativeReport.recommended.screen_layer, `screening layer ${report.recommended.screen_layer} vs native ${nativeReport.recommended.screen_layer}`);
    const bars = await page.locator('[data-testid="layer-chart"] rect').count();
    const expectedBars = report.layers.filter((l) => l.effect_size !== null).length;
    check(bars === expectedBars, `${bars} bars in the layer chart, ${expectedBars} expected`);
    const marked = await page.locator('[data-testid="layer-chart"] rect.mark').getAttribute('data-layer');
    check(Number(marked) === report.recommended.layer, `the chart marks layer ${marked}, recommended ${report.recommended.layer}`);
    const text = await page.textContent('#extract-recommended');
    check(text.includes(`layer ${report.recommended.layer}`), `recommendation text: ${text}`);
    console.log(`  ${text}`);
    const [saved] = await Promise.all([page.waitForEvent('download'), page.click('#extract-save')]);
    check(readFileSync(await saved.path()).subarray(0, 4).toString('latin1') === 'GGUF', 'Save did not give a GGUF file');
    await screenshot('extract-result');
  }, ['the next visit loads the model from the browser cache']);

  await test('a lost GPU device is reported and the page offers a reload', async () => {
    // Last of the model tests: the device is gone for good afterwards (the reload brings a new one).
    const reason = await page.evaluate(() => window.personascope.loseDevice());
    console.log(`  device lost: ${reason}`);
    check(typeof reason === 'string' && reason.length > 0, `loseDevice gave no reason: ${reason}`);
    await tab('chat');
    await page.fill('[data-testid="chat-input"]', 'Hi');
    await page.click('[data-testid="chat-send"]');
    const reply = page.locator('[data-testid="chat-reply"]').last();
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid="chat-reply"]')].pop()?.dataset.done === 'true', null, { timeout: 60_000 });
    const error = await reply.getAttribute('data-error');
    check(error && /lost/.test(error) && /reload/.test(error), `the reply should fail with the device loss: ${error}`);
    await page.waitForSelector('[data-testid="device-lost"]:not([hidden])', { timeout: 10_000 });
    const shown = await page.textContent('#device-lost-reason');
    check(/lost/.test(shown), `the alert does not say why: ${shown}`);
    await screenshot('device-lost');
    await page.click('[data-testid="device-lost-reload"]');
    await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
    check(await page.locator('[data-testid="device-lost"]').isHidden(), 'the alert should be gone after the reload');
  }, ['load the default model']);

  await test('no request to another host', async () => {
    const origin = new URL(base).origin;
    const others = [...hosts].filter((h) => h !== origin && !h.startsWith('data:') && !h.startsWith('blob:'));
    check(others.length === 0, `requests to ${others.join(', ')}`);
  });

  await test('without WebGPU the page explains why', async () => {
    // The same Chromium without --enable-unsafe-webgpu: Linux builds then offer no WebGPU adapter.
    const profile2 = mkdtempSync(join(tmpdir(), 'personascope-chromium-'));
    const plain = await chromium.launchPersistentContext(profile2, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      viewport: { width: 1280, height: 800 },
      args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
    });
    try {
      const p = plain.pages()[0] ?? (await plain.newPage());
      await p.goto(`${base}/index.html`);
      await p.waitForSelector('#no-webgpu:not([hidden])', { timeout: 60_000 });
      const reason = await p.textContent('#no-webgpu-reason');
      check(/WebGPU/.test(reason), `no reason given: ${reason}`);
      check(await p.locator('[data-testid="model-load"]').isDisabled(), 'Load model should be disabled without WebGPU');
      console.log(`  ${reason}`);
      const path = join(artifacts, `${String(++shot).padStart(2, '0')}-no-webgpu.png`);
      await p.screenshot({ path, fullPage: true });
    } finally {
      await plain.close().catch(() => {});
      rmSync(profile2, { recursive: true, force: true });
    }
  });
} catch (e) {
  console.log(`FAIL the browser run: ${e.stack ?? e}`);
  results.push({ name: 'the browser run', ok: false });
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

writeFileSync(join(artifacts, 'figures.json'), JSON.stringify(figures, null, 2));
const passed = results.filter((r) => r.ok).length;
console.log(`\nscreenshots and downloads: ${artifacts}`);
if (figures.chat) {
  const c = figures.chat;
  console.log(`figures: model load ${figures.loadSeconds?.toFixed(1)} s (cached: ${figures.cachedLoadSeconds?.toFixed(1) ?? '?'} s), first token ${(Number(c.firstToken) / 1000).toFixed(1)} s, prefill ${Number(c.prefill).toFixed(2)} tok/s, decode ${Number(c.decode).toFixed(2)} tok/s on ${figures.adapter}`);
}
console.log(`browser tests: ${passed} passed, ${results.length - passed} failed`);
process.exit(passed === results.length ? 0 : 1);
