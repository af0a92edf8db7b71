// The page: views over the Personascope API (personascope.js). Model and dataset text is only ever inserted as
// text (textContent, text nodes), never parsed as HTML. Charts are SVG built element by element.

import { Personascope } from './personascope.js';

const DEFAULT_MODEL = 'models/SmolLM2-135M-Instruct.Q4_1.gguf';
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

/** A DOM element; string and number children become text nodes (never HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const fmt = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x) ? '–' : Number(x).toFixed(digits));
const signed = (x, digits = 2) => (x === null || x === undefined ? '–' : (x >= 0 ? '+' : '') + Number(x).toFixed(digits));
const ordinal = (p) => (p === null || p === undefined ? '–' : `${Math.round(p)}th percentile`);
const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;

function download(data, name, type) {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---- state ---------------------------------------------------------------------------------------------------

const state = {
  ps: null,
  model: null, // ModelLoad
  traits: [], // built-in definitions
  vectors: [], // VectorInfo[]
  monitor: new Map(), // vector id -> layer (monitored traits)
  steer: new Map(), // vector id -> {alpha, layer}
  messages: [], // the conversation (user/assistant turns; the system prompt is added per request)
  chatting: false,
  lastReply: null, // {tokens, result}
  extracted: null, // {vector, report}
  screen: null, // {result, sort: {key, dir}}
};

// ---- tabs ----------------------------------------------------------------------------------------------------

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab, focus) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute('aria-controls')).hidden = !on;
    }
    if (focus) tab.focus();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener('click', () => select(tab, false));
    tab.addEventListener('keydown', (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length], true);
      else if (e.key === 'Home') select(tabs[0], true);
      else if (e.key === 'End') select(tabs[tabs.length - 1], true);
      else return;
      e.preventDefault();
    });
  });
}

const showTab = (name) => $(`tab-${name}`).click();

// ---- status --------------------------------------------------------------------------------------------------

function setStatus(text, kind = '') {
  const el = $('model-status');
  el.textContent = text;
  el.dataset.state = kind;
}

let readyText = null;

/** After a failed load with a model still in place, the next action brings the "Ready" line back. */
function restoreStatus() {
  if (state.model && readyText && $('model-status').dataset.state === 'error') setStatus(readyText, 'ready');
}

function setBusy(text) {
  $('busy').textContent = text ?? '';
}

function reportError(where, err, target) {
  const text = `${where}: ${err?.message ?? err}`;
  console.error(text);
  if (target) {
    target.textContent = text;
    target.classList.add('error');
  } else setStatus(text, 'error');
}

/** The GPU device is gone: nothing on this page can run until it is reloaded, so say so and offer the reload. */
function showDeviceLost(message) {
  const box = $('device-lost');
  $('device-lost-reason').textContent = message;
  box.hidden = false;
  setStatus('The GPU device was lost: reload the page to continue.', 'error');
}

// ---- model ---------------------------------------------------------------------------------------------------

const STAGE_LABEL = { download: 'Download', revalidate: 'Ask the server for a newer file', cache: 'Read from the browser cache', read: 'Read the file', verify: 'Check (SHA-256)' };

function resetProgress() {
  for (const p of ['fetch', 'upload', 'warmup']) {
    $(`progress-${p}`).value = 0;
    $(`progress-${p}-text`).textContent = '';
  }
}

let fetchStage = 'download';

function onLoadProgress(p, started) {
  const secs = `${((performance.now() - started) / 1000).toFixed(1)} s`;
  if (p.stage in STAGE_LABEL) {
    const waiting = p.stage === 'verify' || p.stage === 'revalidate';
    if (!waiting) fetchStage = p.stage;
    $('progress-fetch-label').textContent = STAGE_LABEL[p.stage];
    const bar = $('progress-fetch');
    if (waiting) {
      bar.removeAttribute('value'); // indeterminate
      $('progress-fetch-text').textContent = 'checking…';
    } else if (p.total > 0) {
      bar.value = p.loaded / p.total;
      $('progress-fetch-text').textContent = `${mb(p.loaded)} of ${mb(p.total)}`;
    } else {
      bar.removeAttribute('value');
      $('progress-fetch-text').textContent = mb(p.loaded);
    }
  } else if (p.stage === 'upload' || p.stage === 'warmup') {
    const name = p.stage;
    if (name === 'upload') {
      $('progress-fetch-label').textContent = STAGE_LABEL[fetchStage];
      $('progress-fetch').value = 1;
      $('progress-fetch-text').textContent = 'done';
    }
    const bar = $(`progress-${name}`);
    if (p.loaded >= p.total && p.total > 0) {
      bar.value = 1;
      $(`progress-${name}-text`).textContent = 'done';
    } else {
      // The engine reports no steps inside these two stages: an indeterminate bar and the time spent.
      bar.removeAttribute('value');
      $(`progress-${name}-text`).textContent = `working… (started at ${secs})`;
    }
  }
  setBusy(`Loading: ${p.stage}…`);
}

let loadController = null;

async function loadModel(e) {
  e.preventDefault();
  const kind = new FormData($('model-form')).get('source');
  let source;
  if (kind === 'default') source = DEFAULT_MODEL;
  else if (kind === 'file') {
    source = $('model-file').files[0];
    if (!source) return setStatus('Choose a GGUF file first.', 'error');
  } else {
    source = $('model-url').value.trim();
    if (!source) return setStatus('Type the model URL first.', 'error');
  }
  const label = typeof source === 'string' ? source : source.name;
  resetProgress();
  setStatus(`Loading ${label}…`, 'busy');
  $('model-load').disabled = true;
  $('model-cancel').disabled = false;
  loadController = new AbortController();
  const started = performance.now();
  try {
    const load = await state.ps.loadModel(source, {
      cache: $('model-cache').checked,
      signal: loadController.signal,
      onProgress: (p) => onLoadProgress(p, started),
    });
    state.model = load;
    $('progress-fetch').value = 1;
    const cache = {
      hit: load.revalidated === false
        ? 'from the browser cache (the server could not be asked for a newer file)'
        : 'from the browser cache',
      updated: 'downloaded again (the file on the server changed since it was cached)',
      saved: 'downloaded and cached',
      repaired: `downloaded again (${load.repaired})`,
      'not-saved': `downloaded; not cached (${load.cacheError})`,
      off: 'downloaded (not cached)',
      file: 'from a local file',
    }[load.cache];
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    readyText = `Ready: ${load.info.model} (${load.info.architecture}, ${load.info.layers} layers), ${cache}, loaded in ${secs} s.`;
    setStatus(readyText, 'ready');
    await afterModelLoaded(load);
  } catch (err) {
    // A failed load keeps the previous model (the worker loads the new one before dropping the old).
    const still = state.model ? ` The previous model (${state.model.info.model}) is still loaded.` : '';
    setStatus(`Could not load ${label}: ${err.message}.${still}`, 'error');
    resetProgress();
  } finally {
    $('model-load').disabled = false;
    $('model-cancel').disabled = true;
    setBusy('');
    loadController = null;
  }
}

