// Outpost fleet dashboard. Polls the hub's JSON endpoints every 2 s and
// redraws; charts are inline SVG drawn here. Data only ever reaches the
// page through textContent and SVG attributes, never as HTML.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

let measuredDeflection = 0;
let roiInputsLoaded = false;
let roiDirty = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

async function getJson(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) { window.location.assign("/login"); throw new Error("logged out"); }
  if (!r.ok) return { status: r.status, body: null };
  return { status: r.status, body: await r.json() };
}

async function send(method, path, body) {
  return fetch(path, {
    method, credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

const pct = (x) => (x == null ? "–" : (100 * x).toFixed(1) + " %");
const ms = (x) => (x == null ? "–" : Math.round(x) + " ms");
const money = (x) => (x == null ? "–" : x.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }));
const bytes = (b) => (b == null ? "–" : (b / 2 ** 30).toFixed(1) + " GiB");

function ago(unixMs, nowMs) {
  const s = Math.max(0, Math.round((nowMs - unixMs) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

// ---- devices -------------------------------------------------------------

function renderDevices(data) {
  $("devices-total").textContent = data.total;
  $("devices-online").textContent = data.counts.online;
  $("devices-offline").textContent = data.counts.offline;
  const rows = data.devices.map((d) => {
    const h = d.health;
    const active = d.active.map((a) => `${a.kind} ${a.name} ${a.version}`).join(", ");
    const failures = d.failures.map(([kind, reason]) => `${kind}: ${reason}`).join(", ");
    const healthText = failures ? failures : (d.presence === "online" ? "ok" : "–");
    return el("tr", { "data-device": d.device, "data-testid": "device-row" },
      el("td", {}, d.device),
      el("td", { class: "presence" }, el("span", { class: "badge " + d.presence, "data-testid": "presence" }, d.presence)),
      el("td", {}, d.agent_version || "–"),
      el("td", { class: "small" }, active || "–"),
      el("td", { "data-testid": "last-seen" }, ago(d.last_seen_unix_ms, data.now_unix_ms)),
      el("td", {}, h ? h.cpu_percent.toFixed(0) + " %" : "–"),
      el("td", {}, h ? `${bytes(h.mem_used_bytes)} / ${bytes(h.mem_total_bytes)}` : "–"),
      el("td", {}, h && h.temperature_c != null ? h.temperature_c.toFixed(1) + " °C" : "–"),
      el("td", { class: failures ? "bad" : "ok" }, healthText));
  });
  $("devices").tBodies[0].replaceChildren(...rows);
}

// ---- versions ------------------------------------------------------------

function bars(title, items, total) {
  const box = el("div", { class: "bars" }, el("h3", { class: "small muted" }, title));
  for (const it of items) {
    const fill = el("div", { class: "fill" });
    fill.style.width = (total ? (100 * it.devices) / total : 0) + "%";
    box.append(el("div", { class: "row", "data-testid": "version-row" },
      el("span", { class: "name", title: it.name }, it.name), el("div", { class: "track" }, fill), el("span", {}, it.devices)));
  }
  return box;
}

function renderVersions(data) {
  const agents = data.agents.map((a) => ({ name: "agent " + a.version, devices: a.devices }));
  const artifacts = data.artifacts.map((a) => ({ name: `${a.kind} ${a.name} ${a.version}`, devices: a.devices }));
  $("versions").replaceChildren(bars("Agent builds", agents, data.devices),
    bars("Active artifacts", artifacts.length ? artifacts : [{ name: "none reported", devices: 0 }], data.devices));
}

// ---- rollouts (GET /admin/rollouts, when the hub has them) -----------------

function gateText(g) {
  if (g == null || typeof g !== "object") return String(g);
  const name = g.name || g.gate || g.kind || "gate";
  const rest = Object.entries(g).filter(([k]) => !["name", "gate", "kind"].includes(k))
    .map(([k, v]) => `${k}=${typeof v === "number" ? +v.toFixed(4) : JSON.stringify(v)}`);
  return `${name}: ${rest.join(" ")}`;
}

async function renderRollouts() {
  const box = $("rollouts");
  let list;
  try {
    const r = await getJson("/admin/rollouts");
    list = r.body == null ? [] : Array.isArray(r.body) ? r.body : (r.body.rollouts || []);
  } catch (e) { list = []; }
  if (!list.length) { box.replaceChildren(el("p", { class: "muted" }, "no rollouts")); return; }
  const cards = [];
  for (const ro of list) {
    let detail = ro;
    try { const r = await getJson("/admin/rollouts/" + encodeURIComponent(ro.id)); if (r.body) detail = r.body; } catch (e) { /* keep the summary */ }
    const sizes = detail.stage_sizes || ro.stage_sizes || [];
    const stage = detail.stage != null ? detail.stage : ro.stage;
    const stages = el("div", { class: "stages" }, ...sizes.map((size, i) =>
      el("span", { class: "stage" + (i < stage ? " done" : i === stage ? " current" : ""), "data-testid": "stage" }, `${size} device${size === 1 ? "" : "s"}`)));
    // Audit rows are {id, entry}; the entry holds the transition and its numbers.
    const audit = (detail.audit || []).map((row) => row.entry || row).slice(-10).reverse().map((a) => el("tr", {},
      el("td", {}, a.at_ms ? new Date(a.at_ms).toLocaleString() : "–"),
      el("td", {}, `${a.from ?? ""} → ${a.to ?? ""}`),
      el("td", {}, typeof a.note === "object" ? JSON.stringify(a.note) : (a.note || "")),
      el("td", {}, (a.gates || []).map(gateText).join("; "))));
    const candidate = Array.isArray(detail.candidate)
      ? detail.candidate.map((c) => `${c.kind} ${c.name} ${c.version}`).join(", ")
      : (detail.candidate ?? "");
    cards.push(el("div", { class: "rollout", "data-testid": "rollout", "data-rollout": ro.id },
      el("strong", {}, ro.id), " ", el("span", { class: "badge unknown", "data-testid": "rollout-phase" }, detail.phase ?? ro.phase ?? "?"),
      el("div", { class: "small muted" }, candidate),
      stages,
      el("table", { class: "audit" }, el("tbody", {}, ...audit))));
  }
  box.replaceChildren(...cards);
}

// ---- fine-tuning (GET /admin/training) and corrections (/admin/feedback) ----

function lossChart(job) {
  const W = 400, H = 120, L = 40, R = 8, T = 8, B = 16;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Loss curve", "data-testid": "loss-curve" });
  const p = job.progress || {};
  const curve = (p.curve || []).map((c) => [c[0], c[1]]);
  const val = (p.validation || []).map((v) => [v.step, v.loss]);
  const all = curve.concat(val);
  if (!all.length) return svg;
  const x1 = Math.max(p.total_steps || 0, ...all.map((q) => q[0]), 1);
  const y1 = Math.max(...all.map((q) => q[1])) * 1.1 || 1;
  const sx = (x) => L + (x / x1) * (W - L - R);
  const sy = (y) => H - B - (y / y1) * (H - T - B);
  for (let i = 0; i <= 2; i++) {
    const y = (y1 * i) / 2;
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#e5e7eb" }));
    svg.append(Object.assign(svgEl("text", { x: L - 4, y: sy(y) + 3, "text-anchor": "end" }), { textContent: y.toFixed(2) }));
  }
  svg.append(Object.assign(svgEl("text", { x: W - R, y: H - 3, "text-anchor": "end" }), { textContent: "step " + x1 }));
  const line = (pts, color, dash) => {
    if (!pts.length) return;
    const d = pts.map((q, i) => `${i ? "L" : "M"}${sx(q[0]).toFixed(1)},${sy(q[1]).toFixed(1)}`).join(" ");
    svg.append(svgEl("path", { d, fill: "none", stroke: color, "stroke-width": 1.5, "stroke-dasharray": dash || "" }));
  };
  line(curve, COLORS[0]);
  line(val, COLORS[1], "4 3");
  for (const q of val) svg.append(svgEl("circle", { cx: sx(q[0]), cy: sy(q[1]), r: 2.5, fill: COLORS[1] }));
  return svg;
}

function trainingText(job) {
  const p = job.progress || {};
  const last = (p.curve || []).slice(-1)[0];
  let text = `job ${job.id} · ${job.status}` + (job.phase && job.phase !== job.status ? ` · ${job.phase}` : "");
  if (p.total_steps) text += ` · step ${p.step}/${p.total_steps}`;
  if (last) text += ` · loss ${last[1].toFixed(3)}`;
  if (p.tokens_per_s) text += ` · ${p.tokens_per_s.toFixed(0)} tok/s`;
  if (p.eta_s != null && job.status === "running" && job.phase === "training") text += ` · ETA ${Math.round(p.eta_s)} s`;
  return text;
}

function trainingResult(job) {
  const r = job.result;
  if (!r) return job.error ? el("p", { class: "small bad" }, job.error) : el("span", {});
  const e = r.evaluation;
  return el("p", { class: "small", "data-testid": "training-result" },
    `${r.adapter.name} ${r.adapter.version}: held-out score ${e.current_mean.toFixed(3)} → ${e.candidate_mean.toFixed(3)} ` +
    `on ${e.items} items (${e.decision.verdict}); ${r.decision.replace(/_/g, " ")}` + (r.rollout ? ` (${r.rollout})` : ""));
}

async function renderTraining() {
  const box = $("training");
  const r = await getJson("/admin/training?limit=5");
  const jobs = r.body ? r.body.jobs : [];
  if (!jobs.length) { box.replaceChildren(el("p", { class: "muted" }, "no training jobs")); return; }
  box.replaceChildren(...jobs.map((job) => {
    const live = job.status === "queued" || job.status === "running";
    const cancel = live ? el("button", { type: "button", onclick: async () => { await send("POST", `/admin/training/${job.id}/cancel`); refresh(); } }, "Cancel") : "";
    return el("div", { class: "job", "data-testid": "training-job", "data-status": job.status },
      el("p", { "data-testid": "training-status" }, trainingText(job), " ", cancel),
      lossChart(job), trainingResult(job));
  }));
}

async function saveCorrection(id, input, status) {
  const answer = input.value.trim();
  if (!answer) { status.textContent = "write the answer first"; return; }
  const r = await send("POST", "/admin/feedback/corrections", { feedback: id, answer });
  if (r.ok) { status.textContent = "saved"; input.dataset.saved = answer; }
  else { const b = await r.json().catch(() => null); status.textContent = (b && b.error && b.error.message) || ("failed: " + r.status); }
}

async function renderFeedback() {
  const box = $("feedback");
  // Typing into a correction must not be wiped by the next poll.
  if (box.contains(document.activeElement)) return;
  const r = await getJson("/admin/feedback?rating=thumbs_down&limit=10");
  const rows = r.body ? r.body.feedback : [];
  if (!rows.length) { box.replaceChildren(el("p", { class: "muted" }, "no thumbs-down answers")); return; }
  box.replaceChildren(...rows.map((f) => {
    const input = el("input", { type: "text", value: f.correction || "", placeholder: "the right answer", "aria-label": "Correct answer", "data-testid": "correction-input" });
    const status = el("span", { class: "muted small", "data-testid": "correction-status" }, f.correction ? "corrected" : "");
    const save = el("button", { type: "button", "data-testid": "correction-save", onclick: () => saveCorrection(f.id, input, status) }, "Save");
    return el("div", { class: "rated", "data-feedback": f.id },
      el("p", { class: "small" }, el("strong", {}, f.question)),
      el("p", { class: "small muted" }, f.answer),
      el("p", {}, input, " ", save, " ", status));
  }));
}

// ---- quality charts ------------------------------------------------------

function lineChart(svg, lines, opts) {
  const W = 400, H = 160, L = 40, R = 8, T = 8, B = 18;
  svg.replaceChildren();
  const xs = lines.flatMap((l) => l.points.map((p) => p[0]));
  const ys = lines.flatMap((l) => l.points.map((p) => p[1])).filter((y) => y != null);
  if (!xs.length || !ys.length) {
    svg.append(Object.assign(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }), { textContent: "no answers in this window" }));
    return;
  }
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 3600000);
  const y1 = Math.max(opts.minTop || 0, ...ys) * 1.1 || 1;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - (y / y1) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = (y1 * i) / 4;
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#e5e7eb" }));
    svg.append(Object.assign(svgEl("text", { x: L - 4, y: sy(y) + 3, "text-anchor": "end" }), { textContent: opts.fmt(y) }));
  }
  svg.append(Object.assign(svgEl("text", { x: L, y: H - 4 }), { textContent: new Date(x0).toLocaleString() }));
  svg.append(Object.assign(svgEl("text", { x: W - R, y: H - 4, "text-anchor": "end" }), { textContent: new Date(x1).toLocaleString() }));
  for (const l of lines) {
    const pts = l.points.filter((p) => p[1] != null);
    if (!pts.length) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    svg.append(svgEl("path", { d, fill: "none", stroke: l.color, "stroke-width": 1.5, "stroke-dasharray": l.dash || "" }));
    for (const p of pts) svg.append(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 1.8, fill: l.color }));
  }
}

