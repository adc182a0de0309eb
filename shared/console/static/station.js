// scanguard operator station: take the oldest bag, look at every view with the machine's
// boxes, decide clear or search. The server knows who holds which bag; this page only asks.
"use strict";

const COLOURS = ["#4aa3ff", "#ff5c5c", "#f0b429", "#3ecf8e", "#c77dff", "#ff8fab", "#9ad1d4"];
// `turn` counts the page's own moves (take a bag, decide one): an answer to a refresh
// sent before or during a move describes the station as it was, and is dropped.
const state = { config: null, bag: null, mode: "original", marks: new Map(), busy: false, leaseTimer: null, turn: 0 };

// -- identity: a token fixes it; on loopback the operator picks an id and a pool --------

function identityHeaders() {
  const who = state.config.identity;
  if (who.role === "operator") return {};
  return { "X-Scanguard-Operator": $("operator").value.trim(), "X-Scanguard-Pool": $("pool").value };
}

function stationApi(path, options = {}) {
  const headers = { ...identityHeaders(), ...(options.headers || {}) };
  return api(path, { ...options, headers });
}

function post(path, body) {
  return stationApi(path, { method: "POST", headers: { "Content-Type": "application/json" },
                            body: JSON.stringify(body) });
}

function showIdentity() {
  const who = state.config.identity;
  $("nav-supervisor").hidden = !who.supervisor;
  if (who.role === "operator") {
    $("who").textContent = `operator ${who.operator} · pool ${who.pool}`;
    return;
  }
  $("choose-operator").hidden = false;
  $("choose-pool").hidden = false;
  for (const pool of who.pools) $("pool").append(el("option", { value: pool, text: pool }));
  $("operator").value = localStorage.getItem("scanguard-operator") || state.config.operator;
  $("pool").value = localStorage.getItem("scanguard-pool") || who.pools[0];
  if (!who.pools.includes($("pool").value)) $("pool").value = who.pools[0];
  const remember = () => {
    localStorage.setItem("scanguard-operator", $("operator").value.trim());
    localStorage.setItem("scanguard-pool", $("pool").value);
    refresh();
  };
  $("operator").addEventListener("change", remember);
  $("pool").addEventListener("change", remember);
}

// -- the bag ------------------------------------------------------------------------------

function fact(list, name, value, cls) {
  list.append(el("div", { class: cls ? `fact ${cls}` : "fact" }, el("dt", { text: name }), el("dd", { text: value })));
}

function topThreat(view, labels) {
  // The label a box carries: the view's strongest threat class at its last forward.
  const last = view.trace.length ? view.trace[view.trace.length - 1] : {};
  let best = null;
  for (const label of labels.slice(1)) {
    const p = last[label];
    if (p !== undefined && (best === null || p > best.p)) best = { label, p };
  }
  return best;
}

function roiNode(view, roi, index, labels) {
  const key = `${view.view}:${index}`;
  const threat = topThreat(view, labels);
  const text = threat ? `${threat.label} ${pct(threat.p)}` : `peak ${pct(roi.peak)}`;
  const node = el("div", { class: "roi", dataset: { view: view.view, roi: index }, title: `attention peak ${pct(roi.peak)}, mean ${pct(roi.mean)}` },
    el("span", { class: "roi-label", text }));
  node.style.left = `${(100 * roi.x) / view.width}%`;
  node.style.top = `${(100 * roi.y) / view.height}%`;
  node.style.width = `${(100 * roi.w) / view.width}%`;
  node.style.height = `${(100 * roi.h) / view.height}%`;
  node.addEventListener("click", () => {
    const next = { undefined: "confirm", confirm: "reject", reject: undefined }[state.marks.get(key)];
    if (next) state.marks.set(key, next); else state.marks.delete(key);
    node.dataset.mark = next || "";
  });
  return node;
}