async function afterModelLoaded(load) {
  // The engine forgets vectors and settings with its model.
  state.monitor.clear();
  state.steer.clear();
  state.messages = [];
  $('chat-log').replaceChildren();
  state.vectors = load.vectors ?? [];
  state.lastReply = null;
  renderColourSelect();
  renderTraitScores(null);
  renderScorePlot([]);
  renderDeviceInfo(load);
  renderVectors();
  await renderCache();
}

function renderDeviceInfo(load) {
  const i = load.info;
  const rows = [
    ['Model', i.model],
    ['Source', load.source],
    ['Architecture', `${i.architecture}, ${i.layers} blocks, width ${i.width}, vocabulary ${i.vocab}`],
    ['Context', `${i.max_positions} tokens`],
    ['GPU memory', mb(i.gpu_bytes)],
    ['Adapter', i.adapter],
    ['Optional features', Object.entries(i.features).map(([k, v]) => `${k} ${v ? 'yes' : 'no'}`).join(', ')],
    ['File', `${mb(load.bytes)}${load.sha256 ? `, SHA-256 ${load.sha256.slice(0, 16)}…` : ''}`],
    ['Load time', `fetch ${fmt(load.timing.fetchMs / 1000, 1)} s, GPU upload ${fmt(load.timing.uploadMs / 1000, 1)} s, warm-up ${fmt(load.timing.warmupMs / 1000, 1)} s`],
  ];
  $('device-info').replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

async function renderCache() {
  try {
    const status = await state.ps.cacheStatus();
    const list = $('cache-list');
    if (!status.available) list.replaceChildren(h('li', { class: 'muted' }, 'The browser cache is not available here.'));
    else if (status.entries.length === 0) list.replaceChildren(h('li', { class: 'muted' }, 'none'));
    else list.replaceChildren(...status.entries.map((m) => h('li', {}, `${m.url} (${m.size ? mb(m.size) : 'size unknown'})`)));
  } catch (err) {
    console.warn('cache status', err);
  }
}

// ---- chat ----------------------------------------------------------------------------------------------------

function numberOr(id, fallback) {
  const v = $(id).value.trim();
  if (v === '') return fallback;
  const n = Number(v);
  return Number.isFinite(n) ? n : fallback;
}

function chatOptions() {
  const seed = $('seed').value.trim();
  return {
    max_tokens: Math.max(1, Math.round(numberOr('max-tokens', 200))),
    temperature: Math.max(0, numberOr('temperature', 0.7)),
    top_k: Math.max(0, Math.round(numberOr('top-k', 0))),
    top_p: Math.min(1, Math.max(0, numberOr('top-p', 1))),
    repetition_penalty: numberOr('repetition-penalty', 1),
    seed: seed === '' ? Math.floor(Math.random() * 2 ** 31) : Math.max(0, Math.round(Number(seed))),
  };
}

function withSystem(messages) {
  const system = $('system-prompt').value.trim();
  return system ? [{ role: 'system', content: system }, ...messages] : messages;
}

/** The colour of a z-score: blue below the neutral average, red above, clear near it. */
function zColour(z) {
  if (z === null || z === undefined || Number.isNaN(z)) return '';
  const a = Math.min(1, Math.abs(z) / 3) * 0.55;
  return z >= 0 ? `rgba(214, 48, 49, ${a.toFixed(3)})` : `rgba(41, 98, 255, ${a.toFixed(3)})`;
}

function colourIndex() {
  const v = $('colour-trait').value;
  return v === '' ? -1 : Number(v);
}

function scoreTitle(s) {
  return `${s.trait} (layer ${s.layer}): z ${signed(s.z)}, ${ordinal(s.percentile)}, raw ${fmt(s.raw, 3)}`;
}

/** A token as text, coloured by the chosen trait; every trait's numbers are in the title and data attributes. */
function tokenSpan(token) {
  const span = h('span', { class: 'tok' }, token.text);
  if (token.scores.length > 0) {
    span.dataset.scores = JSON.stringify(token.scores);
    colourToken(span, token.scores);
  }
  return span;
}

function colourToken(span, scores) {
  const i = colourIndex();
  const s = i >= 0 ? scores[i] : null;
  span.style.backgroundColor = s ? zColour(s.z) : '';
  if (s) {
    span.dataset.z = String(s.z);
    span.dataset.raw = String(s.raw);
  }
}

/** The numbers of the token under the pointer (one shared tooltip; the token table has them for keyboards). */
function setupTokenTip() {
  const tip = h('div', { id: 'token-tip', role: 'tooltip', hidden: true });
  document.body.append(tip);
  document.addEventListener('mouseover', (e) => {
    const tok = e.target instanceof Element ? e.target.closest('.tok[data-scores]') : null;
    if (!tok) {
      tip.hidden = true;
      return;
    }
    const scores = JSON.parse(tok.dataset.scores);
    tip.replaceChildren(h('strong', {}, JSON.stringify(tok.textContent)), ...scores.map((s) => h('div', {}, scoreTitle(s))));
    const r = tok.getBoundingClientRect();
    tip.hidden = false;
    tip.style.left = `${Math.max(4, Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 4))}px`;
    tip.style.top = `${window.scrollY + r.bottom + 6}px`;
  });
}

function recolourAll() {
  for (const span of document.querySelectorAll('.tok[data-scores]')) colourToken(span, JSON.parse(span.dataset.scores));
  if (state.lastReply) renderScorePlot(state.lastReply.tokens);
}

function addTurn(role, text) {
  const body = h('div', { class: 'reply' });
  if (text !== undefined) body.textContent = text;
  const li = h('li', { class: `turn ${role}` }, h('span', { class: 'who' }, role === 'user' ? 'You' : 'Model'), body);
  $('chat-log').append(li);
  li.scrollIntoView({ block: 'end' });
  return body;
}

function renderTraitScores(scores, label, promptScores = null) {
  const list = $('trait-scores');
  const monitored = [...state.monitor.keys()].map((id) => state.vectors.find((v) => v.id === id)).filter(Boolean);
  $('monitor-empty').hidden = monitored.length > 0;
  list.replaceChildren(
    ...monitored.map((v, i) => {
      const s = scores?.[i];
      const z = s?.z ?? null;
      const meter = h('span', { class: 'meter', 'aria-hidden': 'true' }, h('span', { class: 'needle' }));
      // Centre = the neutral average; the bar spans z from -3 to +3.
      meter.firstChild.style.left = `${Math.max(0, Math.min(100, 50 + ((z ?? 0) / 3) * 50))}%`;
      meter.firstChild.style.backgroundColor = z === null ? '#888' : zColour(Math.sign(z) * 3);
      const value = s ? `z ${signed(z)} · ${ordinal(s.percentile)}` : '–';
      return h(
        'li',
        {},
        h('span', { class: 'trait-name' }, `${v.trait ?? `vector ${v.id}`} (layer ${s?.layer ?? state.monitor.get(v.id) ?? '?'})`),
        h(
          'output',
          { 'data-testid': 'trait-score', 'data-trait': v.trait ?? '', 'data-z': z ?? '', 'data-raw': s?.raw ?? '', title: label ?? '' },
          value,
        ),
        h('span', { class: 'muted small' }, label ?? ''),
        promptScores?.[i]
          ? h('span', { class: 'muted small', 'data-testid': 'prompt-score' }, `before the reply: z ${signed(promptScores[i].z)}`)
          : h('span'),
        meter,
      );
    }),
  );
}

function meanScores(tokens) {
  if (tokens.length === 0) return null;
  const n = tokens[0].scores.length;
  return Array.from({ length: n }, (_, i) => {
    const zs = tokens.map((t) => t.scores[i]?.z).filter((z) => z !== null && z !== undefined);
    const raws = tokens.map((t) => t.scores[i]?.raw).filter((r) => r !== null && r !== undefined);
    const pct = tokens.map((t) => t.scores[i]?.percentile).filter((p) => p !== null && p !== undefined);
    const mean = (a) => (a.length ? a.reduce((x, y) => x + y, 0) / a.length : null);
    return { trait: tokens[0].scores[i].trait, layer: tokens[0].scores[i].layer, z: mean(zs), raw: mean(raws), percentile: mean(pct) };
  });
}

function renderScorePlot(tokens) {
  const box = $('score-plot');
  const n = tokens.length;
  const traits = n > 0 ? tokens[0].scores.length : 0;
  if (n === 0 || traits === 0) {
    box.replaceChildren(h('p', { class: 'muted' }, 'No scores yet.'));
    return;
  }
  const W = 320, H = 150, L = 30, B = 18, T = 6;
  const zs = tokens.flatMap((t) => t.scores.map((s) => s.z ?? 0));
  const lim = Math.max(3, ...zs.map(Math.abs));
  const x = (i) => L + (n === 1 ? 0 : (i / (n - 1)) * (W - L - 6));
  const y = (z) => T + ((lim - z) / (2 * lim)) * (H - T - B);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'z-scores per token of the last reply' });
  root.append(svg('line', { x1: L, x2: W - 6, y1: y(0), y2: y(0), class: 'axis' }));
  for (const z of [-lim, 0, lim]) root.append(svg('text', { x: L - 4, y: y(z) + 4, class: 'tick', 'text-anchor': 'end' }, z.toFixed(0)));
  root.append(svg('text', { x: W - 6, y: H - 4, class: 'tick', 'text-anchor': 'end' }, `token ${n}`));
  const chosen = colourIndex();
  for (let t = 0; t < traits; t++) {
    const pts = tokens.map((tok, i) => `${x(i).toFixed(1)},${y(tok.scores[t].z ?? 0).toFixed(1)}`).join(' ');
    root.append(svg('polyline', { points: pts, class: `series s${t % 6}${t === chosen ? ' chosen' : ''}` }));
    root.append(svg('text', { x: L + 4, y: T + 10 + 12 * t, class: `label s${t % 6}` }, tokens[0].scores[t].trait));
  }
  box.replaceChildren(root);
}

