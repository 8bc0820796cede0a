// The hoosh-edge status page: fetch /admin/status.json every 5 s and render it.
// Everything is set through textContent, so nothing from the server is ever parsed as HTML.
"use strict";

const REFRESH_MS = 5000;
const KEY_NAME = "hoosh-edge-admin-key";
const MiB = 1024 * 1024;

const $ = (id) => document.getElementById(id);

function setText(id, text) {
  $(id).textContent = text;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1024 * MiB) return (n / (1024 * MiB)).toFixed(1) + " GiB";
  if (n >= MiB) return Math.round(n / MiB) + " MiB";
  if (n >= 1024) return Math.round(n / 1024) + " KiB";
  return n + " B";
}

// Amounts come as exact decimal strings ("0.012345"); cents past a dollar, 4 decimals below it
// (the exact amount stays in the element's title).
function fmtUsd(text) {
  if (text === null || text === undefined) return "–";
  const n = Number(text);
  let s = n.toFixed(n >= 1 ? 2 : 4);
  while (/\.\d{2,}0$/.test(s)) s = s.slice(0, -1);
  return "$" + s;
}

function fmtPct(p) {
  if (p === null || p === undefined || Number.isNaN(p)) return "–";
  return (p >= 10 || p === 0 ? Math.round(p) : p.toFixed(1)) + " %";
}