function renderQuality(data) {
  const series = data.series;
  const color = (i) => COLORS[i % COLORS.length];
  $("legend").replaceChildren(...series.map((s, i) => {
    const sw = el("span", { class: "swatch" }); sw.style.background = color(i);
    return el("span", {}, sw, s.label);
  }));
  const line = (key, dash) => series.map((s, i) => ({ color: color(i), dash, points: s.points.map((p) => [p.hour_unix_ms, p[key]]) }));
  lineChart($("chart-escalation"), line("escalation_rate"), { fmt: (y) => (100 * y).toFixed(0) + "%", minTop: 0.05 });
  lineChart($("chart-down"), line("thumbs_down_rate"), { fmt: (y) => (100 * y).toFixed(0) + "%", minTop: 0.05 });
  lineChart($("chart-latency"), [...line("latency_p50_ms"), ...line("latency_p95_ms", "4 2")], { fmt: (y) => Math.round(y) });
  lineChart($("chart-answers"), line("answers"), { fmt: (y) => Math.round(y) });
  let answers = 0, p95 = null, p50 = null;
  const rows = series.map((s) => {
    const t = s.totals; answers += t.answers;
    if (t.latency_p95_ms != null) p95 = Math.max(p95 || 0, t.latency_p95_ms);
    if (t.latency_p50_ms != null) p50 = Math.max(p50 || 0, t.latency_p50_ms);
    return el("tr", { "data-testid": "quality-row" }, el("td", { class: "small" }, s.label), el("td", {}, t.answers),
      el("td", {}, t.answers_per_hour.toFixed(1)), el("td", {}, pct(t.escalation_rate)), el("td", {}, pct(t.thumbs_down_rate)), el("td", {}, pct(t.error_rate)),
      el("td", {}, ms(t.latency_p50_ms)), el("td", {}, ms(t.latency_p95_ms)));
  });
  $("quality").tBodies[0].replaceChildren(...rows);
  $("answers-total").textContent = answers;
  $("answers-rate").textContent = `over ${data.window_hours} h`;
  $("latency-p95").textContent = ms(p95);
  $("latency-p50").textContent = "p50 " + ms(p50) + " (slowest version)";
}