function renderTokenTable(tokens) {
  const table = $('token-table');
  const traits = tokens[0]?.scores ?? [];
  table.tHead.replaceChildren(h('tr', {}, h('th', { scope: 'col' }, '#'), h('th', { scope: 'col' }, 'token'), ...traits.map((s) => h('th', { scope: 'col' }, `${s.trait} z`))));
  table.tBodies[0].replaceChildren(
    ...tokens.map((t, i) => h('tr', {}, h('td', {}, i + 1), h('td', {}, h('code', {}, JSON.stringify(t.text))), ...t.scores.map((s) => h('td', { title: scoreTitle(s) }, signed(s.z))))),
  );
}

async function sendChat(e) {
  e?.preventDefault();
  if (state.chatting) return;
  const text = $('chat-input').value.trim();
  if (!text) return;
  if (!state.model) {
    setStatus('Load a model first (Model tab).', 'error');
    return;
  }
  restoreStatus();
  state.chatting = true;
  $('chat-send').disabled = true;
  $('chat-stop').disabled = false;
  $('chat-input').value = '';
  state.messages.push({ role: 'user', content: text });
  addTurn('user', text);
  const body = addTurn('assistant');
  body.dataset.testid = 'chat-reply';
  body.setAttribute('aria-busy', 'true');
  const tokens = [];
  $('chat-speed').textContent = 'thinking…';
  renderTraitScores(null, 'waiting for the first token');
  try {
    const result = await state.ps.chat(withSystem(state.messages), chatOptions(), (t) => {
      tokens.push(t);
      body.append(tokenSpan(t));
      if (t.scores.length) renderTraitScores(t.scores, `token ${t.index + 1}`);
      if (t.index === 0) $('chat-speed').textContent = `first token after ${(t.ms / 1000).toFixed(1)} s…`;
    });
    state.messages.push({ role: 'assistant', content: result.text });
    body.dataset.stop = result.stop;
    body.dataset.steered = String(result.steered);
    body.dataset.text = result.text;
    body.dataset.ids = JSON.stringify(result.ids);
    const tm = result.timing;
    const notes = { cancelled: ' (stopped)', context_full: ' (the context is full: start a new conversation)', max_tokens: ' (token limit)', end_of_turn: '' };
    $('chat-speed').textContent =
      `prefill ${fmt(tm.prefill_tok_s, 1)} tok/s (${result.prompt_tokens} tokens, first token ${fmt(tm.first_token_ms / 1000, 1)} s), ` +
      `decode ${fmt(tm.decode_tok_s, 2)} tok/s${result.steered ? ', steered' : ''}${notes[result.stop] ?? ''}`;
    $('chat-speed').dataset.prefill = String(tm.prefill_tok_s);
    $('chat-speed').dataset.decode = String(tm.decode_tok_s);
    $('chat-speed').dataset.firstToken = String(tm.first_token_ms);
    state.lastReply = { tokens, result };
    if (tokens.length && tokens[0].scores.length) renderTraitScores(meanScores(tokens), 'mean over the reply', result.prompt_scores);
    renderScorePlot(tokens);
    renderTokenTable(tokens);
    body.dataset.done = 'true';
  } catch (err) {
    state.messages.pop(); // the user turn that got no reply
    body.append(h('span', { class: 'error' }, `Error: ${err.message}`));
    body.dataset.error = err.message;
    body.dataset.done = 'true';
    $('chat-speed').textContent = '';
  } finally {
    body.removeAttribute('aria-busy');
    state.chatting = false;
    $('chat-send').disabled = false;
    $('chat-stop').disabled = true;
    $('chat-input').focus();
  }
}

