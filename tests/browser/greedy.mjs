// Drives headless Chromium (WebGPU on SwiftShader) through the test page and compares its greedy tokens with the
// native CPU reference. Usage: node greedy.mjs <base url> <messages json file> <expected json file>
// where the expected file is the CLI's `generate --json` output. Exits non-zero on a mismatch, an error or a timeout.
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, messagesFile, expectedFile] = process.argv.slice(2);
if (!base || !messagesFile || !expectedFile) {
  console.error('usage: node greedy.mjs <base url> <messages.json> <expected.json>');
  process.exit(2);
}
const maxTokens = Number(process.env.MAX_TOKENS ?? '8');
const timeoutMs = Number(process.env.TIMEOUT_MS ?? String(15 * 60 * 1000));
const outDir = process.env.OUT_DIR || '/tmp';
const messages = JSON.stringify(JSON.parse(readFileSync(messagesFile, 'utf8')));
const expected = JSON.parse(readFileSync(expectedFile, 'utf8'));

const profile = mkdtempSync(join(tmpdir(), 'personascope-chromium-'));
let context;
let code = 1;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
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
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => console.log(`[console.${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[pageerror] ${e.message}`));
  page.on('crash', () => console.log('[page crashed]'));

  const url = `${base}/index.html?max_tokens=${maxTokens}&messages=${encodeURIComponent(messages)}`;
  const started = Date.now();
  await page.goto(url);
  let result;
  try {
    await page.waitForFunction(() => window.result !== undefined, null, { timeout: timeoutMs, polling: 1000 });
    result = await page.evaluate(() => window.result);
  } catch (e) {
    result = { ok: false, error: `timed out after ${timeoutMs} ms waiting for window.result (${e.message})` };
  }
  const wallMs = Date.now() - started;
  const shot = join(outDir, 'personascope-greedy.png');
  await page.screenshot({ path: shot, fullPage: true }).catch((e) => console.log(`screenshot failed: ${e.message}`));
  console.log(`screenshot: ${shot}`);

  if (!result.ok) {
    console.log(`FAIL: the page reported an error: ${result.error}`);
  } else {
    console.log(`adapter: ${result.adapter}`);
    console.log(
      `timings: wasm init ${result.initMs.toFixed(0)} ms, model fetch ${result.fetchMs.toFixed(0)} ms, ` +
        `load ${result.loadMs.toFixed(0)} ms, first token (prefill of ${result.promptIds.length} + 1 step) ` +
        `${result.coldMs.toFixed(0)} ms cold / ${result.firstMs.toFixed(0)} ms warm, generation of ${result.ids.length} tokens ${result.generateMs.toFixed(0)} ms, ` +
        `decode ${result.decodeTokS.toFixed(2)} tokens/s, page total ${wallMs} ms`,
    );
    console.log(`browser prompt ids: ${JSON.stringify(result.promptIds)}`);
    console.log(`native  prompt ids: ${JSON.stringify(expected.prompt_ids)}`);
    console.log(`browser ids: ${JSON.stringify(result.ids)} ${JSON.stringify(result.text)}`);
    console.log(`native  ids: ${JSON.stringify(expected.ids)} ${JSON.stringify(expected.text)}`);
    const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
    if (!same(result.promptIds, expected.prompt_ids)) {
      console.log('FAIL: the prompt ids differ (tokenizer or chat template)');
    } else if (!same(result.ids, expected.ids)) {
      console.log('FAIL: the greedy tokens differ from the native CPU reference');
    } else {
      console.log(`PASS: ${result.ids.length} greedy tokens in headless Chromium equal the native CPU reference`);
      code = 0;
    }
  }
} catch (e) {
  console.log(`FAIL: ${e.stack ?? e}`);
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
