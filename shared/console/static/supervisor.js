// scanguard supervisor: every open bag with its state, and each operator's figures.
"use strict";

const FIELDS = [
  ["decided", (r) => r.decided], ["searched", (r) => r.searched],
  ["tip_hits", (r) => r.tip_hits], ["tip_misses", (r) => r.tip_misses],
  ["hit_rate", (r) => pct(r.hit_rate)], ["benign", (r) => r.benign],
  ["false_alarms", (r) => r.false_alarms], ["false_alarm_rate", (r) => pct(r.false_alarm_rate)],
  ["d_prime", (r) => (r.d_prime === null ? "–" : r.d_prime.toFixed(2))],
  ["median_time_to_decision_ms", (r) => seconds(r.median_time_to_decision_ms)],
  ["overdue_decided", (r) => r.overdue_decided],
];

function reportRow(r, tag = "td") {
  return el("tr", { dataset: { operator: r.operator } }, el("td", { class: "text", text: r.operator }),
    ...FIELDS.map(([name, show]) => el(tag, { dataset: { field: name }, text: String(show(r)) })));
}

function showQueue(q) {
  const pools = $("pools");
  pools.replaceChildren(...Object.entries(q.pools).map(([name, c]) => el("div", { class: "pool-card", dataset: { pool: name } },
    el("h3", { text: `pool ${name}` }),
    el("div", { class: "counts" },
      ...["queued", "taken", "returned", "overdue"].map((s) => el("div", { class: "stat" },
        el("span", { class: "label", text: s }), el("span", { class: "value", dataset: { count: s }, text: String(c[s]) })))))));
  const rows = q.bags.map((b) => el("tr", { class: b.overdue ? "overdue" : "", dataset: { bagId: b.bag_id, state: b.state, overdue: b.overdue } },
    el("td", { class: "text", text: b.bag_id }), el("td", { class: "text", text: b.pool }),
    el("td", { class: "text", text: b.scanner_id }),
    el("td", { class: "text", text: b.decision + (b.classes.length ? `: ${b.classes.join(", ")}` : "") }),
    el("td", { class: `text state-${b.state}`, text: b.state }),
    el("td", { class: "text", text: b.operator || "" }),
    el("td", { text: when(b.queued_at) }), el("td", { text: b.taken_at ? when(b.taken_at) : "" }),
    el("td", {}, document.createTextNode(`${b.waiting_s.toFixed(0)} s `),
       b.overdue ? el("span", { class: "badge overdue", text: "overdue" }) : null)));
  $("open").tBodies[0].replaceChildren(...rows);
  $("open-empty").hidden = rows.length > 0;
  $("s-open").textContent = q.bags.length;
  $("s-overdue").textContent = q.bags.filter((b) => b.overdue).length;
  $("s-returns").textContent = Object.entries(q.counters).filter(([k]) => k.startsWith("returns:")).reduce((n, [, v]) => n + v, 0);
}

async function refresh() {
  const params = new URLSearchParams({ window_s: $("window").value });
  if ($("report-pool").value) params.set("pool", $("report-pool").value);
  const [queue, report] = await Promise.all([api("/api/supervisor/queue"), api(`/api/supervisor/report?${params}`)]);
  showQueue(queue);
  $("report").tBodies[0].replaceChildren(...report.operators.map((r) => reportRow(r)));
  $("report").tFoot.replaceChildren(reportRow(report.all));
  $("report-note").textContent = `d′ = Z(H′) − Z(F′), ${report.correction}. Ground truth — ${report.truth}.`;
}

async function start() {
  const config = await api("/api/config");
  $("namespace").textContent = config.namespace;
  for (const pool of config.identity.pools) $("report-pool").append(el("option", { value: pool, text: pool }));
  $("window").addEventListener("change", refresh);
  $("report-pool").addEventListener("change", refresh);
  await refresh();
  setInterval(refresh, 5000);
}

start();