function newConversation() {
  if (state.chatting) state.ps.abort();
  state.messages = [];
  state.lastReply = null;
  $('chat-log').replaceChildren();
  $('chat-speed').textContent = '';
  renderTraitScores(null);
  renderScorePlot([]);
  $('chat-input').focus();
}

// ---- vectors, monitor, steering -------------------------------------------------------------------------------

function vectorName(v) {
  return `${v.trait ?? 'unnamed'} #${v.id}`;
}

function defaultLayer(v) {
  return v.layer ?? Math.round(v.layers * 0.6);
}

async function applyMonitor() {
  const entries = [...state.monitor].map(([vector, layer]) => ({ vector, layer }));
  await state.ps.setMonitor(entries);
  renderColourSelect();
  renderTraitScores(null);
}

function renderColourSelect() {
  const select = $('colour-trait');
  const before = select.value;
  select.replaceChildren(
    h('option', { value: '' }, 'no colour'),
    ...[...state.monitor.keys()].map((id, i) => h('option', { value: i }, vectorName(state.vectors.find((v) => v.id === id)))),
  );
  select.value = before !== '' && Number(before) < state.monitor.size ? before : state.monitor.size > 0 ? '0' : '';
}

async function applySteering() {
  const positions = $('steer-positions').value;
  const entries = [...state.steer]
    .filter(([, s]) => s.alpha !== 0)
    .map(([vector, s]) => ({ vector, layer: s.layer, alpha: s.alpha, positions }));
  try {
    await state.ps.setSteering(entries);
    $('steer-summary').textContent = entries.length
      ? `Next reply steered: ${entries.map((e) => `${vectorName(state.vectors.find((v) => v.id === e.vector))} ${signed(e.alpha, 1)} at layer ${e.layer}`).join('; ')}.`
      : 'Steering off.';
    $('steer-summary').classList.remove('error');
  } catch (err) {
    reportError('Steering', err, $('steer-summary'));
  }
}

function renderVectors() {
  const body = $('vector-table').tBodies[0];
  if (state.vectors.length === 0) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No vectors loaded. Import a .gguf file or extract one.')));
  } else {
    body.replaceChildren(...state.vectors.map(vectorRow));
  }
  renderSteerList();
  renderScreenVectors();
}

function layerSelect(v, value, label, onChange) {
  const sel = h('select', { 'aria-label': label, onchange: (e) => onChange(Number(e.target.value)) });
  for (let l = 0; l <= v.layers; l++) sel.append(h('option', { value: l }, l === v.layer ? `${l} (recommended)` : String(l)));
  sel.value = String(value);
  return sel;
}

function vectorRow(v) {
  const monitored = state.monitor.has(v.id);
  const check = h('input', {
    type: 'checkbox',
    checked: monitored,
    'aria-label': `Monitor ${vectorName(v)}`,
    onchange: async (e) => {
      if (e.target.checked) state.monitor.set(v.id, state.monitor.get(v.id) ?? defaultLayer(v));
      else state.monitor.delete(v.id);
      try {
        await applyMonitor();
        $('vector-status').textContent = '';
      } catch (err) {
        state.monitor.delete(v.id);
        e.target.checked = false;
        reportError('Monitor', err, $('vector-status'));
      }
    },
  });
  const layer = layerSelect(v, state.monitor.get(v.id) ?? defaultLayer(v), `Monitor layer of ${vectorName(v)}`, async (l) => {
    if (!state.monitor.has(v.id)) return;
    state.monitor.set(v.id, l);
    await applyMonitor().catch((err) => reportError('Monitor', err, $('vector-status')));
  });
  return h(
    'tr',
    { 'data-vector': v.id },
    h('th', { scope: 'row', title: v.description ?? '' }, vectorName(v)),
    h('td', {}, v.mode ?? '–'),
    h('td', {}, v.counts ? `${v.counts[0]} + ${v.counts[1]}` : '–'),
    h('td', {}, v.layer === null ? 'not evaluated' : `layer ${v.layer}${v.alpha !== null ? `, alpha ${fmt(v.alpha, 1)}` : ''}`),
    h('td', {}, v.calibrated ? 'yes' : 'no'),
    h('td', {}, check),
    h('td', {}, layer),
    h(
      'td',
      {},
      h('button', { type: 'button', 'data-testid': 'vector-export', onclick: () => exportVector(v) }, 'Export'),
      ' ',
      h('button', { type: 'button', onclick: () => removeVector(v) }, 'Remove'),
    ),
  );
}

async function exportVector(v) {
  try {
    const bytes = await state.ps.exportVector(v.id);
    download(bytes, `${v.trait ?? 'vector'}.gguf`, 'application/octet-stream');
    $('vector-status').textContent = `Exported ${vectorName(v)} (${bytes.length} bytes).`;
  } catch (err) {
    reportError('Export', err, $('vector-status'));
  }
}

async function removeVector(v) {
  try {
    await state.ps.removeVector(v.id);
    state.monitor.delete(v.id);
    state.steer.delete(v.id);
    state.vectors = await state.ps.vectors();
    renderVectors();
    await applyMonitor();
    await applySteering();
  } catch (err) {
    reportError('Remove', err, $('vector-status'));
  }
}

/** Adds a new vector to the page; monitors it when it has a recommended layer (and room is left). */
async function vectorAdded(info) {
  state.vectors = await state.ps.vectors();
  if (info.layer !== null && info.calibrated) {
    state.monitor.set(info.id, info.layer);
    try {
      await applyMonitor();
    } catch (err) {
      state.monitor.delete(info.id);
      reportError('Monitor', err, $('vector-status'));
    }
  }
  renderVectors();
}

