// The echopanel web view (docs/ui.md). Plain ES module, no build step, no external assets.
// Data: the REST API with `Authorization: Bearer` (token from sessionStorage, never in a
// URL), GET /v1/events (Server-Sent Events read with fetch, so the header can be sent) for
// connection changes, and polling for positions. The <audio> element reads
// /v1/ui/streams/{id}/audio.wav with a session cookie (POST /v1/ui/session), since an
// element cannot send a header.

const TOKEN_KEY = "echopanel.token";
const LIST_POLL_MS = 2000;
const STREAM_POLL_MS = 3000;
const SSE_RETRY_MS = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";
const WIDTH = 1000;
const LEFT = 90; // room for lane labels
const RIGHT = 10;

const $ = (id) => document.getElementById(id);
const state = {
  config: null, // GET /ui/config.json: {auth, session_ttl}
  streams: new Map(), // stream_id -> summary (GET /v1/streams)
  connected: new Map(), // stream_id -> bool, from /v1/events
  lastMove: new Map(), // stream_id -> {samples, seenAt}: the page's view of the last ack
  current: null, // the stream shown, or null for the list
  audioFor: null,
};

// -- token and requests ------------------------------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function headers() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

class AuthNeeded extends Error {}

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  if (response.status === 401 || response.status === 403) {
    throw new AuthNeeded(`${response.status}`);
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response;
}

async function getJson(path) { return (await api(path)).json(); }

function setStatus(text) { $("status").textContent = text; }

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("token-form").hidden = false;
  $("list-view").hidden = true;
  $("stream-view").hidden = true;
  setStatus(message);
}

async function renewSession() {
  // Cookie for the <audio> element only (HttpOnly, SameSite=Strict, Path=/v1/ui).
  if (state.config.auth) await api("/v1/ui/session", { method: "POST" });
}

// -- formatting --------------------------------------------------------------------------------

function fmtDuration(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const frac = (seconds - s).toFixed(1).slice(1);
  return (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(r).padStart(2, "0")}${frac}`;
}

function fmtClock(posix) {
  return new Date(posix * 1000).toISOString().slice(11, 19);
}

function fmtMs(samples, rate) { return `${((samples * 1000) / rate).toFixed(1)} ms`; }

function fmtFormat(f) { return `${f.sample_rate} Hz · ${f.channels} ch · ${f.sample_type}`; }

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// -- stream list -------------------------------------------------------------------------------

function lastAckText(s, now) {
  if (s.state !== "open") return "—";
  const seen = state.lastMove.get(s.stream_id);
  if (!seen || seen.first) return "—";
  const age = (now - seen.seenAt) / 1000;
  return age < LIST_POLL_MS / 1000 + 0.5 ? `< ${LIST_POLL_MS / 1000} s` : `${Math.round(age)} s ago`;
}

function renderList() {
  const body = $("streams");
  body.replaceChildren();
  const now = Date.now();
  for (const s of state.streams.values()) {
    const row = body.insertRow();
    row.className = "clickable";
    row.dataset.testid = "stream-row";
    row.dataset.streamId = s.stream_id;
    const link = document.createElement("a");
    link.href = `#/streams/${encodeURIComponent(s.stream_id)}`;
    link.textContent = s.stream_id;
    row.insertCell().append(link);
    cell(row, s.state + (s.end_reason ? ` (${s.end_reason})` : ""), `state-${s.state}`);
    cell(row, fmtFormat(s.format));
    cell(row, fmtDuration(s.duration_seconds));
    const connected = s.state === "open" && state.connected.get(s.stream_id) === true;
    cell(row, connected ? "yes" : "no", connected ? "yes" : "no");
    cell(row, lastAckText(s, now));
    cell(row, String(s.gap_count));
    row.addEventListener("click", (e) => {
      if (e.target.tagName !== "A") location.hash = link.getAttribute("href");
    });
  }
}

async function refreshList() {
  const { streams } = await getJson("/v1/streams");
  const now = Date.now();
  state.streams = new Map(streams.map((s) => [s.stream_id, s]));
  for (const s of streams) {
    const seen = state.lastMove.get(s.stream_id);
    if (!seen) state.lastMove.set(s.stream_id, { samples: s.samples, seenAt: now, first: true });
    else if (seen.samples !== s.samples) state.lastMove.set(s.stream_id, { samples: s.samples, seenAt: now });
  }
  if (!state.current) renderList();
}

// -- events (SSE over fetch) -------------------------------------------------------------------

function onEvent(name, data) {
  if (name === "snapshot") {
    state.connected = new Map(data.streams.map((s) => [s.stream_id, s.connected]));
  } else if (name === "stream") {
    if (data.event === "opened" || data.event === "resumed") state.connected.set(data.stream_id, true);
    if (data.event === "disconnected" || data.event === "finalized") state.connected.set(data.stream_id, false);
    if (state.current === data.stream_id) scheduleStreamRefresh();
  }
  scheduleListRefresh();
}

