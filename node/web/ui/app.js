// The AI page (paper Fig. 4): choose images, choose a model, see the lesion marked.
import { ApiError, enc, get, post, signIn } from './api.js';
import { draw, loadImage } from './overlay.js';

const $ = (id) => document.getElementById(id);
const state = { path: [], series: null, images: [], index: 0, models: [], polling: null,
                imageCache: new Map(), browsing: 0 };

function show(section) {
  for (const id of ['login', 'browse', 'status']) $(id).hidden = id !== section;
  $('to-browse').classList.toggle('active', section === 'browse');
  $('to-status').classList.toggle('active', section === 'status');
}

async function guarded(work) {
  try { return await work(); }
  catch (err) {
    if (err instanceof ApiError && err.status === 401) { show('login'); return undefined; }
    $('job').textContent = `error: ${err.message}`;
    throw err;
  }
}

// ---- browsing: hospital › patient › study › series ------------------------------------

const LEVELS = [
  { name: 'Hospitals', load: () => get('/api/hospitals'),
    label: (h) => [h.hospital, `${h.patients} patients · ${h.instances} images`] },
  { name: 'Patients', load: ([h]) => get(`/api/hospitals/${enc(h.hospital)}/patients`),
    label: (p) => [p.patient_name ? `${p.patient_name} (${p.patient_id || '—'})` : p.patient_key,
                   `${p.patient_key.slice(0, 12)}… · ${p.studies} studies · ${p.instances} images`] },
  { name: 'Studies', load: ([h, p]) =>
      get(`/api/hospitals/${enc(h.hospital)}/patients/${enc(p.patient_key)}/studies`),
    label: (s) => [s.description || s.study_uid, `${s.study_date || ''} · ${s.modalities_in_study || ''} · ${s.number_of_instances} images`] },
  { name: 'Series', load: ([, , s]) => get(`/api/studies/${enc(s.study_uid)}/series`),
    label: (s) => [`${s.modality || '?'} ${s.series_number ?? ''} ${s.description || ''}`,
                   `${s.number_of_instances} images · ${s.processed || 0} processed · ${s.blank || 0} blank`] },
];

async function browse() {
  const depth = state.path.length;
  const crumbs = $('crumbs');
  crumbs.replaceChildren();
  LEVELS.slice(0, depth + 1).forEach((level, i) => {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.textContent = i < depth ? LEVELS[i].label(state.path[i])[0] : level.name;
    b.onclick = () => { state.path = state.path.slice(0, i); state.series = null;
                        $('series-view').hidden = true; browse(); };
    li.append(b); crumbs.append(li);
  });
  if (depth >= LEVELS.length) return;
  // the previous level's buttons go at once: a click on one while the next level loads
  // would choose from the wrong level (a study opened as if it were a series)
  const list = $('list');
  if (list.dataset.depth !== String(depth)) list.replaceChildren();  // a refresh keeps them
  list.dataset.depth = String(depth);
  const turn = ++state.browsing;
  const items = await guarded(() => LEVELS[depth].load(state.path));
  if (!items || turn !== state.browsing) return;  // another click moved on meanwhile
  list.replaceChildren();
  for (const item of items) {
    const [title, detail] = LEVELS[depth].label(item);
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.innerHTML = '<span></span><small></small>';
    b.firstChild.textContent = title; b.lastChild.textContent = detail;
    b.onclick = () => choose(item);
    li.append(b); list.append(li);
  }
}

async function choose(item) {
  if (state.path.length === LEVELS.length - 1) { await openSeries(item); return; }
  state.path.push(item);
  await browse();
}

// ---- one series: thumbnails, the viewer, models, jobs --------------------------------

async function openSeries(series) {
  state.series = series;
  state.index = 0;
  $('series-view').hidden = false;
  await loadImages();
  await loadModels();
  await refreshJob();
}

async function loadImages() {
  const s = state.series;
  const all = await guarded(() => get(`/api/series/${enc(s.series_uid)}/instances`));
  if (!all) return;
  state.images = all.filter((i) => i.rows && !($('hide-blank').checked && i.blank));
  const grid = $('grid');
  grid.replaceChildren();
  state.images.forEach((img, i) => {
    const fig = document.createElement('figure');
    fig.classList.toggle('blank', !!img.blank);
    const thumb = document.createElement('img');
    thumb.loading = 'lazy';
    thumb.alt = `image ${img.instance_number ?? i + 1}`;
    thumb.src = `/dicom-web/studies/${enc(img.study_uid)}/series/${enc(img.series_uid)}` +
                `/instances/${enc(img.sop_uid)}/thumbnail?viewport=96,96`;
    const cap = document.createElement('figcaption');
    cap.textContent = `#${img.instance_number ?? i + 1} · ${img.state}`;
    fig.append(thumb, cap);
    fig.onclick = () => { state.index = i; render(); };
    grid.append(fig);
  });
  state.index = Math.min(state.index, Math.max(0, state.images.length - 1));
  await render();
}

async function loadModels() {
  state.models = (await guarded(() => get('/api/models'))) || [];
  const select = $('model');
  const keep = select.value;
  select.replaceChildren();
  for (const m of state.models) {
    const o = document.createElement('option');
    o.value = m.id; o.textContent = m.id;
    select.append(o);
  }
  if (keep) select.value = keep;
  if (!select.value && state.models.length) select.value = state.models[state.models.length - 1].id;
  showCard();
  const dests = (await guarded(() => get('/api/destinations'))) || [];
  $('destination').replaceChildren(...dests.map((d) => {
    const o = document.createElement('option');
    o.value = d.ae_title; o.textContent = `${d.ae_title} (${d.host}:${d.port})`;
    return o;
  }));
  $('send').disabled = dests.length === 0;
  $('run-series').disabled = $('run-image').disabled = state.models.length === 0;
}