async function importVector(e) {
  const file = e.target.files[0];
  if (!file) return;
  const status = $('vector-status');
  status.classList.remove('error');
  status.textContent = `Importing ${file.name}…`;
  try {
    if (!state.model) throw new Error('load a model first: a vector belongs to one model');
    const info = await state.ps.importVector(file);
    restoreStatus();
    await vectorAdded(info);
    status.textContent = `Imported ${file.name} as ${vectorName(info)}${info.layer === null ? ' (no recommended layer: pick one to monitor it)' : ''}.`;
  } catch (err) {
    reportError(`Importing ${file.name}`, err, status);
  } finally {
    e.target.value = '';
  }
}

function renderSteerList() {
  const box = $('steer-list');
  if (state.vectors.length === 0) {
    box.replaceChildren(h('p', { class: 'muted' }, 'No vectors loaded.'));
    return;
  }
  box.replaceChildren(
    ...state.vectors.map((v) => {
      const s = state.steer.get(v.id) ?? { alpha: 0, layer: defaultLayer(v) };
      const id = `steer-${v.id}`;
      const out = h('output', { for: id, class: 'alpha' }, signed(s.alpha, 1));
      const slider = h('input', {
        type: 'range',
        id,
        min: -16,
        max: 16,
        step: 0.5,
        value: s.alpha,
        'data-testid': 'steer-slider',
        'data-vector': v.id,
        'aria-valuetext': `alpha ${signed(s.alpha, 1)}`,
        oninput: (e) => {
          out.textContent = signed(Number(e.target.value), 1);
          e.target.setAttribute('aria-valuetext', `alpha ${out.textContent}`);
        },
        onchange: async (e) => {
          const cur = state.steer.get(v.id) ?? { alpha: 0, layer: defaultLayer(v) };
          state.steer.set(v.id, { ...cur, alpha: Number(e.target.value) });
          await applySteering();
        },
      });
      const layer = layerSelect(v, s.layer, `Steering layer of ${vectorName(v)}`, async (l) => {
        const cur = state.steer.get(v.id) ?? { alpha: 0, layer: l };
        state.steer.set(v.id, { ...cur, layer: l });
        await applySteering();
      });
      return h(
        'div',
        { class: 'steer-row' },
        h('label', { for: id }, vectorName(v)),
        h('span', { class: 'muted' }, `-${v.trait ?? ''}`),
        slider,
        h('span', { class: 'muted' }, `+${v.trait ?? ''}`),
        out,
        h('label', {}, 'layer ', layer),
      );
    }),
  );
}

async function compare(e) {
  e.preventDefault();
  const text = $('compare-input').value.trim();
  if (!text || !state.model) return;
  restoreStatus();
  const messages = withSystem([{ role: 'user', content: text }]);
  const options = { ...chatOptions() }; // one seed for both sides
  $('compare-run').disabled = true;
  $('compare-stop').disabled = false;
  const run = async (target, unsteered) => {
    target.replaceChildren();
    target.removeAttribute('data-done');
    target.setAttribute('aria-busy', 'true');
    const r = await state.ps.chat(messages, { ...options, unsteered }, (t) => target.append(tokenSpan(t)));
    target.removeAttribute('aria-busy');
    target.dataset.text = r.text;
    target.dataset.done = 'true';
    if (!unsteered && !r.steered) target.append(h('p', { class: 'muted' }, '(no steering is set: move a slider)'));
  };
  try {
    await run($('compare-plain'), true);
    await run($('compare-steered'), false);
  } catch (err) {
    reportError('Compare', err, $('compare-steered'));
  } finally {
    $('compare-run').disabled = false;
    $('compare-stop').disabled = true;
  }
}

// ---- extract -------------------------------------------------------------------------------------------------

function fillDefinition(def) {
  $('def-name').value = def?.name ?? '';
  $('def-description').value = def?.description ?? '';
  $('def-pos-adj').value = def?.positive_adjective ?? '';
  $('def-neg-adj').value = def?.negative_adjective ?? '';
  $('def-instructions').value = (def?.instructions ?? []).map((p) => `${p.pos} | ${p.neg}`).join('\n');
  $('def-questions').value = (def?.extraction_questions ?? []).join('\n');
  $('def-eval').value = (def?.evaluation_questions ?? []).map((q) => `${q.question} | ${q.consistent} | ${q.inconsistent}`).join('\n');
}

const lines = (id) => $(id).value.split('\n').map((l) => l.trim()).filter(Boolean);

/** The definition in the form; throws with the line that is wrong. */
function readDefinition() {
  const split = (line, n, what, i) => {
    const parts = line.split('|').map((p) => p.trim());
    if (parts.length !== n || parts.some((p) => !p)) throw new Error(`${what}, line ${i + 1}: expected ${n} parts separated by "|"`);
    return parts;
  };
  return {
    name: $('def-name').value.trim(),
    description: $('def-description').value.trim(),
    positive_adjective: $('def-pos-adj').value.trim(),
    negative_adjective: $('def-neg-adj').value.trim(),
    instructions: lines('def-instructions').map((l, i) => {
      const [pos, neg] = split(l, 2, 'Instruction pairs', i);
      return { pos, neg };
    }),
    extraction_questions: lines('def-questions'),
    evaluation_questions: lines('def-eval').map((l, i) => {
      const [question, consistent, inconsistent] = split(l, 3, 'Evaluation questions', i);
      return { question, consistent, inconsistent };
    }),
  };
}

function optionalInt(id) {
  const v = $(id).value.trim();
  return v === '' ? undefined : Math.max(1, Math.round(Number(v)));
}

function numberList(id) {
  const v = $(id).value.trim();
  if (!v) return undefined;
  const list = v.split(/[\s,]+/).filter(Boolean).map(Number);
  if (list.some((x) => !Number.isFinite(x))) throw new Error(`"${v}" is not a list of numbers`);
  return list;
}

const clean = (o) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));

let extractController = null;