async function followEvents() {
  for (;;) {
    try {
      const response = await api("/v1/events", { headers: { Accept: "text/event-stream" } });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (data) onEvent(name, JSON.parse(data));
        }
      }
    } catch (e) {
      if (e instanceof AuthNeeded) { askForToken("Token not accepted"); return; }
    }
    await new Promise((r) => setTimeout(r, SSE_RETRY_MS));
  }
}

let listTimer = null;
function scheduleListRefresh() {
  clearTimeout(listTimer);
  listTimer = setTimeout(() => refreshList().catch(handleError), 200);
}

let streamTimer = null;
function scheduleStreamRefresh() {
  clearTimeout(streamTimer);
  streamTimer = setTimeout(() => refreshStream().catch(handleError), 200);
}

// -- one stream --------------------------------------------------------------------------------

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function titled(node, text) {
  node.append(el("title", {}, text));
  return node;
}

/** Connection intervals from the history: connected; after a disconnect, reconnecting (the
 * uplink came back, or the server still awaits its resume) or, once the stream is
 * finalized (expired while down, or ended), disconnected. `end`: now for an open stream,
 * its end for a finalized one. */
function intervals(history, end) {
  const out = [];
  let open = null; // {kind, start, entry}
  let finalized = false;
  for (const e of history.entries) {
    if (e.kind === "connected") {
      if (open) out.push({ ...open, end: e.time });
      open = { kind: "connected", start: e.time, entry: e };
      finalized = false; // an expired stream reopened (protocol.md §2)
    } else if (e.kind === "disconnected") {
      if (open) out.push({ ...open, end: e.time });
      open = { kind: finalized ? "disconnected" : "reconnecting", start: e.time, entry: e };
    } else if (e.kind === "finalized") {
      if (open && open.kind === "reconnecting") open.kind = "disconnected";
      finalized = true;
    }
  }
  if (open) out.push({ ...open, end: Math.max(end, open.start) });
  return out.filter((s) => s.end > s.start || s.kind === "connected");
}

function replayMarks(history) {
  const marks = [];
  let connected = null;
  for (const e of history.entries) {
    if (e.kind === "connected") connected = e;
    if (e.kind === "disconnected" && connected && e.replayed > 0) {
      marks.push({ time: connected.time, count: e.replayed });
      connected = null;
    }
  }
  if (connected && history.connected) {
    const count = history.duplicates - connected.duplicates_before;
    if (count > 0) marks.push({ time: connected.time, count });
  }
  return marks;
}