function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min`;
  return `${s} s`;
}

const UNITS = { tokens: "tokens", requests: "requests", characters: "chars", audio_seconds: "s" };

// A budget amount: dollars, or a plain number that the limit then follows with its unit.
function fmtAmount(metric, text, withUnit) {
  if (metric === "usd") return fmtUsd(text);
  const n = Number(text).toLocaleString("en-US");
  return withUnit ? n + " " + (UNITS[metric] || metric) : n;
}

function fmtWhen(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
                 : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function level(percent) {
  if (percent >= 100) return "over";
  if (percent >= 80) return "warn";
  return "";
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function section(data) {
  // A section that failed server-side arrives as {"error": "..."}; null means "not set up".
  return data && !Array.isArray(data) && data.error ? null : data;
}

function renderDevice(dev) {
  dev = section(dev) || {};
  const t = dev.cpu_temp_c;
  const temp = $("temp");
  temp.textContent = t === null || t === undefined ? "n/a" : t.toFixed(1) + " °C";
  // A Raspberry Pi 5 starts throttling at 85 °C.
  temp.className = "big" + (t >= 80 ? " hot" : t >= 70 ? " warm" : "");
  setText("mem-free", fmtBytes(dev.mem_available_bytes));
  setText("mem-total", fmtBytes(dev.mem_total_bytes));
  const used = dev.mem_total_bytes ? 100 * (1 - dev.mem_available_bytes / dev.mem_total_bytes) : 0;
  // Models are refused when they do not fit, so say so well before memory runs out.
  $("mem-bar").className = "bar " + (used >= 90 ? "over" : used >= 75 ? "warn" : "");
  $("mem-bar").firstElementChild.style.width = Math.min(100, used) + "%";
  setText("load", dev.load_avg ? dev.load_avg.join(" ") : "–");
}

function renderSpend(spend) {
  spend = section(spend);
  setText("spend-today", spend ? fmtUsd(spend.today_usd) : "–");
  setText("spend-month", spend ? fmtUsd(spend.month_usd) : "–");
  $("spend-today").title = spend ? "$" + spend.today_usd : "";
  $("spend-month").title = spend ? "$" + spend.month_usd : "";
  setText("spend-today-requests", spend ? spend.today_requests : "–");
  setText("spend-month-requests", spend ? spend.month_requests : "–");
}

function renderCache(cache) {
  cache = section(cache);
  const rate = cache && typeof cache.hit_rate === "number" ? cache.hit_rate * 100 : null;
  setText("cache-hit-rate", cache ? fmtPct(rate) : "off");
  setText("cache-entries", cache && cache.entries !== undefined ? cache.entries : "–");
  setText("cache-bytes", cache ? fmtBytes(cache.bytes) : "–");
}

function renderRequests(req) {
  req = section(req);
  setText("req-total", req ? req.total : "–");
  setText("req-4xx", req ? req.by_class["4xx"] : "–");
  setText("req-5xx", req ? req.by_class["5xx"] : "–");
}

function renderBudgets(budgets) {
  budgets = section(budgets) || [];
  const list = $("budgets");
  list.replaceChildren();
  $("budgets-empty").hidden = budgets.length > 0;
  for (const b of budgets) {
    const li = el("li", { "data-budget": b.name });
    const head = el("div", { class: "head" });
    const what = el("span");
    what.append(el("span", { class: "name" }, b.name), " ",
                el("span", { class: "muted" }, `${b.scope} · per ${b.period} · ${b.action}`));
    head.append(what, el("span", { class: "pct " + level(b.percent), "data-k": "percent" }, fmtPct(b.percent)));
    const bar = el("div", { class: "bar " + level(b.percent) });
    const fill = el("span");
    fill.style.width = Math.min(100, b.percent) + "%";
    bar.append(fill);
    const foot = el("p", { class: "muted" });
    foot.append(el("span", { "data-k": "used", title: b.used }, fmtAmount(b.metric, b.used, false)), " of ",
                el("span", { "data-k": "limit", title: b.limit }, fmtAmount(b.metric, b.limit, true)));
    if (b.reserved && Number(b.reserved) > 0) {  // calls in flight hold it; "remaining" counts it
      foot.append(" · ", el("span", { "data-k": "reserved", title: b.reserved },
                            fmtAmount(b.metric, b.reserved, false)), " held");
    }
    if (b.period !== "total") foot.append(" · resets " + fmtWhen(b.resets_at));
    li.append(head, bar, foot);
    list.append(li);
  }
}

function renderModels(models) {
  models = section(models) || [];
  const body = $("models").tBodies[0];
  body.replaceChildren();
  $("models-empty").hidden = models.length > 0;
  $("models").hidden = models.length === 0;
  for (const m of models) {
    const state = m.busy ? "busy" : m.loaded ? "loaded" : "unloaded";
    const tr = el("tr", { "data-model": m.id });
    const st = el("td");
    st.append(el("span", { class: "state " + state, "data-k": "state" }, state));
    tr.append(el("td", {}, m.id), el("td", { "data-k": "kind" }, m.kind), st,
              el("td", { class: "num", "data-k": "queue" }, String(m.queue_depth)),
              el("td", { class: "num", "data-k": "memory" }, fmtBytes(m.estimate_bytes)));
    body.append(tr);
  }
}

// Which phonemizer the voices speak through and on which espeak-ng data, or, when none can be
// used, what to install. On the system's data it speaks, but maybe not the voice's phonemes.
function renderTts(tts) {
  tts = section(tts);
  const p = $("tts");
  p.hidden = !tts || !tts.voices || tts.voices.length === 0;
  if (p.hidden) return;
  const ph = tts.phonemizer;
  p.className = tts.state === "ok" && !ph.warning ? "muted" : "problem";
  p.dataset.state = tts.state;
  p.textContent = tts.state === "ok"
    ? "Speech phonemizer: " + ph.in_use + " (" + ph.detail + ")" + (ph.warning ? ". " + ph.warning : "")
    : "Speech cannot be made: no phonemizer. To fix: " + ph.fix;
}

function renderProviders(providers) {
  providers = section(providers) || [];
  const body = $("providers").tBodies[0];
  body.replaceChildren();
  $("providers-empty").hidden = providers.length > 0;
  $("providers").hidden = providers.length === 0;
  for (const p of providers) {
    const tr = el("tr", { "data-provider": p.name });
    const st = el("td");
    st.append(el("span", { class: "state " + p.state, "data-k": "state" }, p.state));
    tr.append(el("td", {}, p.name), el("td", { "data-k": "type" }, p.type), st,
              el("td", { class: "num" }, p.latency_ms === null ? "–" : Math.round(p.latency_ms) + " ms"));
    body.append(tr);
    // The error gets a full-width row of its own, so a long one stays readable on a phone.
    const err = p.state === "disabled" ? p.disabled_reason : p.last_error;
    if (err) {
      const row = el("tr", { class: "errrow", "data-error": p.name });
      row.append(el("td", { colspan: "4", class: "err", "data-k": "text" }, err));
      body.append(row);
    }
  }
}

function render(data) {
  setText("version", data.version);
  setText("uptime", fmtDuration(data.uptime_s));
  renderDevice(data.device);
  renderSpend(data.spend);
  renderCache(data.cache);
  renderRequests(data.requests);
  renderBudgets(data.budgets);
  renderModels(data.models);
  renderTts(data.tts);
  renderProviders(data.providers);
  setText("updated", "updated " + new Date().toLocaleTimeString());
  $("conn").className = "dot ok";
  document.body.dataset.loaded = "1";
}

function showProblem(text) {
  $("problem").hidden = !text;
  $("problem").textContent = text || "";
  if (text) $("conn").className = "dot bad";
}

function askForKey(refused) {
  $("main").hidden = true;
  $("keyform").hidden = false;
  setText("keymsg", refused ? "That admin key was refused; try again." : "This page needs the admin key.");
  $("key").focus();
}

let timer = null;

async function refresh() {
  clearTimeout(timer);
  const key = sessionStorage.getItem(KEY_NAME);
  const headers = key ? { Authorization: "Bearer " + key } : {};
  try {
    const resp = await fetch("/admin/status.json", { headers, cache: "no-store" });
    if (resp.status === 401 || resp.status === 403) {
      askForKey(Boolean(key));
      return;  // no polling until the operator gives a key
    }
    if (!resp.ok) throw new Error("the gateway answered HTTP " + resp.status);
    const data = await resp.json();
    $("keyform").hidden = true;
    $("main").hidden = false;
    showProblem("");
    render(data);
  } catch (e) {
    // Keep the last numbers on screen, but say they are stale.
    showProblem("Could not refresh: " + e.message);
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

$("keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_NAME, $("key").value.trim());
  $("key").value = "";
  refresh();
});

refresh();