async function runExtraction(e) {
  e.preventDefault();
  const status = $('extract-status');
  status.classList.remove('error');
  if (!state.model) return reportError('Extract', new Error('load a model first'), status);
  let def, options, evalOptions;
  try {
    def = readDefinition();
    options = clean({
      mode: $('extract-mode').value,
      pairs: optionalInt('extract-pairs'),
      questions: optionalInt('extract-questions'),
      rollouts: optionalInt('extract-rollouts'),
      max_tokens: optionalInt('extract-max-tokens'),
      calibration_items: optionalInt('extract-neutral'),
    });
    evalOptions = clean({
      questions: optionalInt('eval-questions'),
      pairs: optionalInt('eval-pairs'),
      layers: numberList('eval-layers'),
      alphas: numberList('eval-alphas'),
      neutral_items: optionalInt('extract-neutral'),
    });
  } catch (err) {
    return reportError('Definition', err, status);
  }
  restoreStatus();
  extractController = new AbortController();
  $('extract-run').disabled = true;
  $('extract-cancel').disabled = false;
  const bar = $('extract-progress');
  const progress = (p) => {
    bar.value = p.total > 0 ? p.done / p.total : 0;
    status.textContent = `${p.stage}: ${p.done} of ${p.total}`;
  };
  try {
    status.textContent = 'extracting…';
    let vector = await state.ps.extract(def, { ...options, signal: extractController.signal }, progress);
    let report = null;
    if ($('extract-evaluate').checked) {
      status.textContent = 'evaluating…';
      report = await state.ps.evaluate(def, vector.id, { ...evalOptions, signal: extractController.signal }, progress);
      vector = (await state.ps.vectors()).find((v) => v.id === vector.id) ?? vector;
    }
    state.extracted = { vector, report };
    // For embedders' and the browser test's inspection: the latest evaluation report.
    window.personascopeLastReport = report;
    await vectorAdded(vector);
    renderExtraction(vector, report);
    bar.value = 1;
    status.textContent = `done: ${vectorName(vector)} added to the vectors${vector.layer !== null ? ' and monitored' : ''}.`;
  } catch (err) {
    if (err.message === 'cancelled') status.textContent = 'Extraction cancelled.';
    else reportError('Extraction', err, status);
  } finally {
    $('extract-run').disabled = false;
    $('extract-cancel').disabled = true;
    extractController = null;
  }
}