function renderTimeline(detail, history, levels) {
  const rate = detail.format.sample_rate;
  const created = Date.parse(detail.created) / 1000;
  const audioBase = detail.capture_started ? Date.parse(detail.capture_started) / 1000 : created;
  const sampleTime = (s) => audioBase + s / rate;
  const now = Date.now() / 1000;
  const ended = detail.ended ? Date.parse(detail.ended) / 1000 : null;
  const times = [audioBase, created, sampleTime(detail.samples), ...history.entries.map((e) => e.time)];
  const t0 = Math.min(...times);
  const t1 = Math.max(...times, ended ?? (detail.state === "open" ? now : 0), t0 + 1);
  const x = (t) => LEFT + ((t - t0) / (t1 - t0)) * (WIDTH - LEFT - RIGHT);
  const w = (a, b) => Math.max(x(b) - x(a), 2);

  const svg = $("timeline");
  svg.replaceChildren();
  const lane = (y, label) => svg.append(el("text", { x: 4, y: y + 15, class: "lane-label" }, label));

  // Connection lane, with what happened before the history began (a server restart).
  const CONN_Y = 16;
  lane(CONN_Y, "connection");
  const spans = intervals(history, detail.state === "open" ? now : (ended ?? t1));
  // Before the server started (a restart), what happened to the connection is not known.
  const firstKnown = Math.min(history.since, history.entries.length ? history.entries[0].time : t1);
  if (firstKnown > t0) {
    svg.append(titled(el("rect", { x: x(t0), y: CONN_Y, width: w(t0, firstKnown), height: 22,
      class: "unknown", "data-kind": "unknown" }), "before this server's history began"));
  }
  for (const s of spans) {
    const rect = el("rect", { x: x(s.start), y: CONN_Y, width: w(s.start, s.end), height: 22,
      class: s.kind, "data-kind": s.kind, "data-testid": `segment-${s.kind}` });
    const code = s.entry && s.entry.kind === "disconnected" ? ` (close code ${s.entry.close_code})` : "";
    svg.append(titled(rect, `${s.kind}${code}: ${fmtClock(s.start)}–${fmtClock(s.end)}, ${(s.end - s.start).toFixed(1)} s`));
  }
  for (const m of replayMarks(history)) {
    const g = el("g", { "data-testid": "replay-marker", "data-count": m.count });
    g.append(el("path", { d: `M${x(m.time)},${CONN_Y + 24} l-5,9 h10 z`, class: "replay" }));
    g.append(el("text", { x: x(m.time) + 7, y: CONN_Y + 34, class: "mark-label" }, `↻ ${m.count} replayed`));
    svg.append(titled(g, `${m.count} replayed items dropped as duplicates (§4)`));
  }

  // Audio lane: where each sample belongs in capture time; gaps are exact, in samples.
  const AUDIO_Y = 66;
  lane(AUDIO_Y, "audio");
  svg.append(titled(el("rect", { x: x(audioBase), y: AUDIO_Y, width: w(audioBase, sampleTime(detail.samples)),
    height: 22, class: "audio" }), `${detail.samples} samples, ${fmtDuration(detail.duration_seconds)}`));
  detail.gaps.forEach((g, i) => {
    const n = g.end_sample - g.start_sample;
    const label = `gap ${n} samples (${fmtMs(n, rate)})`;
    const rect = el("rect", { x: x(sampleTime(g.start_sample)), y: AUDIO_Y - 4,
      width: w(sampleTime(g.start_sample), sampleTime(g.end_sample)), height: 30, class: "gap",
      "data-testid": "gap-block", "data-samples": n });
    svg.append(titled(rect, `${label}: samples ${g.start_sample}–${g.end_sample}, seqs ${g.first_seq}–${g.end_seq}`));
    svg.append(el("text", { x: x(sampleTime(g.start_sample)) + 3, y: AUDIO_Y + 42 + (i % 2) * 12,
      class: "mark-label gap-label" }, label));
  });

  // Finalization.
  if (ended !== null) {
    const g = el("g", { "data-testid": "final-mark" });
    g.append(el("line", { x1: x(ended), x2: x(ended), y1: 8, y2: 118, class: "final" }));
    g.append(el("text", { x: Math.min(x(ended) + 4, WIDTH - 60), y: 12, class: "mark-label" },
      detail.end_reason || "finalized"));
    svg.append(g);
  }

  // Time axis.
  svg.append(el("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: 124, y2: 124, class: "axis" }));
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    svg.append(el("text", { x: Math.min(x(t), WIDTH - 55), y: 140, class: "tick-label" }, fmtClock(t)));
  }
  renderLevels(levels, (s) => x(sampleTime(s)));
  state.seekMap = { x, sampleTime, rate, t0, t1, audioBase };
}

function renderLevels(levels, xOfSample) {
  const svg = $("levels");
  svg.replaceChildren();
  const MIN_DB = -60, H = 80;
  const y = (db) => 4 + ((Math.min(0, Math.max(MIN_DB, db)) / MIN_DB) * (H - 8));
  for (const db of [0, -20, -40, -60]) {
    svg.append(el("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y(db), y2: y(db), class: "grid" }));
    svg.append(el("text", { x: 4, y: y(db) + 4, class: "tick-label" }, `${db} dB`));
  }
  let points = [];
  const flush = () => {
    if (points.length) svg.append(el("polyline", { points: points.join(" "), class: "level-line" }));
    points = [];
  };
  levels.levels.forEach((db, i) => {
    if (db === null) { flush(); return; }
    const mid = (i + 0.5) * levels.step_samples;
    points.push(`${xOfSample(mid).toFixed(1)},${y(db).toFixed(1)}`);
  });
  flush();
}

function renderSummary(detail, history) {
  const dl = $("summary");
  dl.replaceChildren();
  const replays = history.entries.filter((e) => e.kind === "connected" && !e.first).length;
  const gapSamples = detail.gaps.reduce((n, g) => n + g.end_sample - g.start_sample, 0);
  const items = [
    ["State", detail.state + (detail.end_reason ? ` (${detail.end_reason})` : "")],
    ["Connected", history.connected ? "yes" : "no"],
    ["Format", fmtFormat(detail.format)],
    ["Duration", `${fmtDuration(detail.duration_seconds)} (${detail.samples} samples)`],
    ["Reconnects", String(replays)],
    ["Replayed items dropped", String(detail.duplicates)],
    ["Gaps", `${detail.gap_count} (${gapSamples} samples, ${fmtMs(gapSamples, detail.format.sample_rate)})`],
    ["Created", detail.created],
  ];
  for (const [k, v] of items) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v;
    dl.append(dt, dd);
  }
}

function renderGaps(detail) {
  const list = $("gaps");
  list.replaceChildren();
  const rate = detail.format.sample_rate;
  for (const g of detail.gaps) {
    const n = g.end_sample - g.start_sample;
    const li = document.createElement("li");
    li.dataset.testid = "gap";
    li.dataset.samples = String(n);
    li.textContent = `samples ${g.start_sample}–${g.end_sample}: ${n} samples (${fmtMs(n, rate)}), seqs ${g.first_seq}–${g.end_seq}`
      + (g.started ? `, from ${g.started}` : "");
    list.append(li);
  }
  if (!detail.gaps.length) list.append(Object.assign(document.createElement("li"), { textContent: "none" }));
}

function renderHistory(history, rate) {
  const body = $("history");
  body.replaceChildren();
  $("history-note").textContent = `Kept in the server's memory since ${new Date(history.since * 1000).toISOString()}`
    + ` (at most ${history.limit} entries${history.dropped ? `; ${history.dropped} older ones dropped` : ""}).`;
  for (const e of history.entries) {
    const row = body.insertRow();
    row.dataset.testid = "history-row";
    row.dataset.kind = e.kind;
    cell(row, fmtClock(e.time));
    cell(row, e.kind === "connected" ? (e.first ? "opened" : "resumed") : e.kind);
    cell(row, `sample ${e.at_sample}`);
    let details = "";
    if (e.kind === "disconnected") details = `close code ${e.close_code}` + (e.replayed === null ? "" : `, ${e.replayed} items replayed`);
    if (e.kind === "gap") details = `${e.samples} samples (${fmtMs(e.samples, rate)})`;
    if (e.kind === "finalized") details = e.end_reason;
    if (e.kind === "storage_failed") details = e.detail;
    cell(row, details);
  }
}

async function refreshStream() {
  const sid = state.current;
  if (!sid) return;
  const path = `/v1/streams/${encodeURIComponent(sid)}`;
  const [detail, history, levels] = await Promise.all([
    getJson(path), getJson(`${path}/history`), getJson(`${path}/levels`)]);
  if (state.current !== sid) return;
  $("stream-title").textContent = sid;
  renderSummary(detail, history);
  renderTimeline(detail, history, levels);
  renderGaps(detail);
  renderHistory(history, detail.format.sample_rate);
  if (state.audioFor !== sid) {
    state.audioFor = sid;
    $("player").src = `/v1/ui/streams/${encodeURIComponent(sid)}/audio.wav`;
  }
  $("stream-view").dataset.ready = "true";
}

// Click on the timeline: play from that moment of the audio.
function seekFromTimeline(event) {
  const m = state.seekMap;
  const player = $("player");
  if (!m || !Number.isFinite(player.duration)) return;
  const box = $("timeline").getBoundingClientRect();
  const vx = ((event.clientX - box.left) / box.width) * WIDTH;
  const t = m.t0 + ((vx - LEFT) / (WIDTH - LEFT - RIGHT)) * (m.t1 - m.t0);
  player.currentTime = Math.min(Math.max(t - m.audioBase, 0), player.duration);
}

// -- routing and start -------------------------------------------------------------------------

function route() {
  const m = location.hash.match(/^#\/streams\/(.+)$/);
  state.current = m ? decodeURIComponent(m[1]) : null;
  $("list-view").hidden = !!state.current;
  $("stream-view").hidden = !state.current;
  delete $("stream-view").dataset.ready;
  if (state.current) {
    refreshStream().catch(handleError);
  } else {
    const player = $("player");
    player.pause();
    player.removeAttribute("src");
    state.audioFor = null;
    renderList();
  }
}

function handleError(e) {
  if (e instanceof AuthNeeded) askForToken(e.message === "403" ? "Token not accepted" : "A token is needed");
  else setStatus(`Error: ${e.message}`);
}

let started = false;
async function begin() {
  $("token-form").hidden = true;
  $("forget-token").hidden = !token();
  await renewSession();
  await refreshList();
  setStatus(`Connected to ${location.host}`);
  if (started) { route(); return; }
  started = true;
  followEvents();
  setInterval(() => refreshList().catch(handleError), LIST_POLL_MS);
  setInterval(() => {
    const s = state.current && state.streams.get(state.current);
    if (s && s.state === "open") refreshStream().catch(handleError);
  }, STREAM_POLL_MS);
  if (state.config.auth) setInterval(() => renewSession().catch(handleError), (state.config.session_ttl * 1000) / 3);
  window.addEventListener("hashchange", route);
  route();
}

async function main() {
  state.config = await (await fetch("/ui/config.json")).json();
  $("timeline").addEventListener("click", seekFromTimeline);
  $("forget-token").addEventListener("click", () => { askForToken("Token forgotten"); location.reload(); });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    begin().catch(handleError);
  });
  if (state.config.auth && !token()) { askForToken("This server needs a token"); return; }
  begin().catch(handleError);
}

main();
