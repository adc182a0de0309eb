// scanguard operator console: alerts over server-sent events, filters, detail view, verdicts.
// Event data is only ever placed with textContent/attributes, never parsed as HTML.
"use strict";

const COLOURS = ["#4aa3ff", "#ff5c5c", "#f0b429", "#3ecf8e", "#c77dff", "#ff8fab", "#9ad1d4"];
const state = { cards: new Map(), scanners: new Set(), labels: new Set(), newest: null };
// $, el, svg, api, when and pct come from common.js, loaded first.
const artefactUrl = (event, kind) => `/api/artefacts/${encodeURIComponent(event.event_id)}/${kind}`;
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function addOption(select, set, value) {
  if (set.has(value)) return;
  set.add(value);
  select.append(el("option", { value, text: value }));
}

function verdictText(verdict) {
  if (!verdict) return "";
  const name = verdict.verdict === "confirmed" ? "confirmed" : "false alarm";
  return `${name} by ${verdict.operator}`;
}

function markVerdict(card, verdict) {
  card.classList.remove("judged-confirmed", "judged-false_alarm");
  const label = card.querySelector(".verdict");
  label.className = "verdict";
  if (!verdict) return;
  card.classList.add(`judged-${verdict.verdict}`);
  label.classList.add(verdict.verdict);
  label.textContent = verdictText(verdict);
}

function card(alert, fresh) {
  const event = alert.event;
  const classes = el("ul", { class: "classes" },
    ...event.detections.map((d) => el("li", { text: `${d.label} ${pct(d.probability)}` })));
  const node = el("article", {
      class: fresh ? "alert fresh" : "alert",
      dataset: { entryId: alert.entry_id, eventId: event.event_id, scanner: event.scanner_id,
                 labels: event.detections.map((d) => d.label).join(",") },
      onclick: () => openDetail(alert.entry_id),
    },
    el("div", { class: "images" },
      el("figure", {}, el("img", { class: "masked", src: artefactUrl(event, "masked"), alt: "erased image" }),
         el("figcaption", { text: "erased" })),
      el("figure", {}, el("img", { class: "heatmap", src: artefactUrl(event, "heatmap"), alt: "attention heat-map" }),
         el("figcaption", { text: "attention" }))),
    el("div", { class: "row" }, el("span", { class: "scanner", text: event.scanner_id }),
       el("time", { datetime: event.decided_at, text: when(event.decided_at) })),
    classes,
    el("div", { class: "row small", text:
      `${plural(event.iterations, "iteration")} · ${plural(event.forward_passes, "forward")} · ${Math.round(event.latency_ms)} ms` }),
    el("div", { class: "actions" },
      el("button", { class: "confirm", dataset: { verdict: "confirmed" }, text: "Confirm",
                     onclick: (e) => { e.stopPropagation(); judge(alert, "confirmed"); } }),
      el("button", { class: "false-alarm", dataset: { verdict: "false_alarm" }, text: "False alarm",
                     onclick: (e) => { e.stopPropagation(); judge(alert, "false_alarm"); } }),
      el("span", { class: "verdict" })));
  markVerdict(node, alert.verdict);
  return node;
}

function visible(node) {
  const scanner = $("f-scanner").value;
  const label = $("f-label").value;
  if (scanner && node.dataset.scanner !== scanner) return false;
  return !label || node.dataset.labels.split(",").includes(label);
}

function applyFilters() {
  let shown = 0;
  for (const node of state.cards.values()) {
    node.hidden = !visible(node);
    if (!node.hidden) shown += 1;
  }
  $("count").textContent = `${shown} of ${state.cards.size} alerts`;
  $("empty").hidden = state.cards.size > 0;
}

function addAlert(alert, { fresh = false, atTop = true } = {}) {
  if (state.cards.has(alert.entry_id)) return;
  const node = card(alert, fresh);
  state.cards.set(alert.entry_id, node);
  addOption($("f-scanner"), state.scanners, alert.event.scanner_id);
  for (const d of alert.event.detections) addOption($("f-label"), state.labels, d.label);
  const list = $("alerts");
  if (atTop) list.prepend(node); else list.append(node);
  if (!state.newest || atTop) state.newest = alert.entry_id;
  applyFilters();
}

async function judge(alert, verdict) {
  const operator = $("operator").value.trim() || "operator";
  localStorage.setItem("scanguard-operator", operator);
  const body = { entry_id: alert.entry_id, event_id: alert.event.event_id, verdict, operator };
  const node = state.cards.get(alert.entry_id);
  try {
    await api("/api/verdicts", { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify(body) });
    alert.verdict = { verdict, operator, at: new Date().toISOString() };
    markVerdict(node, alert.verdict);
  } catch (error) {
    node.querySelector(".verdict").textContent = `not saved: ${error.message}`;
  }
}

