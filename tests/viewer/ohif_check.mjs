// Opens one study in OHIF v3 with the system Chromium and reports what a reader would see of
// cephnode's objects. Used by tests/test_viewer_ohif.py, which asserts on the JSON it prints.
//
//   node ohif_check.mjs --base URL --study UID --series N --out DIR --chromium PATH [--budget-s S]
//
// Stages, each on a fresh page load so that a crash in one cannot hide another:
//   sr       double-click the SR: DICOMSRDisplay annotations, the SVG text OHIF drew, errors
//   tracked  the same, then 'Yes' to tracking: OHIF's measurements (tool, label, value), panel, SVG text
//   seg  double-click the SEG (accepting OHIF's "load?" prompt): the segmentations it made
//   sc   double-click the secondary capture: it becomes the viewport's image
// Screenshots: DIR/<stage>.png (window) and DIR/<stage>-viewport.png. stdout: one JSON object.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, v, i, a) =>
  (i % 2 === 0 ? acc.concat([[v.replace(/^--/, ''), a[i + 1]]]) : acc), []));
const moduleDir = process.env.CEPHNODE_VIEWER_NODE_MODULES;
const { default: puppeteer } = await import(path.join(moduleDir, 'puppeteer-core/lib/esm/puppeteer/puppeteer-core.js'));

const OUT = path.resolve(args.out);
fs.mkdirSync(OUT, { recursive: true });
const URL_ = `${args.base}/viewer?StudyInstanceUIDs=${encodeURIComponent(args.study)}`;
const STAGE_MS = 60000;
const sleep = ms => new Promise(r => setTimeout(r, ms));
const report = { stages: {}, chromium: null };
let stage = 'boot';
const problems = [];   // error boundaries, page errors, console errors: {stage, kind, text}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'cephnode-ohif-'));
const browser = await puppeteer.launch({
  executablePath: args.chromium, headless: true, userDataDir: profile,
  // SwiftShader: WebGL without a GPU; loopback only (OHIF would fetch fonts etc. otherwise)
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
    '--window-size=1600,1100', '--no-first-run', '--disable-extensions', '--disable-background-networking',
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1'],
  defaultViewport: { width: 1600, height: 1100 }, protocolTimeout: 90000,
});
const budget = setTimeout(() => finish('budget ran out'), Number(args['budget-s'] || 240) * 1000);

async function finish(error) {
  clearTimeout(budget);
  report.problems = problems;
  if (error) report.error = String(error);
  try { await browser.close(); } catch (e) { /* already gone */ }
  fs.rmSync(profile, { recursive: true, force: true });
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exit(0);
}

report.chromium = await browser.version();
const page = await browser.newPage();
page.setDefaultTimeout(STAGE_MS);
await page.evaluateOnNewDocument(() => {
  localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));   // no onboarding overlay
});
page.on('console', msg => {
  const text = msg.text();
  if (/Error Boundary/.test(text)) problems.push({ stage, kind: 'error-boundary', text: text.slice(0, 2000) });
  else if (msg.type() === 'error') problems.push({ stage, kind: 'console-error', text: text.slice(0, 2000) });
});
page.on('pageerror', err => problems.push({ stage, kind: 'page-error', text: String(err.message).slice(0, 2000) }));

async function until(fn, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await fn().catch(() => null);
    if (v) return v;
    await sleep(250);
  }
  return null;
}

// the SVG annotation layer stops changing: drawing has finished
async function settled(ms = 8000) {
  let prev = -1, same = 0;
  await until(async () => {
    const n = await page.evaluate(() => [...document.querySelectorAll('.svg-layer *')].length);
    same = n === prev ? same + 1 : 0;
    prev = n;
    return same >= 4;
  }, ms);
}

