// FundFlow console: plain JavaScript, no build step, no third-party code.
// Every value from the API is set as text (never as HTML).
"use strict";

const state = { customer: null, feed: [], stream: null };
const MAX_FEED = 200;
// Findings a retraction took back (docs/events.md, "Retractions"): struck through wherever listed.
const withdrawn = new Set();
const MAX_WITHDRAWN = 5000;

function noteRetractions(findings) {
  for (const f of findings) {
    if (!f.retracts) continue;
    withdrawn.add(f.retracts);
    if (withdrawn.size > MAX_WITHDRAWN) withdrawn.delete(withdrawn.values().next().value);
  }
}

function headers() { return authHeaders(); }

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) { askToken(); throw new Error("unauthorized"); }
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.statusText);
  return response.json();
}

tokenPrompt(() => start());
addCategories($("f-category"));

// ---- live alert feed -------------------------------------------------------
const SEV = { high: "HIGH", medium: "MED", low: "LOW", info: "INFO" };

function alertItem(f, fresh) {
  const who = el("a", { onclick: () => showCustomer(f.customer_id), "data-customer": f.customer_id }, f.customer_id);
  const extra = f.type === "recommendation" && f.amount ? ` · 建议归集 ${f.amount} → ${f.product}` : f.type === "push" ? ` · push ${f.channel}` : "";
  const retraction = typeof f.retracts === "string" && f.retracts !== "";
  const classes = `alert ${f.severity}${fresh ? " fresh" : ""}${retraction ? " retraction" : ""}${withdrawn.has(f.id) ? " withdrawn" : ""}`;
  const attrs = { class: classes, "data-id": f.id, "data-rule": f.rule };
  if (retraction) attrs["data-retracts"] = f.retracts;
  return el("li", attrs,
    el("div", {}, el("span", { class: `sev ${f.severity}` }, SEV[f.severity] || f.severity),
      retraction ? el("span", { class: "tag retracted" }, "撤回 retracted") : null,
      f.history === true ? el("span", { class: "tag history" }, "历史 history") : null,
      el("span", { class: "rule" }, f.rule), " · ", who,
      f.tier ? el("span", { class: "meta" }, ` · tier ${f.tier}`) : null),
    el("div", { class: "body" }, f.message + extra),
    retraction ? el("div", { class: "meta retracts" }, `takes back ${f.type} ${f.rule} · finding ${f.retracts}${f.reason ? " · " + f.reason : ""}`) : null,
    el("div", { class: "meta" }, f.ts));
}

// A retraction arrived: strike through what it takes back where it is already shown.
function markWithdrawn(id) {
  for (const node of document.querySelectorAll("li.alert")) if (node.dataset.id === id) node.classList.add("withdrawn");
}

function passes(f) {
  const category = $("f-category").value, severity = $("f-severity").value;
  return (!category || f.category === category) && (!severity || f.severity === severity);
}

function renderFeed() {
  const shown = state.feed.filter(passes);
  $("feed").replaceChildren(...shown.map((f) => alertItem(f, false)));
  $("feed-count").textContent = `${shown.length} shown`;
}

function addLive(f) {
  noteRetractions([f]);
  if (f.retracts) markWithdrawn(f.retracts);
  state.feed.unshift(f);
  if (state.feed.length > MAX_FEED) state.feed.pop();
  if (passes(f)) {
    $("feed").prepend(alertItem(f, true));
    while ($("feed").children.length > MAX_FEED) $("feed").lastChild.remove();
    $("feed-count").textContent = `${$("feed").children.length} shown`;
  }
  if (state.customer && f.customer_id === state.customer) showCustomer(state.customer);
}

$("f-category").addEventListener("change", renderFeed);
$("f-severity").addEventListener("change", renderFeed);