function traceChart(view, labels) {
  const chart = svg("svg", { class: "chart", viewBox: "0 0 300 90" });
  const steps = view.trace.length;
  if (!steps) {
    const note = svg("text", { x: 150, y: 48, "text-anchor": "middle", class: "legend", fill: "#8a98a8" });
    note.textContent = "no machine trace for this view";
    chart.append(note);
    return chart;
  }
  const x = (i) => (steps > 1 ? (i / (steps - 1)) * 280 + 10 : 150);
  const y = (p) => 82 - p * 74;
  labels.slice(1).forEach((label, n) => {
    const colour = COLOURS[n % COLOURS.length];
    const points = view.trace.map((probs, i) => `${x(i)},${y(probs[label] ?? 0)}`).join(" ");
    chart.append(svg("polyline", { points, fill: "none", stroke: colour, "stroke-width": 2 }));
    view.trace.forEach((probs, i) => chart.append(svg("circle", { cx: x(i), cy: y(probs[label] ?? 0), r: 2.5, fill: colour })));
    const tag = svg("text", { x: 296, y: 12 + n * 13, fill: colour, class: "legend", "text-anchor": "end" });
    tag.textContent = label;
    chart.append(tag);
  });
  return chart;
}

function traceTable(view, labels) {
  const head = el("tr", {}, el("th", { text: "forward" }), ...labels.map((l) => el("th", { text: l })));
  const rows = view.trace.map((probs, i) => el("tr", {},
    el("td", { text: i === 0 ? "original" : `iteration ${i}` }),
    ...labels.map((l) => el("td", { text: pct(probs[l] ?? 0) }))));
  return el("table", { class: "trace" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

function viewCard(view, bag) {
  const labels = bag.model ? bag.model.labels : [];
  const frame = el("div", { class: "frame" });
  frame.style.aspectRatio = `${view.width} / ${view.height}`;
  const img = el("img", { class: "image", alt: `view ${view.view + 1}`, src: view.images.original || "" });
  img.dataset.kind = "original";
  frame.append(img);
  const boxes = el("div", { class: "boxes" }, ...view.rois.map((roi, i) => roiNode(view, roi, i, labels)));
  frame.append(boxes);
  const classes = view.detections.map((d) => `${d.label} ${pct(d.probability)}`).join(", ") || "no class over the threshold";
  return el("article", { class: "view", dataset: { view: view.view } },
    el("div", { class: "view-head" },
      el("span", { class: "view-name", text: `view ${view.view + 1} of ${bag.views_expected}` }),
      el("span", { class: `decision ${view.decision}`, text: view.decision }),
      el("span", { class: "small", text: classes })),
    frame,
    el("div", { class: "view-trace" }, traceChart(view, labels), traceTable(view, labels)));
}

function setMode(mode) {
  state.mode = mode;
  for (const button of document.querySelectorAll(".mode")) button.classList.toggle("on", button.dataset.mode === mode);
  if (!state.bag) return;
  for (const view of state.bag.views) {
    const img = document.querySelector(`.view[data-view="${view.view}"] img.image`);
    const src = view.images[mode];
    img.classList.toggle("missing", !src);
    img.src = src || view.images.original || "";
    img.dataset.kind = src ? mode : "original";
    img.title = src ? "" : `no ${mode} image for this view (the machine cleared it)`;
  }
  document.body.classList.toggle("boxes-off", mode !== "original" || !$("show-boxes").checked);
}

function showBag(bag) {
  if (state.bag && bag && state.bag.bag_id === bag.bag_id) { showLease(bag); return; }
  state.bag = bag;
  state.marks = new Map();
  $("bag").hidden = !bag;
  $("empty").hidden = Boolean(bag) || !$("feedback").hidden;
  if (!bag) { showLease(null); return; }
  $("feedback").hidden = true;
  $("bag").dataset.bagId = bag.bag_id;
  const facts = $("facts");
  facts.replaceChildren();
  fact(facts, "bag", bag.bag_id, "bag-id");
  fact(facts, "scanner", bag.scanner_id);
  fact(facts, "captured", when(bag.captured_at));
  fact(facts, "machine", `${bag.decision}${bag.classes.length ? ": " + bag.classes.map((c) => `${c.label} ${pct(c.probability)}`).join(", ") : ""}`, `machine ${bag.decision}`);
  fact(facts, "model", bag.model ? bag.model.id : "–");
  fact(facts, "queued", when(bag.queued_at), bag.overdue ? "overdue" : "");
  if (bag.missing_views.length) fact(facts, "missing views", bag.missing_views.map((v) => v + 1).join(", "), "overdue");
  $("views").replaceChildren(...bag.views.map((v) => viewCard(v, bag)));
  $("views").dataset.count = bag.views.length;
  setMode("original");
  enableDecision(true);
  showLease(bag);
}

function showLease(bag) {
  clearInterval(state.leaseTimer);
  if (!bag) { $("lease").textContent = "–"; return; }
  const tick = () => {
    const left = Math.max(0, Date.parse(bag.lease_expires_at) - Date.now());
    $("lease").textContent = `${Math.ceil(left / 1000)} s`;
    $("lease").classList.toggle("low", left < 15_000);
    if (left <= 0) { clearInterval(state.leaseTimer); leaseLost("your lease expired; the bag went back to the queue"); }
  };
  tick();
  state.leaseTimer = setInterval(tick, 500);
}

function leaseLost(text) {
  enableDecision(false);
  say(text, "warn");
}

function enableDecision(on) {
  $("clear").disabled = !on;
  $("search").disabled = !on;
}

function say(text, kind = "") {
  $("message").textContent = text;
  $("message").className = kind ? `message ${kind}` : "message";
}

function showQueue(queue) {
  $("q-waiting").textContent = queue.waiting;
  $("q-returned").textContent = queue.returned;
  $("next").textContent = queue.total ? `Next bag (${queue.total})` : "Next bag";
}

// -- actions ------------------------------------------------------------------------------

async function refresh() {
  const turn = state.turn;
  try {
    const me = await stationApi("/api/station");
    if (state.busy || turn !== state.turn) return;  // a move overtook this answer
    showQueue(me.queue);
    if (state.bag && !me.bag && !$("bag").hidden) { leaseLost("your lease expired; the bag went back to the queue"); return; }
    if (me.bag) showBag(me.bag);
  } catch (error) {
    say(error.message, "warn");
  }
}

async function takeNext() {
  if (state.busy) return;
  if (state.bag && !$("bag").hidden && !$("clear").disabled) { say("decide the bag in hand first", "warn"); return; }
  state.busy = true;
  state.turn += 1;
  $("next").disabled = true;
  try {
    const me = await post("/api/station/next", {});
    showQueue(me.queue);
    state.bag = null;
    $("feedback").hidden = true;
    if (me.bag) { showBag(me.bag); say(""); } else { showBag(null); say("the queue is empty"); }
  } catch (error) {
    say(error.message, "warn");
  } finally {
    state.turn += 1;
    state.busy = false;
    $("next").disabled = false;
  }
}

async function decide(decision) {
  if (!state.bag || state.busy || $("clear").disabled) return;
  state.busy = true;
  state.turn += 1;
  enableDecision(false);
  const rois = [...state.marks].map(([key, mark]) => {
    const [view, roi] = key.split(":").map(Number);
    return { view, roi, mark };
  });
  try {
    const done = await post("/api/station/verdict", { bag_id: state.bag.bag_id, decision, rois })
      .finally(() => { state.turn += 1; });  // refreshes sent meanwhile may predate the verdict
    clearInterval(state.leaseTimer);
    $("lease").textContent = "–";
    $("bag").hidden = true;
    $("feedback").hidden = false;
    $("feedback").dataset.decision = done.decision;
    $("verdict-line").textContent =
      `${done.bag_id}: ${done.decision} by ${done.operator} after ${seconds(done.time_to_decision_ms)}`;
    showTip(done.tip);
    say("");
    refresh();
  } catch (error) {
    if (error.status === 409 || error.status === 404) leaseLost(error.message);
    else { say(error.message, "warn"); enableDecision(true); }
  } finally {
    state.busy = false;
  }
}

function showTip(tip) {
  const line = $("tip-line");
  line.hidden = !tip;
  $("feedback").dataset.tipResult = tip ? tip.result : "";
  if (!tip) return;
  line.className = `tip-line ${tip.result}`;
  line.textContent = `TIP: ${tip.label} (${tip.kind}) — ${tip.result === "hit" ? "found" : "missed"}`;
}

async function start() {
  state.config = await api("/api/config");
  $("namespace").textContent = state.config.namespace;
  showIdentity();
  $("next").addEventListener("click", takeNext);
  $("clear").addEventListener("click", () => decide("clear"));
  $("search").addEventListener("click", () => decide("search"));
  for (const button of document.querySelectorAll(".mode")) button.addEventListener("click", () => setMode(button.dataset.mode));
  $("show-boxes").addEventListener("change", () => setMode(state.mode));
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if (e.key === "n" || e.key === "N") takeNext();
    else if (e.key === "c" || e.key === "C") decide("clear");
    else if (e.key === "s" || e.key === "S") decide("search");
  });
  await refresh();
  setInterval(refresh, 3000);
}

start();