// ---- ROI -----------------------------------------------------------------

const ROI_FIELDS = [["tickets_per_month", "roi-tickets"], ["handle_time_minutes", "roi-handle"],
  ["agent_cost_per_hour", "roi-cost"], ["implementation_cost", "roi-impl"]];

function roiInputs() {
  const out = {};
  for (const [key, id] of ROI_FIELDS) {
    const v = parseFloat($(id).value);
    out[key] = Number.isFinite(v) && v >= 0 ? v : 0;
  }
  return out;
}

// The same formula as hub/src/roi.rs.
function computeRoi(i, deflection) {
  const rate = Math.min(1, Math.max(0, deflection || 0));
  const deflected = i.tickets_per_month * rate;
  const hours = (deflected * i.handle_time_minutes) / 60;
  const monthly = hours * i.agent_cost_per_hour;
  return {
    deflection_rate: rate, tickets_deflected_per_month: deflected, hours_saved_per_month: hours, monthly_savings: monthly,
    payback_months: monthly > 0 ? i.implementation_cost / monthly : null,
    first_year_roi: i.implementation_cost > 0 ? (12 * monthly - i.implementation_cost) / i.implementation_cost : null,
  };
}

function renderRoiFigures() {
  const f = computeRoi(roiInputs(), measuredDeflection);
  $("roi-deflection").textContent = pct(f.deflection_rate);
  $("deflection").textContent = pct(f.deflection_rate);
  $("roi-tickets-deflected").textContent = f.tickets_deflected_per_month.toFixed(0);
  $("roi-hours").textContent = f.hours_saved_per_month.toFixed(1);
  $("roi-savings").textContent = money(f.monthly_savings);
  $("roi-payback").textContent = f.payback_months == null ? "never" : f.payback_months.toFixed(1) + " months";
  $("roi-first-year").textContent = f.first_year_roi == null ? "–" : pct(f.first_year_roi);
}