async function open(name) {
  stage = name;
  await page.goto(URL_, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(n => window.services && new Set(window.services.displaySetService
    .getActiveDisplaySets().map(d => d.SeriesInstanceUID)).size >= n, {}, Number(args.series));
  // the first image is on the canvas once the overlay shows its window
  await page.waitForFunction(() => /W:/.test(document.querySelector('[data-cy="viewport-overlay-bottom-left"]')?.innerText || ''));
}

// kind: 'SR', 'SEG' or 'SC' (a secondary capture: modality OT, or an SC SOP class)
async function doubleClick(kind) {
  const ds = await page.evaluate(k => {
    const sopClass = d => d.SOPClassUID || d.instances?.[0]?.SOPClassUID || '';
    const d = window.services.displaySetService.getActiveDisplaySets().find(x => (k === 'SC'
      ? x.Modality === 'OT' || sopClass(x).startsWith('1.2.840.10008.5.1.4.1.1.7') : x.Modality === k));
    return d ? { uid: d.displaySetInstanceUID, modality: d.Modality, unsupported: !!d.unsupported } : null;
  }, kind);
  if (!ds) throw new Error(`no ${kind} display set`);
  const thumb = await page.waitForSelector(`#thumbnail-${ds.uid}`);
  await thumb.click({ count: 2 });
  return ds;
}

async function shots(name) {
  await page.screenshot({ path: path.join(OUT, `${name}.png`) });
  const vp = await page.$('[data-cy="viewport-grid"]');
  if (vp) await vp.screenshot({ path: path.join(OUT, `${name}-viewport.png`) });
}

async function clickYesIfAsked() {
  const yes = await page.$('::-p-text(Yes)');
  if (yes) { await yes.click().catch(() => {}); return true; }
  return false;
}

async function run(name, fn) {
  const t0 = Date.now();
  try {
    report.stages[name] = await fn();
  } catch (e) {
    report.stages[name] = { error: String(e.message || e) };
    await shots(name).catch(() => {});
  }
  report.stages[name].seconds = (Date.now() - t0) / 1000;
}

// what the SVG annotation layer shows: label texts and boxes (CSS px, relative to the layer)
const svgState = () => page.evaluate(() => {
  const textOf = t => [...t.querySelectorAll('tspan')].map(s => s.textContent).join('\n') || t.textContent;
  const layer = document.querySelector('.svg-layer')?.getBoundingClientRect();
  const texts = [...document.querySelectorAll('.svg-layer text')];
  return {
    svg_texts: texts.map(textOf),
    svg_text_boxes: texts.map(t => {
      const r = t.getBoundingClientRect();
      return { text: textOf(t), x: r.left - layer.left, y: r.top - layer.top, w: r.width, h: r.height };
    }),
    svg_size: layer ? { w: layer.width, h: layer.height } : null,
    svg_lines: document.querySelectorAll('.svg-layer line, .svg-layer polyline').length,
  };
});

await run('sr', async () => {
  await open('sr');
  const ds = await doubleClick('SR');
  await until(() => page.evaluate(() => window.cornerstoneTools.annotation.state.getAllAnnotations()
    .some(a => a.metadata?.toolName === 'DICOMSRDisplay')), STAGE_MS);
  // OHIF offers to track the SR's measurements when it can read them back as its own tools
  const offered = await until(() => page.$('::-p-text(Yes)'), 15000);
  await settled();
  const before = await page.evaluate(uid => {
    const anns = window.cornerstoneTools.annotation.state.getAllAnnotations()
      .filter(a => a.metadata?.toolName === 'DICOMSRDisplay');
    const drawn = new Set([...document.querySelectorAll('.svg-layer [data-annotation-uid]')]
      .map(e => e.getAttribute('data-annotation-uid')));
    const d = window.services.displaySetService.getDisplaySetByUID(uid);
    return {
      annotations: anns.map(a => ({ type: a.metadata.graphicType, drawn: drawn.has(a.annotationUID) })),
      sr_measurements: d.measurements?.length ?? null,
      sr_measurements_loaded: d.measurements?.filter(m => m.loaded).length ?? null,
      rehydratable: !!d.isRehydratable,
    };
  }, ds.uid);
  Object.assign(before, await svgState(), { offered_tracking: !!offered });
  await shots('sr');
  return before;
});

await run('tracked', async () => {
  // the same SR, and "Yes" to "continue tracking measurements for this study?"
  await open('tracked');
  await doubleClick('SR');
  const yes = await until(() => page.$('::-p-text(Yes)'), STAGE_MS);
  if (!yes) throw new Error('OHIF did not offer to track the measurements');
  await yes.click();
  await until(() => page.evaluate(() => window.services.measurementService.getMeasurements().length > 0), STAGE_MS);
  // the measurement panel, opened if the layout keeps it closed
  if (!(await page.$('[data-cy="trackedMeasurements-panel"]'))) {
    const btn = await page.$('[data-cy="trackedMeasurements-btn"]');
    if (btn) await btn.click();
    await page.waitForSelector('[data-cy="trackedMeasurements-panel"]', { timeout: 10000 }).catch(() => {});
  }
  await settled();
  const out = await page.evaluate(() => {
    const panelText = document.querySelector('[data-cy="trackedMeasurements-panel"]')?.innerText || null;
    return {
      measurements: window.services.measurementService.getMeasurements().map(m => ({
        toolName: m.toolName, label: m.label ?? null, primary: m.displayText?.primary ?? [],
        finding: m.finding?.text ?? m.finding?.CodeMeaning ?? null,
        points: (m.points || []).length })),
      panel_header: (panelText || '').match(/Measurements \(\d+\)/)?.[0] ?? null,
      panel_text: panelText,
    };
  });
  Object.assign(out, await svgState());
  await shots('tracked');
  return out;
});

await run('seg', async () => {
  await open('seg');
  await doubleClick('SEG');
  const count = () => page.evaluate(() => window.services.segmentationService.getSegmentations().length);
  await until(async () => (await count()) > 0, STAGE_MS);
  // OHIF previews the SEG in its own viewport and asks whether to open it over the image
  const asked = await until(clickYesIfAsked, 5000);
  await settled(4000);
  const segs = await page.evaluate(() => window.services.segmentationService.getSegmentations().map(s => ({
    label: s.label, segments: Object.values(s.segments || {}).filter(Boolean).map(x => x.label) })));
  await shots('seg');
  return { segmentations: segs, accepted_prompt: !!asked };
});

await run('sc', async () => {
  await open('sc');
  const ds = await doubleClick('SC');
  const shown = await until(() => page.evaluate(uid => {
    for (const v of window.services.viewportGridService.getState().viewports.values()) {
      if ((v.displaySetInstanceUIDs || []).includes(uid)) return true;
    }
    return false;
  }, ds.uid), STAGE_MS);
  // the image itself is on the canvas once the overlay names its series
  await until(() => page.evaluate(() => /tracing sheet/i.test(document.querySelector('[data-cy="viewport-grid"]')?.innerText || '')), 20000);
  await sleep(1500);
  await shots('sc');
  const overlay = await page.evaluate(() => document.querySelector('[data-cy="viewport-grid"]')?.innerText || '');
  return { shown: !!shown, overlay };
});

await finish();