async function follow(since) {
  // Server-Sent Events over fetch, so the token goes in a header, never in the URL.
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  let last = since;
  for (;;) {
    try {
      const url = "/alerts/stream" + (last ? "?since=" + encodeURIComponent(last) : "");
      const response = await fetch(url, { headers: headers(), signal: controller.signal });
      if (response.status === 401) { askToken(); return; }
      if (!response.ok || !response.body) throw new Error("stream " + response.status);
      setLive(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let data = null, id = null, event = "message";
          for (const line of block.split("\n")) {
            if (line.startsWith("data: ")) data = line.slice(6);
            else if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) event = line.slice(7);
          }
          if (id) last = id;
          if (data && event === "finding") addLive(JSON.parse(data));
          // event: error ends the stream; the loop below reconnects from `last`
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function setLive(on) {
  $("live").className = on ? "on" : "off";
  $("live").textContent = on ? "● live" : "● offline";
}

// ---- customer page ---------------------------------------------------------
const KPIS = [
  ["balance", "余额 balance"], ["daily_avg_balance_mtd", "日均余额 daily avg MTD"], ["avg_balance_30d", "30日均 avg 30d"],
  ["inflow_30d", "流入 inflow 30d"], ["outflow_30d", "流出 outflow 30d"], ["collection_rate_90d", "资金归集率 collection 90d"],
  ["retention_days_avg_90d", "资金留存天数 retention days"], ["external_outflow_share_30d", "他行流出占比 ext. share"],
  ["contribution", "综合贡献度 contribution"],
];

async function showCustomer(id) {
  if (!id) return;
  state.customer = id;
  if (location.hash !== "#/customer/" + encodeURIComponent(id)) history.replaceState(null, "", "#/customer/" + encodeURIComponent(id));
  try {
    const q = encodeURIComponent(id);
    const [c, h, a] = await Promise.all([api(`/customers/${q}`), api(`/customers/${q}/history`), api(`/alerts?customer=${q}&limit=50`)]);
    if (state.customer !== id) return;
    $("customer-empty").hidden = true;
    $("customer").hidden = false;
    $("c-id").textContent = c.customer_id;
    $("c-tier").textContent = c.tier ? "tier " + c.tier : "tier —";
    $("c-asof").textContent = c.as_of;
    $("c-segments").textContent = c.segments.length ? c.segments.join(", ") : "no segment";
    $("c-kpis").replaceChildren(...KPIS.map(([k, label]) =>
      el("div", { class: "kpi" }, el("div", { class: "label" }, label), el("div", { class: "value", "data-field": k }, (c.display && c.display[k]) ?? c[k] ?? "—"))));  // written by rules/fmt.py
    drawChart(h.days);
    noteRetractions(a.alerts);
    $("c-alerts").replaceChildren(...(a.alerts.length ? a.alerts.map((f) => alertItem(f, false)) : [el("li", { class: "hint" }, "no alerts")]));
  } catch (err) {
    $("customer-empty").hidden = false;
    $("customer").hidden = true;
    $("customer-empty").textContent = `customer ${id}: ${err.message}`;
  }
}

function drawChart(days) {
  const svg = $("chart");
  const ns = "http://www.w3.org/2000/svg";
  const W = 640, H = 200, L = 60, R = 10, T = 10, B = 22;
  svg.replaceChildren();
  if (!days.length) return;
  const values = days.map((d) => Number(d.end_balance));
  let lo = Math.min(0, ...values), hi = Math.max(...values);
  if (hi === lo) hi = lo + 1;
  const x = (i) => L + (days.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (days.length - 1));
  const y = (v) => T + ((hi - v) * (H - T - B)) / (hi - lo);
  const mk = (tag, attrs, text) => { const n = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text) n.textContent = text; svg.append(n); return n; };
  mk("line", { class: "zero", x1: L, x2: W - R, y1: y(0), y2: y(0) });
  mk("polyline", { class: "line", points: values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ") });
  const axis = (v) => v.toLocaleString("en-US", { maximumFractionDigits: 0 });  // rules/fmt.py's separators, whole units
  mk("text", { x: 4, y: y(hi) + 4 }, axis(hi));
  mk("text", { x: 4, y: y(lo) }, axis(lo));
  mk("text", { x: L, y: H - 6 }, days[0].day);
  mk("text", { x: W - R - 60, y: H - 6 }, days[days.length - 1].day);
}

$("lookup").addEventListener("submit", (e) => { e.preventDefault(); showCustomer($("lookup-id").value.trim()); });

// ---- tiers ------------------------------------------------------------------
async function refreshTiers() {
  try {
    const t = await api("/tiers?top=5");
    const most = Math.max(1, ...Object.values(t.counts));
    $("tiers").replaceChildren(...Object.entries(t.counts).map(([tier, n]) =>
      el("div", { class: "bar", "data-tier": tier }, el("span", { class: "name" }, tier),
        el("span", { class: "fill", style: `width:${Math.round((n / most) * 150)}px` }), el("span", { class: "n" }, n))));
    const cuts = t.cuts_display || t.cuts;  // written by rules/fmt.py on the server
    const n = t.customers.toLocaleString("en-US");
    $("tiers-cuts").textContent = cuts ? `cut points Q1 ${cuts.q1} · Q2 ${cuts.q2} · Q3 ${cuts.q3} · ${n} customers` : `${n} customers, cut points not computed yet`;
  } catch (err) { /* shown by the token prompt or retried on the next tick */ }
}

// ---- start -------------------------------------------------------------------
async function start() {
  try {
    const recent = await api("/alerts?limit=100");
    state.feed = recent.alerts;
    noteRetractions(recent.alerts);
    renderFeed();
    follow(recent.cursor);
  } catch (err) { return; }
  refreshTiers();
  const m = location.hash.match(/^#\/customer\/(.+)$/);
  if (m) showCustomer(decodeURIComponent(m[1]));
}

setInterval(refreshTiers, 10000);
start();