function showCard() {
  const m = state.models.find((x) => x.id === $('model').value);
  if (!m) { $('card').textContent = 'No segmentation model in the library yet.'; return; }
  const init = m.init ? `pretrained ${m.init}` : 'random initialisation';
  const dice = m.validation_dice != null ? Number(m.validation_dice).toFixed(3) : '—';
  const when = m.created ? new Date(m.created).toLocaleString() : '';
  $('card').textContent = `${m.arch} (${(m.features || []).join('·')}) · ${init} · ` +
    `trained on ${m.training_images ?? '?'} images · validation Dice ${dice} ` +
    `on ${m.validation_images ?? '?'} · ${when}`;
}

async function render() {
  const img = state.images[state.index];
  const canvas = $('view');
  if (!img) { canvas.width = canvas.height = 1; $('slice').textContent = 'no images'; return; }
  document.querySelectorAll('#grid figure').forEach((f, i) =>
    f.classList.toggle('current', i === state.index));
  const base = await cached(`/api/instances/${enc(img.sop_uid)}/image.png`);
  const model = $('model').value;
  let labels = null;
  if (model && img.predictions.includes(model)) {
    labels = await cached(`/api/instances/${enc(img.sop_uid)}/prediction.png?model=${enc(model)}`);
  }
  const marked = draw(canvas, base, labels, Number($('opacity').value) / 100);
  canvas.dataset.sop = img.sop_uid;
  canvas.dataset.marked = String(marked);
  $('slice').textContent = `image ${state.index + 1} of ${state.images.length}` +
    (labels ? ` · ${model}: ${marked} pixels marked` : '');
}

async function cached(url) {
  if (!state.imageCache.has(url)) state.imageCache.set(url, loadImage(url));
  return state.imageCache.get(url);
}

async function run(sops) {
  const body = { series: state.series.series_uid, model: $('model').value };
  if (sops) body.sops = sops;
  await guarded(() => post('/api/jobs', body));
  await refreshJob();
}

async function refreshJob() {
  clearTimeout(state.polling);
  if (!state.series) return;
  const model = $('model').value;
  const job = await guarded(() => get(`/api/jobs/${enc(state.series.series_uid)}?model=${enc(model)}`));
  if (!job) return;
  const text = { queued: 'queued…', running: 'running…', failed: `failed: ${job.error}`,
                 done: 'done', none: '' }[job.state] ?? job.state;
  $('job').textContent = job.state === 'none' ? '' :
    `${job.model}: ${text} (${job.done} of ${job.total} images)`;
  if (job.state === 'queued' || job.state === 'running') {
    state.polling = setTimeout(refreshJob, 1000);
  } else if (job.state === 'done') {
    await loadImages();  // predictions and the new SEG series
    await refreshSeriesList();
  }
}

async function refreshSeriesList() {
  if (state.path.length === LEVELS.length - 1) await browse();
}

async function send() {
  $('sent').textContent = 'sending…';
  try {
    const r = await post('/api/send', { series: state.series.series_uid,
                                        destination: $('destination').value });
    $('sent').textContent = `sent ${r.sent} to ${r.destination}` + (r.failed ? `, ${r.failed} failed` : '');
  } catch (err) { $('sent').textContent = `not sent: ${err.message}`; }
}

// ---- status -------------------------------------------------------------------------

async function status() {
  const s = await guarded(() => get('/api/status'));
  if (!s) return;
  const rows = [['received in the last minute', s.received_last_minute],
                ['queue depth', s.queue_depth], ['flagged blank', s.blank],
                ...Object.entries(s.instances).map(([k, v]) => [k, v])];
  $('status-figures').replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = v;
    return [dt, dd];
  }));
  $('status-errors').replaceChildren(...(s.errors.length ? s.errors : [{ target: '', error: 'none' }])
    .map((e) => { const li = document.createElement('li');
                  li.textContent = e.target ? `${e.target}: ${e.error}` : e.error; return li; }));
}

// ---- wiring -------------------------------------------------------------------------

async function route() {
  if (location.hash === '#status') { show('status'); await status(); return; }
  show('browse');
  await browse();
}

async function start() {
  $('login-form').onsubmit = async (e) => {
    e.preventDefault();
    try { await signIn($('token').value); $('token').value = ''; await begin(); }
    catch (err) { $('login-error').textContent = err.message; }
  };
  $('model').onchange = () => { showCard(); render(); refreshJob(); };
  $('opacity').oninput = () => render();
  $('hide-blank').onchange = () => loadImages();
  $('run-series').onclick = () => run(null);
  $('run-image').onclick = () => run([state.images[state.index].sop_uid]);
  $('send').onclick = send;
  const step = (d) => { if (!state.images.length) return;
    state.index = Math.max(0, Math.min(state.images.length - 1, state.index + d)); render(); };
  $('view').addEventListener('wheel', (e) => { e.preventDefault(); step(Math.sign(e.deltaY)); },
                             { passive: false });
  document.addEventListener('keydown', (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if (e.key === 'ArrowDown' || e.key === 'ArrowRight' || e.key === 'PageDown') step(1);
    if (e.key === 'ArrowUp' || e.key === 'ArrowLeft' || e.key === 'PageUp') step(-1);
  });
  window.addEventListener('hashchange', route);
  setInterval(() => { if (location.hash === '#status') status(); }, 5000);
  await begin();
}

async function begin() {
  try {
    const me = await get('/api/whoami');
    if (!me.signed_in) { show('login'); return; }
    $('who').textContent = `${me.name}${me.hospitals ? ' · ' + me.hospitals.join(', ') : ''}`;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { show('login'); return; }
    throw err;
  }
  await route();
}

start();
