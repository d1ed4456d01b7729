// The heartmula page: plain JS over the server's REST and WebSocket API (no build step, no external scripts).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const state = {
  health: null, token: localStorage.getItem("heartmula-token") || "", active: new Set(),
  extending: null,  // the library song the compose form continues (POST /api/songs continue_from), or null
};

// --- API helpers --------------------------------------------------------------------------------------------------
// The token goes in the Authorization header only. Audio, downloads and the live stream cannot send headers: they
// use a session cookie (HttpOnly, short-lived) that POST /api/session sets, so no URL ever carries the token.
const SESSION_REFRESH_MS = 20 * 60 * 1000;

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("#token-box").hidden = false;
    throw new Error("this server needs a token: enter it at the top");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail
        : (body.detail || []).map((e) => (e.loc || []).slice(1).join(".") + ": " + e.msg).join("; ");
    } catch (e) { /* not JSON */ }
    throw new Error(detail || ("HTTP " + response.status));
  }
  return response.status === 204 ? null : response.json();
}

const audioUrl = (id, format = "wav") => `/api/songs/${id}/audio?format=${format}`;
const codesUrl = (id) => `/api/songs/${id}/codes`;

async function openSession() {
  if (!state.health || !state.health.auth_required || !state.token) return;
  try { await api("/api/session", { method: "POST" }); } catch (e) { /* a wrong token shows the token box */ }
}
setInterval(openSession, SESSION_REFRESH_MS);