function renderExtraction(vector, report) {
  $('extract-result').hidden = false;
  $('extract-result-title').textContent = `${vectorName(vector)}: ${vector.mode} vector from ${vector.counts ? `${vector.counts[0]} + ${vector.counts[1]}` : '?'} samples`;
  if (report) {
    const r = report.recommended;
    $('extract-recommended').textContent = `Recommended: layer ${r.layer}${r.alpha !== null ? `, alpha ${fmt(r.alpha, 1)}` : ''}, screening layer ${r.screen_layer}. ${r.reason}`;
    // Cohen's d rather than AUROC: with a few evaluation questions AUROC saturates at 1 on most layers.
    $('layer-chart-caption').textContent = "Separation per layer: effect size (Cohen's d) of held-out prompts with the positive vs the negative instruction; the recommended layer is red";
    const ds = report.layers.map((l) => l.effect_size).filter((d) => d !== null);
    barChart(
      $('layer-chart'),
      report.layers.map((l) => ({ x: l.layer, y: l.effect_size, note: `AUROC ${fmt(l.auroc, 2)}, answer AUROC ${fmt(l.response_auroc, 2)}` })),
      { min: Math.min(0, ...ds), max: Math.max(1, ...ds), mark: r.layer, label: "Cohen's d" },
    );
    const t = $('steer-sweep');
    t.replaceChildren(
      h('caption', {}, 'Steering sweep'),
      h('thead', {}, h('tr', {}, ...['layer', 'alpha', 'margin change', 'wrong way', 'perplexity cost'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, ...report.steering.map((s) => h('tr', {}, h('td', {}, s.layer), h('td', {}, fmt(s.alpha, 1)), h('td', {}, signed(s.margin_change, 3)), h('td', {}, `${fmt(s.wrong_way * 100, 0)}%`), h('td', {}, `${signed(s.ppl_cost_pct, 1)}%`)))),
    );
  } else {
    $('extract-recommended').textContent = 'Not evaluated: choose a layer in Vectors to monitor it (0.5-0.7 of the depth is a good start).';
    $('layer-chart-caption').textContent = 'Norm of the direction per layer (not a separation measure: evaluate to choose a layer)';
    const max = Math.max(...vector.norms);
    barChart($('layer-chart'), vector.norms.map((n, i) => ({ x: i, y: n })), { min: 0, max, label: 'norm' });
    $('steer-sweep').replaceChildren();
  }
}

function barChart(box, points, { min, max, mark = null, ref = null, label }) {
  const W = 640, H = 180, L = 36, B = 22, T = 8;
  const n = points.length;
  const bw = (W - L - 6) / Math.max(1, n);
  const y = (v) => T + (1 - (v - min) / (max - min || 1)) * (H - T - B);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${label} per layer` });
  for (const v of [min, (min + max) / 2, max]) root.append(svg('text', { x: L - 4, y: y(v) + 4, class: 'tick', 'text-anchor': 'end' }, fmt(v, max >= 10 ? 0 : 2)));
  if (ref !== null) root.append(svg('line', { x1: L, x2: W - 6, y1: y(ref), y2: y(ref), class: 'axis dashed' }));
  points.forEach((p, i) => {
    if (p.y === null || p.y === undefined) return; // e.g. the embeddings, where nothing separates yet
    const zero = y(Math.max(min, 0));
    const rect = svg('rect', { x: L + i * bw + 1, y: Math.min(y(p.y), zero), width: Math.max(1, bw - 2), height: Math.abs(y(p.y) - zero), class: p.x === mark ? 'bar mark' : 'bar', 'data-layer': p.x });
    rect.append(svg('title', {}, `layer ${p.x}: ${label} ${fmt(p.y, 3)}${p.note ? `; ${p.note}` : ''}`));
    root.append(rect);
    if (n <= 40 && (i % 5 === 0 || p.x === mark)) root.append(svg('text', { x: L + i * bw + bw / 2, y: H - 6, class: 'tick', 'text-anchor': 'middle' }, p.x));
  });
  root.append(svg('text', { x: 2, y: H - 6, class: 'tick' }, 'layer'));
  box.replaceChildren(root);
}

// ---- screen --------------------------------------------------------------------------------------------------

function renderScreenVectors() {
  const sel = $('screen-vector');
  const before = sel.value;
  sel.replaceChildren(...state.vectors.map((v) => h('option', { value: v.id }, vectorName(v))));
  if (state.vectors.some((v) => String(v.id) === before)) sel.value = before;
}

let screenController = null;

async function runScreen(file) {
  const status = $('screen-status');
  status.classList.remove('error');
  if (!file) return;
  if (!state.model) return reportError('Screen', new Error('load a model first'), status);
  if (state.vectors.length === 0) return reportError('Screen', new Error('import or extract a trait vector first'), status);
  restoreStatus();
  const layer = $('screen-layer').value.trim();
  const options = { cheap: $('screen-cheap').checked };
  if (layer !== '') options.layer = Number(layer);
  screenController = new AbortController();
  $('screen-cancel').disabled = false;
  $('screen-result').hidden = true;
  $('screen-errors').hidden = true;
  const bar = $('screen-progress');
  bar.value = 0;
  status.textContent = `reading ${file.name}…`;
  try {
    const result = await state.ps.screen(Number($('screen-vector').value), file, { ...options, signal: screenController.signal }, (p) => {
      bar.value = p.total > 0 ? p.done / p.total : 0;
      status.textContent = `${file.name}: ${p.done} of ${p.total} samples`;
    });
    bar.value = 1;
    state.screen = { result, file: file.name, sort: { key: 'rank', dir: 1 } };
    status.textContent = `${file.name}: ${result.samples.length} samples scored${result.cancelled ? ' before the cancel' : ''}, ${result.errors.length} ${result.errors.length === 1 ? 'line' : 'lines'} could not be read.`;
    renderScreen();
  } catch (err) {
    if (err.message === 'cancelled') status.textContent = `Screening of ${file.name} cancelled.`;
    else reportError(`Screening ${file.name}`, err, status);
  } finally {
    $('screen-cancel').disabled = true;
    screenController = null;
  }
}

const COLUMNS = [
  { key: 'rank', label: 'Rank', value: (s) => s.rank },
  { key: 'line', label: 'Line', value: (s) => s.line },
  { key: 'score', label: 'Score', value: (s) => s.score },
  { key: 'z', label: 'z', value: (s) => s.z ?? -Infinity },
  { key: 'prompt', label: 'Prompt', value: (s) => promptText(s) },
  { key: 'response', label: 'Response', value: (s) => s.response },
];

function promptText(s) {
  return s.prompt.filter((m) => m.role !== 'system').map((m) => m.content).join(' / ');
}

/** Flags the samples the calibration calls unusual (z >= 2) if it can, else those above mean + 1 sd. */
function defaultThreshold(samples) {
  const floor3 = (x) => Math.floor(x * 1000) / 1000; // shown with 3 decimals: never round a sample out
  const unusual = samples.filter((s) => s.z !== null && s.z >= 2).map((s) => s.score);
  if (unusual.length > 0) return floor3(Math.min(...unusual));
  const scores = samples.map((s) => s.score);
  const mean = scores.reduce((a, b) => a + b, 0) / scores.length;
  const sd = Math.sqrt(scores.reduce((a, b) => a + (b - mean) ** 2, 0) / scores.length);
  return floor3(mean + sd);
}

function renderScreen() {
  const { result } = state.screen;
  const errors = $('screen-error-list');
  // Samples the engine could not screen (e.g. longer than the context) are listed with the unreadable lines.
  const skipped = (result.skipped ?? []).map((k) => ({ line: k.line, message: `skipped: ${k.message ?? k.reason ?? k.error ?? ''}` }));
  const problems = [...result.errors, ...skipped].sort((a, b) => a.line - b.line);
  errors.replaceChildren(...problems.map((e) => h('li', { 'data-line': e.line }, h('strong', {}, `Line ${e.line}: `), e.message)));
  $('screen-errors').hidden = problems.length === 0;
  if (result.samples.length === 0) return;
  $('screen-result').hidden = false;
  $('screen-summary').textContent =
    `Layer ${result.layer}, ${result.method}. Data-set score (mean): ${fmt(result.dataset_score, 3)}. ` +
    'Higher scores express the trait more; the table starts with the most trait-like samples.';
  $('screen-threshold').value = String(defaultThreshold(result.samples));
  renderScreenTable();
}

/** The share of a standard normal above `z` (Simpson's rule over the density; the expected false-positive rate
 *  of a threshold when neutral scores are normal). */
function normalTail(z) {
  if (!Number.isFinite(z)) return z > 0 ? 0 : 1;
  const a = Math.abs(z), steps = 4000, h = 12 / steps;
  const pdf = (x) => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
  let sum = pdf(a) + pdf(a + 12);
  for (let i = 1; i < steps; i++) sum += pdf(a + i * h) * (i % 2 ? 4 : 2);
  const upper = (sum * h) / 3;
  return z >= 0 ? upper : 1 - upper;
}

function flagged() {
  const t = Number($('screen-threshold').value);
  return new Set(state.screen.result.samples.filter((s) => s.score >= t).map((s) => s.line));
}

function renderScreenTable() {
  const { result, sort } = state.screen;
  const flags = flagged();
  const nul = result.null;
  const fpr = nul ? normalTail((Number($('screen-threshold').value) - nul.mean) / nul.std) : null;
  $('screen-count').textContent = `${flags.size} of ${result.samples.length} samples flagged` +
    (fpr === null
      ? ' (the vector has no calibration: no false-positive estimate)'
      : `; about ${fmt(100 * fpr, 1)}% of neutral samples would be (expected false positives, normal approximation over ${nul.samples} ${nul.of})`);
  histogram($('screen-histogram'), result.samples.map((s) => s.score), Number($('screen-threshold').value));
  const table = $('screen-table');
  table.tHead.rows[0].replaceChildren(
    ...COLUMNS.map((c) => {
      const active = sort.key === c.key;
      return h(
        'th',
        { scope: 'col', 'aria-sort': active ? (sort.dir > 0 ? 'ascending' : 'descending') : 'none' },
        h('button', {
          type: 'button',
          class: 'sort',
          'data-sort': c.key,
          onclick: () => {
            state.screen.sort = { key: c.key, dir: active ? -sort.dir : c.key === 'score' || c.key === 'z' ? -1 : 1 };
            renderScreenTable();
          },
        }, c.label, active ? (sort.dir > 0 ? ' ▲' : ' ▼') : ''),
      );
    }),
    h('th', { scope: 'col' }, 'Flagged'),
  );
  const col = COLUMNS.find((c) => c.key === sort.key);
  const rows = [...result.samples].sort((a, b) => {
    const x = col.value(a), y = col.value(b);
    return (typeof x === 'string' ? x.localeCompare(y) : x - y) * sort.dir;
  });
  table.tBodies[0].replaceChildren(
    ...rows.map((s) =>
      h(
        'tr',
        { 'data-line': s.line, class: flags.has(s.line) ? 'flagged' : '' },
        h('td', {}, s.rank),
        h('td', {}, s.line),
        h('td', {}, fmt(s.score, 3)),
        h('td', {}, signed(s.z)),
        h('td', { class: 'text' }, promptText(s)),
        h('td', { class: 'text' }, s.response),
        h('td', {}, flags.has(s.line) ? 'yes' : ''),
      ),
    ),
  );
}

function histogram(box, values, threshold) {
  const W = 640, H = 140, L = 30, B = 22, T = 6, bins = Math.min(30, Math.max(5, Math.ceil(Math.sqrt(values.length) * 2)));
  let lo = Math.min(...values, threshold), hi = Math.max(...values, threshold);
  if (hi === lo) { lo -= 1; hi += 1; }
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor(((v - lo) / (hi - lo)) * bins))]++;
  const top = Math.max(...counts);
  const bw = (W - L - 6) / bins;
  const x = (v) => L + ((v - lo) / (hi - lo)) * (W - L - 6);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'histogram of the sample scores' });
  counts.forEach((c, i) => {
    const hgt = (c / top) * (H - T - B);
    const rect = svg('rect', { x: L + i * bw + 1, y: H - B - hgt, width: Math.max(1, bw - 2), height: hgt, class: lo + ((i + 1) / bins) * (hi - lo) >= threshold ? 'bar mark' : 'bar' });
    rect.append(svg('title', {}, `${c} samples from ${fmt(lo + (i / bins) * (hi - lo), 3)} to ${fmt(lo + ((i + 1) / bins) * (hi - lo), 3)}`));
    root.append(rect);
  });
  root.append(svg('line', { x1: x(threshold), x2: x(threshold), y1: T, y2: H - B, class: 'threshold' }));
  root.append(svg('text', { x: L, y: H - 6, class: 'tick' }, fmt(lo, 2)));
  root.append(svg('text', { x: W - 6, y: H - 6, class: 'tick', 'text-anchor': 'end' }, fmt(hi, 2)));
  root.append(svg('text', { x: L - 4, y: T + 8, class: 'tick', 'text-anchor': 'end' }, top));
  box.replaceChildren(root);
}

async function exportScreen(which) {
  const { result, file } = state.screen;
  const flags = flagged();
  const base = file.replace(/\.[^.]*$/, '');
  try {
    if (which === 'csv') {
      const header = ['rank', 'line', 'score', 'z', 'projection', 'own_projection', 'flagged', 'prompt', 'response'];
      const rows = [...result.samples]
        .sort((a, b) => a.rank - b.rank)
        .map((s) => [s.rank, s.line, s.score, s.z ?? '', s.projection, s.own_projection ?? '', flags.has(s.line) ? 'yes' : 'no', promptText(s), s.response].map(String));
      download(await state.ps.csv(header, rows), `${base}-screening.csv`, 'text/csv');
    } else {
      const keep = which === 'kept';
      const pick = result.samples.filter((s) => flags.has(s.line) !== keep).map((s) => s.line).sort((a, b) => a - b);
      download(await state.ps.exportSamples(pick), `${base}-${which}.jsonl`, 'application/jsonl');
    }
  } catch (err) {
    reportError('Export', err, $('screen-status'));
  }
}

// ---- start ---------------------------------------------------------------------------------------------------

function wire() {
  setupTabs();
  $('model-form').addEventListener('submit', loadModel);
  $('device-lost-reload').addEventListener('click', () => window.location.reload());
  $('model-cancel').addEventListener('click', () => loadController?.abort());
  $('model-file').addEventListener('change', () => { document.querySelector('input[name="source"][value="file"]').checked = true; });
  $('model-url').addEventListener('input', () => { document.querySelector('input[name="source"][value="url"]').checked = true; });
  $('cache-clear').addEventListener('click', async () => {
    await state.ps.clearCache().catch((err) => reportError('Cache', err));
    await renderCache();
  });

  $('chat-form').addEventListener('submit', sendChat);
  $('chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      void sendChat();
    }
  });
  $('chat-stop').addEventListener('click', () => state.ps.abort());
  $('chat-new').addEventListener('click', newConversation);
  $('colour-trait').addEventListener('change', recolourAll);

  $('steer-positions').addEventListener('change', applySteering);
  $('steer-reset').addEventListener('click', async () => {
    for (const [id, s] of state.steer) state.steer.set(id, { ...s, alpha: 0 });
    renderSteerList();
    await applySteering();
  });
  $('compare-form').addEventListener('submit', compare);
  $('compare-stop').addEventListener('click', () => state.ps.abort());

  $('extract-trait').addEventListener('change', (e) => fillDefinition(state.traits.find((t) => t.name === e.target.value) ?? null));
  $('extract-form').addEventListener('submit', runExtraction);
  $('extract-cancel').addEventListener('click', () => extractController?.abort());
  $('extract-save').addEventListener('click', () => state.extracted && exportVector(state.extracted.vector));

  $('screen-file').addEventListener('change', (e) => {
    void runScreen(e.target.files[0]).finally(() => { e.target.value = ''; });
  });
  const zone = $('drop-zone');
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    void runScreen(e.dataTransfer.files[0]);
  });
  $('screen-cancel').addEventListener('click', () => screenController?.abort());
  $('screen-threshold').addEventListener('input', () => state.screen && renderScreenTable());
  $('export-kept').addEventListener('click', () => exportScreen('kept'));
  $('export-flagged').addEventListener('click', () => exportScreen('flagged'));
  $('export-csv').addEventListener('click', () => exportScreen('csv'));

  $('vector-import').addEventListener('change', importVector);
}

async function start() {
  wire();
  setupTokenTip();
  renderColourSelect();
  renderVectors();
  renderScorePlot([]);
  const gpu = await Personascope.checkWebGPU();
  document.body.dataset.webgpu = String(gpu.ok);
  if (!gpu.ok) {
    $('no-webgpu').hidden = false;
    $('no-webgpu-reason').textContent = gpu.reason;
    setStatus('WebGPU is not available: the model cannot run in this browser (see above).', 'error');
    $('model-load').disabled = true;
  }
  state.ps = new Personascope({ onDeviceLost: showDeviceLost });
  window.personascope = state.ps; // for the console and the browser tests
  try {
    state.traits = await state.ps.builtinTraits();
  } catch (err) {
    setStatus(`The engine did not start: ${err.message}`, 'error');
    $('model-load').disabled = true;
    return;
  }
  const sel = $('extract-trait');
  sel.replaceChildren(...state.traits.map((t) => h('option', { value: t.name }, `${t.name}: ${t.description}`)), h('option', { value: '' }, 'Your own trait…'));
  fillDefinition(state.traits[0]);
  await renderCache();
  document.body.dataset.ready = 'true';
}

start().catch((err) => setStatus(`The page failed to start: ${err.message}`, 'error'));