function fact(list, name, value) {
  list.append(el("dt", { text: name }), el("dd", { text: value }));
}

function drawChart(event) {
  const chart = $("d-chart");
  chart.replaceChildren();
  const labels = event.model.labels.slice(1);
  const steps = event.trace.length;
  const x = (i) => (steps > 1 ? (i / (steps - 1)) * 380 + 10 : 200);
  const y = (p) => 150 - p * 140;
  const th = event.thresholds.detect_th;
  chart.append(svg("line", { x1: 10, x2: 390, y1: y(th), y2: y(th), stroke: "#8a98a8", "stroke-dasharray": "4 4" }));
  labels.forEach((label, n) => {
    const points = event.trace.map((probs, i) => `${x(i)},${y(probs[label] ?? 0)}`).join(" ");
    const colour = COLOURS[n % COLOURS.length];
    chart.append(svg("polyline", { points, fill: "none", stroke: colour, "stroke-width": 2 }));
    const tag = svg("text", { x: 386, y: 14 + n * 13, fill: colour, class: "legend", "text-anchor": "end" });
    tag.textContent = label;
    chart.append(tag);
  });
}

function drawTrace(event) {
  const table = $("d-trace");
  const labels = event.model.labels;
  const head = el("tr", {}, el("th", { text: "forward" }), ...labels.map((l) => el("th", { text: l })));
  const rows = event.trace.map((probs, i) => el("tr", {},
    el("td", { text: i === 0 ? "original" : `iteration ${i}` }),
    ...labels.map((l, c) => el("td", { class: c > 0 && (probs[l] ?? 0) > event.thresholds.detect_th ? "over" : "",
                                       text: pct(probs[l] ?? 0) }))));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

async function openDetail(entryId) {
  const alert = await api(`/api/alerts/${encodeURIComponent(entryId)}`);
  const event = alert.event;
  $("d-title").textContent = `${event.scanner_id} · ${event.detections.map((d) => d.label).join(", ")}`;
  $("d-masked").src = artefactUrl(event, "masked");
  $("d-heatmap").src = artefactUrl(event, "heatmap");
  const facts = $("d-facts");
  facts.replaceChildren();
  fact(facts, "decided", when(event.decided_at));
  fact(facts, "classes", event.detections.map((d) => `${d.label} ${pct(d.probability)}`).join(", "));
  fact(facts, "iterations", `${event.iterations} (${event.forward_passes} forward passes)`);
  fact(facts, "latency", `${Math.round(event.latency_ms)} ms`);
  fact(facts, "frame", event.frame_id);
  fact(facts, "event", event.event_id);
  fact(facts, "model", `${event.model.id} · worker ${event.worker_id}`);
  fact(facts, "verdict", verdictText(alert.verdict) || "none yet");
  drawChart(event);
  drawTrace(event);
  $("detail").hidden = false;
  $("detail").dataset.entryId = entryId;
  history.replaceState(null, "", `#alert/${entryId}`);
}

function closeDetail() {
  $("detail").hidden = true;
  history.replaceState(null, "", location.pathname);
}

function showStatus(s) {
  if (s.error) { setLive(false, s.error); return; }
  $("st-backlog").textContent = s.backlog;
  $("st-workers").textContent = s.workers;
  $("st-rate").textContent = s.decisions_per_s.toFixed(1);
  $("st-dead").textContent = s.dead_letters;
}

function setLive(on, text) {
  const live = $("live");
  live.className = on ? "live on" : "live off";
  live.textContent = text;
}

function connect() {
  const source = new EventSource(`/api/stream?after=${encodeURIComponent(state.newest || "0-0")}`);
  source.addEventListener("open", () => setLive(true, "live"));
  source.addEventListener("error", () => setLive(false, "reconnecting"));
  source.addEventListener("status", (e) => showStatus(JSON.parse(e.data)));
  source.addEventListener("alert", (e) => addAlert(JSON.parse(e.data), { fresh: true }));
}

async function start() {
  const config = await api("/api/config");
  $("namespace").textContent = config.namespace;
  $("operator").value = localStorage.getItem("scanguard-operator") || config.operator;
  const { alerts } = await api("/api/alerts");
  for (const alert of alerts) addAlert(alert, { atTop: false });
  if (alerts.length) state.newest = alerts[0].entry_id;
  applyFilters();
  $("f-scanner").addEventListener("change", applyFilters);
  $("f-label").addEventListener("change", applyFilters);
  $("d-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDetail(); });
  connect();
  const linked = location.hash.match(/^#alert\/(\d+-\d+)$/);
  if (linked) openDetail(linked[1]);
}

start();