// --- tabs -----------------------------------------------------------------------------------------------------------
function showTab(name, refresh = true) {
  $$("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  $$(".tab").forEach((s) => { s.hidden = s.id !== "tab-" + name; });
  if (name === "library" && refresh) refreshLibrary();
}
$$("#tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));

// --- player ---------------------------------------------------------------------------------------------------------
function play(job) {
  const player = $("#player");
  player.src = audioUrl(job.id);
  $("#now-playing").textContent = job.title;
  player.play().catch(() => { /* autoplay refused: the user presses play */ });
}

// --- compose --------------------------------------------------------------------------------------------------------
$$("#section-buttons button").forEach((button) => button.addEventListener("click", () => {
  const area = $("#lyrics");
  const before = area.value.slice(0, area.selectionStart);
  const after = area.value.slice(area.selectionEnd);
  const lead = before && !before.endsWith("\n\n") ? (before.endsWith("\n") ? "\n" : "\n\n") : "";
  const insert = `${lead}[${button.dataset.section}]\n`;
  area.value = before + insert + after;
  area.selectionStart = area.selectionEnd = before.length + insert.length;
  area.focus();
}));

function addTag(tag) {
  const input = $("#tags");
  const have = input.value.split(",").map((t) => t.trim()).filter(Boolean);
  if (!have.includes(tag)) have.push(tag);
  input.value = have.join(",");
}

// A button (type "button", so it never submits a form) that calls onClick.
function makeButton(label, onClick, className = "") {
  const b = document.createElement("button");
  b.type = "button";
  if (className) b.className = className;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

async function loadTags() {
  try {
    const { tags } = await api("/api/tags");
    $("#tag-list").innerHTML = "";
    tags.forEach((tag) => { const o = document.createElement("option"); o.value = tag; $("#tag-list").append(o); });
    const featured = ["pop", "rock", "jazz", "electronic", "folk", "piano", "guitar", "happy", "sad", "energetic",
      "calm", "female vocal", "male vocal"].filter((t) => tags.includes(t));
    const chips = $("#tag-suggestions");
    chips.innerHTML = "";
    (featured.length ? featured : tags.slice(0, 12)).forEach((tag) => chips.append(makeButton(tag, () => addTag(tag))));
  } catch (e) { /* suggestions are optional */ }
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

$("#compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#compose-error").textContent = "";
  const body = {
    title: $("#title").value, lyrics: $("#lyrics").value, tags: $("#tags").value,
    duration: Number($("#duration").value), seed: numberOrNull("#seed"),
    temperature: Number($("#temperature").value), top_k: Math.round(Number($("#top_k").value)),
    cfg_scale: Number($("#cfg_scale").value),
  };
  if (state.extending) {
    body.continue_from = state.extending.id;
    body.from_seconds = Number($("#from-seconds").value);
  }
  $("#create").disabled = true;
  try {
    const job = await api("/api/songs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    $("#job").hidden = false;
    $("#job-title").textContent = job.title;
    stopExtending();
    followJob(job.id);
  } catch (e) {
    $("#compose-error").textContent = e.message;
  } finally {
    $("#create").disabled = false;
  }
});

async function followJob(id) {
  state.active.add(id);
  while (true) {
    let job;
    try { job = await api(`/api/songs/${id}`); } catch (e) { $("#job-state").textContent = e.message; break; }
    $("#job-progress").value = job.progress;
    $("#job-state").textContent = job.status + (job.message ? ": " + job.message : "");
    if (job.status === "done") { play(job); break; }
    if (job.status === "failed") break;
    await new Promise((r) => setTimeout(r, 500));
  }
  state.active.delete(id);
  refreshLibrary();
}

// --- extend: continue a library song -------------------------------------------------------------------------------
function extendSong(job) {
  state.extending = job;
  const seconds = (job.result.frames * 0.08).toFixed(2);  // 12.5 frames per second
  $("#lyrics").value = (job.request && job.request.lyrics) || "";
  $("#tags").value = (job.request && job.request.tags) || "";
  $("#extend-title").textContent = job.title;
  $("#from-seconds").value = seconds;
  $("#from-seconds").max = seconds;
  $("#extend-box").hidden = false;
  $("#duration-label").textContent = "Seconds to add";
  $("#create").textContent = "Extend song";
  showTab("compose");
}

function stopExtending() {
  state.extending = null;
  $("#extend-box").hidden = true;
  $("#duration-label").textContent = "Duration (s)";
  $("#create").textContent = "Create song";
}
$("#extend-cancel").addEventListener("click", stopExtending);

// The upload body of the audio file chosen in an input, or null (said in the state element) when none is chosen.
function audioFileForm(input, stateElement) {
  const file = $(input).files[0];
  if (!file) { $(stateElement).textContent = "choose an audio file first"; return null; }
  const form = new FormData();
  form.append("file", file);
  return form;
}

$("#import-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = audioFileForm("#import-file", "#import-state");
  if (!form) return;
  $("#import-state").textContent = "importing...";
  try {
    const job = await api("/api/songs/import", { method: "POST", body: form });
    $("#import-state").textContent = `added "${job.title}": press Extend on it`;
  } catch (e) { $("#import-state").textContent = e.message; }
  refreshLibrary();
});

// --- library --------------------------------------------------------------------------------------------------------
let searchTimer = null;
$("#search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(refreshLibrary, 250); });

function songItem(job) {
  const li = document.createElement("li");
  li.className = "song";
  li.dataset.id = job.id;
  const left = document.createElement("div");
  const title = document.createElement("strong");
  title.className = "title";
  title.textContent = job.title;
  const meta = document.createElement("div");
  meta.className = "meta";
  const tags = (job.request && job.request.tags) || "";
  const when = new Date(job.created * 1000).toLocaleString();
  const length = job.result && job.result.seconds ? ` · ${job.result.seconds.toFixed(1)} s` : "";
  meta.textContent = `${tags || "no tags"}${length} · ${when}`;
  const status = document.createElement("div");
  status.className = "meta status-" + job.status;
  status.textContent = job.status === "running" ? `generating ${Math.round(job.progress * 100)}%`
    : job.status + (job.message ? ": " + job.message : "");
  left.append(title, meta, status);
  const actions = document.createElement("div");
  actions.className = "actions";
  if (job.status === "done") {
    actions.append(makeButton("Play", () => play(job), "play"));
    if (job.result && job.result.frames) {  // a song with codes can be continued
      actions.append(makeButton("Extend", () => extendSong(job), "extend"));
    }
    if (state.health && state.health.features.search) {
      actions.append(makeButton("Similar", () => similarTo(job), "similar"));
    }
    const formats = [["wav", audioUrl(job.id, "wav")], ["flac", audioUrl(job.id, "flac")],
      ["mp3", audioUrl(job.id, "mp3")]];
    formats.push(["codes", codesUrl(job.id)]);
    formats.forEach(([label, href]) => {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = label;
      a.setAttribute("download", "");
      actions.append(a);
    });
  }
  actions.append(makeButton("Delete", async () => {
    if (!confirm(`Delete "${job.title}"?`)) return;
    try { await api(`/api/songs/${job.id}`, { method: "DELETE" }); } catch (e) { alert(e.message); }
    refreshLibrary();
  }, "delete"));
  li.append(left, actions);
  return li;
}

function showHits(hits, label) {
  $("#library").replaceChildren(...hits.map((hit) => {
    const li = songItem(hit.song);
    const score = document.createElement("div");
    score.className = "meta score";
    score.textContent = `match ${hit.score.toFixed(3)}`;
    li.firstChild.append(score);
    return li;
  }));
  $("#library-count").textContent = `${hits.length} ${label}`;
}

async function similarTo(job) {
  showTab("library", false);
  try {
    const { hits } = await api(`/api/songs/${job.id}/similar?k=20`);
    showHits(hits, `like "${job.title}"`);
  } catch (e) { $("#library-count").textContent = e.message; }
}

$("#by-sound").addEventListener("change", refreshLibrary);
$("#example-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("#example-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try {
    const { hits } = await api("/api/search/audio", { method: "POST", body: form });
    showHits(hits, `like ${file.name}`);
  } catch (e) { $("#library-count").textContent = e.message; }
});

async function refreshLibrary() {
  const q = $("#search").value.trim();
  if (q && $("#by-sound").checked) {  // HeartCLAP: the description is matched against the sound of each song
    try {
      const { hits } = await api("/api/search?k=50&q=" + encodeURIComponent(q));
      showHits(hits, "by sound");
    } catch (e) { $("#library-count").textContent = e.message; }
    return;
  }
  try {
    const { songs, total } = await api("/api/songs?limit=100" + (q ? "&q=" + encodeURIComponent(q) : ""));
    const list = $("#library");
    list.replaceChildren(...songs.map(songItem));
    $("#library-count").textContent = `${total} song${total === 1 ? "" : "s"}`;
    const busy = songs.some((s) => s.status === "queued" || s.status === "running");
    if (busy && !$("#tab-library").hidden) setTimeout(refreshLibrary, 2000);
  } catch (e) {
    $("#library-count").textContent = e.message;
  }
}

// --- live streaming -------------------------------------------------------------------------------------------------
const live = { socket: null, context: null, next: 0, rate: 0, channels: 2 };

function styleRow(tags = "", weight = 1) {
  const row = document.createElement("div");
  row.className = "style-row";
  row.innerHTML = `<input class="style-tags" placeholder="tags, e.g. jazz,piano">
    <input class="style-weight" type="range" min="0" max="1" step="0.01">
    <span class="style-value muted"></span><button type="button" class="style-remove">x</button>`;
  $(".style-tags", row).value = tags;
  const slider = $(".style-weight", row);
  slider.value = weight;
  const show = () => { $(".style-value", row).textContent = Number(slider.value).toFixed(2); };
  show();
  slider.addEventListener("input", () => { show(); sendControls(); });
  $(".style-tags", row).addEventListener("change", sendControls);
  $(".style-remove", row).addEventListener("click", () => { row.remove(); sendControls(); });
  $("#styles").append(row);
}

function currentPrompts() {
  return $$(".style-row").map((row) => [$(".style-tags", row).value.trim(), Number($(".style-weight", row).value)])
    .filter(([tags]) => tags);
}

function sendControls() {
  if (!live.socket || live.socket.readyState !== WebSocket.OPEN) return;
  const prompts = currentPrompts();
  if (!prompts.length || prompts.every(([, w]) => w <= 0)) return;  // the server would refuse an all-zero mix
  live.socket.send(JSON.stringify({
    type: "update", prompts, temperature: Number($("#live-temperature").value),
    cfg_scale: Number($("#live-cfg").value),
  }));
}
$("#live-temperature").addEventListener("change", sendControls);
$("#live-cfg").addEventListener("change", sendControls);
$("#add-style").addEventListener("click", () => styleRow("", 0.5));

function playChunk(buffer) {
  const samples = new Float32Array(buffer);
  const frames = samples.length / live.channels;
  const audio = live.context.createBuffer(live.channels, frames, live.rate);
  for (let c = 0; c < live.channels; c++) audio.copyToChannel(samples.subarray(c * frames, (c + 1) * frames), c);
  const source = live.context.createBufferSource();
  source.buffer = audio;
  source.connect(live.context.destination);
  live.next = Math.max(live.next, live.context.currentTime + 0.05);
  source.start(live.next);
  live.next += audio.duration;
}

function startStream() {
  const prompts = currentPrompts();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/stream`);
  socket.binaryType = "arraybuffer";
  live.socket = socket;
  live.context = live.context || new AudioContext();
  live.context.resume();
  live.next = 0;
  $("#stream-start").disabled = true;
  $("#stream-stop").disabled = false;
  socket.onopen = () => socket.send(JSON.stringify({
    type: "start", lyrics: $("#lyrics").value, prompts: prompts.length ? prompts : [["", 1]],
    temperature: Number($("#live-temperature").value), cfg_scale: Number($("#live-cfg").value),
    seed: numberOrNull("#seed"), max_seconds: Number($("#live-seconds").value), title: $("#title").value,
  }));
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") { playChunk(event.data); return; }
    const message = JSON.parse(event.data);
    if (message.type === "started") {
      live.rate = message.sample_rate;
      live.channels = message.channels;
      $("#stream-state").textContent = "streaming";
    } else if (message.type === "updated") {
      $("#stream-state").textContent = `streaming · style change ${message.version} applied`;
    } else if (message.type === "waiting") {
      $("#stream-state").textContent = "waiting for the model (a song job is running)";
    } else if (message.type === "error") {
      $("#stream-state").textContent = message.message;
    } else if (message.type === "end") {
      $("#stream-state").textContent = message.song ? "done: saved in the library" : "done";
      refreshLibrary();
    }
  };
  socket.onclose = () => {
    $("#stream-start").disabled = false;
    $("#stream-stop").disabled = true;
    live.socket = null;
  };
}
$("#stream-start").addEventListener("click", startStream);
$("#stream-stop").addEventListener("click", () => {
  if (live.socket) live.socket.send(JSON.stringify({ type: "stop" }));
});

// --- transcription --------------------------------------------------------------------------------------------------
function clock(seconds) {
  const m = Math.floor(seconds / 60);
  return `${String(m).padStart(2, "0")}:${(seconds - m * 60).toFixed(2).padStart(5, "0")}`;
}

$("#transcribe-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = audioFileForm("#transcribe-file", "#transcribe-state");
  if (!form) return;
  if ($("#transcribe-language").value) form.append("language", $("#transcribe-language").value);
  $("#transcribe-state").textContent = "transcribing...";
  $("#transcribe-run").disabled = true;
  try {
    const result = await api("/api/transcribe", { method: "POST", body: form });
    const body = $("#transcript tbody");
    body.replaceChildren(...result.segments.map((line) => {
      const tr = document.createElement("tr");
      const time = document.createElement("td");
      time.className = "time";
      time.textContent = clock(line.start);
      const text = document.createElement("td");
      text.textContent = line.text;
      tr.append(time, text);
      return tr;
    }));
    $("#transcript-lrc").textContent = result.lrc;
    $("#transcribe-state").textContent = `${result.segments.length} lines · language ${result.language || "?"}`;
  } catch (e) {
    $("#transcribe-state").textContent = e.message;
  } finally {
    $("#transcribe-run").disabled = false;
  }
});

// --- start ----------------------------------------------------------------------------------------------------------
$("#token").value = state.token;
$("#token").addEventListener("change", () => {
  state.token = $("#token").value.trim();
  localStorage.setItem("heartmula-token", state.token);
  openSession().then(() => { loadTags(); refreshLibrary(); });
});

async function checkHealth() {
  try {
    const health = await (await fetch("/api/health")).json();  // a 503 still carries the state and the reason
    const first = !state.health;
    state.health = health;
    $("#token-box").hidden = !health.auth_required;
    if (first) await openSession();
    const model = health.model === "ready" ? "model ready" : health.model === "loading" ? "loading the model..."
      : "model error: " + health.model_error;
    const problem = health.problem && health.model !== "error" ? " · server problem: " + health.problem : "";
    $("#server-status").textContent = `heartmula ${health.version} · ${model}${problem}`;
    $("#by-sound-box").hidden = $("#example-form").hidden = !health.features.search;
    $("#live").hidden = !health.features.stream;
    $("#live-unavailable").hidden = health.features.stream;
    if (health.model === "loading" || health.problem) setTimeout(checkHealth, 2000);
  } catch (e) {
    $("#server-status").textContent = "server unreachable";
    setTimeout(checkHealth, 3000);
  }
}

styleRow("pop,piano", 0.7);
styleRow("electronic", 0.3);
checkHealth().then(() => { loadTags(); refreshLibrary(); });