function applyRoi(data) {
  measuredDeflection = data.deflection.rate;
  if (!roiInputsLoaded || !roiDirty) {
    for (const [key, id] of ROI_FIELDS) if (document.activeElement !== $(id)) $(id).value = data.inputs[key];
    roiInputsLoaded = true;
  }
  $("roi-deflection").title = `${data.deflection.deflected} of ${data.deflection.answers} answers over ${data.window_days} days`;
  renderRoiFigures();
  const r = data.routing, micros = (m) => (m / 1e6).toFixed(4);
  $("route-local").textContent = r.local_answers;
  $("route-upstream").textContent = r.upstream_answers;
  $("route-cost").textContent = micros(r.upstream_cost_micros);
  $("route-cost-each").textContent = micros(r.cost_per_upstream_answer_micros);
  $("route-saved").textContent = micros(r.local_savings_micros);
}

async function saveRoi(event) {
  event.preventDefault();
  const r = await send("POST", "/admin/dashboard/roi", roiInputs());
  $("roi-status").textContent = r.ok ? "saved" : "not saved (" + r.status + ")";
  if (r.ok) { roiDirty = false; applyRoi(await r.json()); }
}

// ---- polling -------------------------------------------------------------

let lastOk = 0;
let timer = null;
let inFlight = false;
async function refresh() {
  clearTimeout(timer);
  if (inFlight) return;
  inFlight = true;
  try {
    const hours = $("window").value;
    const [devices, versions, quality, roi] = await Promise.all([
      getJson("/admin/dashboard/devices"), getJson("/admin/dashboard/versions"),
      getJson("/admin/dashboard/quality?hours=" + hours), getJson("/admin/dashboard/roi")]);
    if (devices.body) renderDevices(devices.body);
    if (versions.body) renderVersions(versions.body);
    if (quality.body) renderQuality(quality.body);
    if (roi.body) applyRoi(roi.body);
    await renderRollouts();
    await renderTraining();
    await renderFeedback();
    lastOk = Date.now();
    const live = $("live");
    live.textContent = "live · updated " + new Date(lastOk).toLocaleTimeString();
    live.classList.remove("stale");
    live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
  } catch (e) {
    $("live").textContent = "hub unreachable: " + e.message;
    $("live").classList.add("stale");
  } finally {
    inFlight = false;
    timer = setTimeout(refresh, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const [, id] of ROI_FIELDS) $(id).addEventListener("input", () => { roiDirty = true; $("roi-status").textContent = "unsaved"; renderRoiFigures(); });
  $("roi-form").addEventListener("submit", saveRoi);
  $("window").addEventListener("change", () => refresh());
  if (document.querySelector('meta[name="logout"]').content === "true") {
    const b = $("logout"); b.hidden = false;
    b.addEventListener("click", async () => { await send("POST", "/logout"); window.location.assign("/login"); });
  }
  refresh();
});
