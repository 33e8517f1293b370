// FundFlow 看板: plain JavaScript, no build step, no third-party code, charts drawn as
// inline SVG. Reads GET /board every few seconds (board.html?every=N to change it; 10 by
// default). Every value from the API is set as text (never as HTML). Amounts arrive as
// decimal strings; they become numbers only to size bars and to be shown rounded.
"use strict";

const NS = "http://www.w3.org/2000/svg";
// ?every=N seconds, clamped to 1..3600 (Infinity, NaN or 0 would poll without pause)
const EVERY_ASKED = Number(new URLSearchParams(location.search).get("every"));
const EVERY = (Number.isFinite(EVERY_ASKED) && EVERY_ASKED > 0 ? Math.min(3600, Math.max(1, EVERY_ASKED)) : 10) * 1000;
const KINDS = {
  salary: "工资 salary", pension: "养老金 pension", transfer_in: "转入 transfer in", transfer_out: "转出 transfer out",
  cash_deposit: "现金存入 cash in", cash_withdrawal: "现金支取 cash out", card_payment: "刷卡 card",
  loan_disbursement: "放款 loan out", loan_repayment: "还款 repayment", interest: "利息 interest", fee: "手续费 fee",
  other: "其他 other",
};
const STATUS = { open: "待处理 open", in_progress: "处理中 in progress", resolved: "已结案 resolved", dismissed: "已忽略 dismissed" };
const CATEGORY = Object.fromEntries(CATEGORIES);
const HOUR = 3600 * 1000;

// ---- numbers ------------------------------------------------------------------
const num = (text) => Number(text || 0);
function money(text) {  // full amount with separators, for the tiles
  return num(text).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}
function compact(value) {  // axis labels: 1.2k, 3.4M
  const a = Math.abs(value);
  if (a >= 1e9) return (value / 1e9).toFixed(1) + "B";
  if (a >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (value / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
  return String(Math.round(value));
}
function niceMax(value, whole) {  // 1, 2, 2.5 or 5 times a power of ten, at least value; whole: no 2.5, >= 1
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of whole ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10]) if (m * step >= value) return Math.max(whole ? 1 : 0, m * step);
  return 10 * step;
}

// ---- SVG ----------------------------------------------------------------------
function node(parent, tag, attrs, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = String(text);
  parent.append(n);
  return n;
}

function canvas(id, width, height) {
  const svg = $(id);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  return svg;
}

function empty(svg, width, height, text) {
  node(svg, "text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, text || "暂无数据 no data yet");
}

// Vertical bars: ``series`` [{cls, values, name}] side by side (or stacked) per label; an
// optional ``line`` of values (may be negative) drawn over them; counts over single bars.
function columns(id, labels, series, opts) {
  const o = Object.assign({ width: 560, height: 200, left: 44, every: 1, stacked: false, counts: false, line: null, money: false }, opts);
  const svg = canvas(id, o.width, o.height);
  const top = o.counts ? 16 : 8, bottom = o.bottom || 20, plotH = o.height - top - bottom, plotW = o.width - o.left - 6;
  const totals = labels.map((_, i) => series.map((s) => s.values[i] || 0));
  const high = Math.max(0, ...totals.map((v) => (o.stacked ? v.reduce((a, b) => a + b, 0) : Math.max(...v))), ...(o.line || []));
  const low = Math.min(0, ...(o.line || []));
  const step = niceMax((high - low) / 4 || 0.25, !o.money);
  const max = Math.max(step, Math.ceil(high / step) * step), min = Math.floor(low / step) * step;
  const y = (v) => top + plotH * (max - v) / (max - min);
  for (let v = min; v <= max + step / 2; v += step) {
    node(svg, "line", { x1: o.left, x2: o.width - 6, y1: y(v), y2: y(v), class: Math.abs(v) < step / 2 ? "axis" : "grid" });
    node(svg, "text", { x: o.left - 4, y: y(v) + 4, "text-anchor": "end" }, o.money ? compact(v) : Math.round(v));
  }
  const slot = plotW / labels.length, gap = Math.max(1, slot * 0.18);
  const bw = o.stacked ? slot - gap : (slot - gap) / series.length;
  labels.forEach((label, i) => {
    const x0 = o.left + i * slot + gap / 2;
    let base = 0;
    series.forEach((s, j) => {
      const v = s.values[i] || 0;
      const from = o.stacked ? base : 0, to = from + v;
      const x = o.stacked ? x0 : x0 + j * bw;
      const r = node(svg, "rect", { x, y: y(Math.max(from, to)), width: Math.max(bw - 1, 1), height: Math.abs(y(from) - y(to)), class: s.cls, "data-label": label });
      node(r, "title", {}, `${label} · ${s.name}: ${o.money ? money(v) : v}`);
      base = to;
    });
    if (o.counts) node(svg, "text", { x: x0 + (slot - gap) / 2, y: y(totals[i].reduce((a, b) => a + b, 0)) - 4, "text-anchor": "middle", class: "n", "data-label": label }, totals[i].reduce((a, b) => a + b, 0));
    if (i % o.every === 0) {  // a label may have two lines: 中文\nEnglish
      const text = node(svg, "text", { x: x0 + (slot - gap) / 2, y: o.height - bottom + 13, "text-anchor": "middle" });
      String(label).split("\n").forEach((line, k) => node(text, "tspan", { x: x0 + (slot - gap) / 2, dy: k ? 12 : 0 }, line));
    }
  });
  if (o.line) {
    const points = o.line.map((v, i) => `${(o.left + (i + 0.5) * slot).toFixed(1)},${y(v).toFixed(1)}`);
    node(svg, "polyline", { points: points.join(" "), class: "net" });
    o.line.forEach((v, i) => node(node(svg, "circle", { cx: o.left + (i + 0.5) * slot, cy: y(v), r: 2.5, class: "net" }), "title", {}, `${labels[i]} · net: ${money(v)}`));
  }
  return svg;
}

// Horizontal bars, one row per item: ``rows`` [{label, bars: [{value, cls, title}]}], the
// bars of a row stacked thin under each other; the value is written at the bar's end.
function hbars(id, rows, opts) {
  const o = Object.assign({ width: 420, label: 150, row: 22, money: false, emptyText: null }, opts);
  const per = rows.length ? rows[0].bars.length : 1;
  const height = Math.max(40, rows.length * o.row + 4);
  const svg = canvas(id, o.width, height);
  if (!rows.length) { empty(svg, o.width, height, o.emptyText); return svg; }
  const max = Math.max(...rows.flatMap((r) => r.bars.map((b) => b.value)), 0) || 1;
  const room = o.width - o.label - 70, thick = (o.row - 6) / per;
  rows.forEach((row, i) => {
    const y0 = 2 + i * o.row;
    const g = node(svg, "g", { "data-row": row.key || row.label });
    node(g, "text", { x: o.label - 6, y: y0 + o.row / 2 + 1, "text-anchor": "end" }, row.label);
    row.bars.forEach((b, j) => {
      const w = Math.max(b.value > 0 ? 2 : 0, room * b.value / max);
      const r = node(g, "rect", { x: o.label, y: y0 + 2 + j * thick, width: w, height: Math.max(thick - 1, 2), class: b.cls, rx: 1.5 });
      node(r, "title", {}, b.title || `${row.label}: ${b.value}`);
      if (b.value > 0 || per === 1) node(g, "text", { x: o.label + w + 4, y: y0 + 2 + j * thick + thick / 2 + 3.5, class: "n" }, o.money ? compact(b.value) : b.value);
    });
  });
  return svg;
}

// ---- panels -------------------------------------------------------------------
function drawHourly(flows) {
  const labels = flows.hours.map((h) => String(h.hour).padStart(2, "0"));
  columns("hourly", labels, [
    { cls: "in", name: "流入 inflow", values: flows.hours.map((h) => num(h.inflow)) },
    { cls: "out", name: "流出 outflow", values: flows.hours.map((h) => num(h.outflow)) },
  ], { width: 820, height: 240, left: 52, every: 2, money: true, line: flows.hours.map((h) => num(h.net)) });
}

function drawExternal(flows, shownShare) {  // shownShare: the share written by rules/fmt.py
  const width = 380, height = 240, svg = canvas("extint", width, height);
  const share = flows.external_outflow_share === null ? null : num(flows.external_outflow_share);
  const cx = 70, cy = 88, r = 52;
  node(svg, "circle", { cx, cy, r, class: "ring", "stroke-width": 16 });
  if (share !== null) {
    const length = 2 * Math.PI * r;
    node(svg, "circle", { cx, cy, r, class: "arc", "stroke-width": 16, "stroke-dasharray": `${(length * share).toFixed(2)} ${length.toFixed(2)}`, transform: `rotate(-90 ${cx} ${cy})` });
  }
  node(svg, "text", { x: cx, y: cy + 9, "text-anchor": "middle", class: "big", id: "share-text" }, shownShare ?? "—");
  node(svg, "text", { x: cx, y: cy + r + 28, "text-anchor": "middle" }, "外部流出占比");
  node(svg, "text", { x: cx, y: cy + r + 42, "text-anchor": "middle" }, "external outflow share");
  const rows = [["流入 inflow", "inflow"], ["流出 outflow", "outflow"]];
  const max = Math.max(...rows.map(([, k]) => num(flows.external[k]) + num(flows.internal[k])), 0) || 1;
  const x0 = 160, room = width - x0 - 8;
  rows.forEach(([label, k], i) => {
    const y0 = 34 + i * 78;
    const ext = num(flows.external[k]), int = num(flows.internal[k]);
    node(svg, "text", { x: x0, y: y0 - 6 }, label);
    node(node(svg, "rect", { x: x0, y: y0, width: room * ext / max, height: 20, class: "ext" }), "title", {}, `external ${k}: ${money(ext)}`);
    node(node(svg, "rect", { x: x0 + room * ext / max, y: y0, width: room * int / max, height: 20, class: "int" }), "title", {}, `internal ${k}: ${money(int)}`);
    node(svg, "text", { x: x0, y: y0 + 34, class: "n" }, `外部 ext ${compact(ext)} · 内部 int ${compact(int)}`);
  });
  node(svg, "rect", { x: x0, y: 196, width: 10, height: 10, class: "ext" });
  node(svg, "text", { x: x0 + 14, y: 205 }, "外部 external");
  node(svg, "rect", { x: x0 + 100, y: 196, width: 10, height: 10, class: "int" });
  node(svg, "text", { x: x0 + 114, y: 205 }, "内部 internal");
}

function drawKinds(flows) {
  const moving = flows.by_kind.filter((k) => num(k.inflow) > 0 || num(k.outflow) > 0);
  hbars("kinds", moving.map((k) => ({
    key: k.kind, label: KINDS[k.kind] || k.kind,
    bars: [{ value: num(k.inflow), cls: "in", title: `${k.kind} inflow ${money(k.inflow)}` },
           { value: num(k.outflow), cls: "out", title: `${k.kind} outflow ${money(k.outflow)}` }],
  })), { label: 130, row: 26, money: true });
}

function byRule(rows) {  // one bar per rule, largest first, coloured by its category
  const sorted = [...rows].sort((a, b) => b.count - a.count || a.rule.localeCompare(b.rule));
  return sorted.map((r) => ({ key: r.rule, label: r.rule, bars: [{ value: r.count, cls: r.category, title: `${CATEGORY[r.category] || r.category} · ${r.kind} · ${r.rule}: ${r.count}` }] }));
}

function drawFindings(findings) {
  hbars("rules-24h", byRule(findings.last_24h), { label: 170, emptyText: "24 小时内无预警 none in 24 h" });
  hbars("rules-30d", byRule(findings.last_30d), { label: 170, row: 22, emptyText: "30 天内无预警 none in 30 days" });
  const days = findings.by_day;
  if (!days.length) { const svg = canvas("by-day", 420, 60); empty(svg, 420, 60); return; }
  columns("by-day", days.map((d) => d.day.slice(5)), [
    { cls: "alert", name: "预警 alerts", values: days.map((d) => d.alert) },
    { cls: "recommendation", name: "建议 recommendations", values: days.map((d) => d.recommendation) },
    { cls: "push", name: "推送 pushes", values: days.map((d) => d.push) },
  ], { width: 420, height: 130, left: 30, every: 7, stacked: true });
}

function drawCases(cases) {
  const statuses = Object.keys(STATUS);
  columns("case-status", statuses.map((s) => STATUS[s].replace(" ", "\n")),
    [{ cls: "bar", name: "cases", values: statuses.map((s) => cases.by_status[s] || 0) }], { width: 320, height: 150, left: 34, bottom: 32, counts: true });
  // colour each status's bar as its badge on the desk
  $("case-status").querySelectorAll("rect").forEach((r, i) => { r.setAttribute("class", statuses[i]); r.dataset.status = statuses[i]; });
  $("case-status").querySelectorAll("text.n").forEach((t, i) => { t.dataset.status = statuses[i]; });
  columns("case-age", cases.open_by_age.map((a) => a.bucket),
    [{ cls: "open", name: "open cases", values: cases.open_by_age.map((a) => a.count) }], { width: 320, height: 140, left: 34, counts: true });
}

function drawTiers(tiers) {
  const names = ["I", "II", "III", "IV"];
  columns("tiers", names.map((t) => "Tier " + t), [{ cls: "bar", name: "customers", values: names.map((t) => tiers.distribution[t] || 0) }],
    { width: 320, height: 190, left: 36, counts: true });
  $("tiers").querySelectorAll("rect").forEach((r, i) => r.setAttribute("class", "tier-" + names[i]));
  $("tier-week").textContent = tiers.week ? `本周 ${tiers.week}: ${tiers.moved_this_week} 位客户变动 moved` : "";
  $("tier-note").textContent = tiers.refreshed_at ? `分层刷新于 refreshed ${tiers.refreshed_at} (一个刷新周期内 within one refresh)` : "尚未刷新 not refreshed yet";
}

function drawRate(buckets) {
  const label = (b) => (b.bucket === "none" ? "无\nnone" : b.bucket.split("-")[0] + "%");
  columns("rate", buckets.map(label), [{ cls: "bar", name: "customers", values: buckets.map((b) => b.customers) }],
    { width: 360, height: 210, left: 34, bottom: 32, counts: true });
}

function drawTop(top) {
  hbars("top", top.map((c) => ({ key: c.customer_id, label: c.customer_id, bars: [{ value: num(c.net_outflow), cls: "out", title: `${c.customer_id}: ${money(c.net_outflow)}` }] })),
    { width: 360, label: 90, row: 22, money: true, emptyText: "今日无净流出 no net outflow today" });
}

function drawTiles(board) {
  const t = board.flows.total, net = num(t.net), shown = board.display;  // the tiles, written by rules/fmt.py
  $("kpi-inflow").textContent = shown.inflow;
  $("kpi-outflow").textContent = shown.outflow;
  $("kpi-net").textContent = shown.net;
  $("kpi-net").className = "value " + (net < 0 ? "neg" : net > 0 ? "pos" : "");
  $("kpi-share").textContent = shown.external_outflow_share ?? "—";
  $("kpi-open").textContent = (board.cases.by_status.open || 0) + (board.cases.by_status.in_progress || 0);
  $("kpi-moved").textContent = board.tiers.moved_this_week;
  $("asof").textContent = board.day ? `${board.day} · 截至 as of ${(board.latest || "").replace("T", " ")} · ${board.zone}` : `暂无数据 no data yet · ${board.zone}`;
}

function draw(board) {
  drawTiles(board);
  drawHourly(board.flows);
  drawExternal(board.flows, board.display.external_outflow_share);
  drawKinds(board.flows);
  drawFindings(board.findings);
  drawCases(board.cases);
  drawTiers(board.tiers);
  drawRate(board.collection_rate);
  drawTop(board.top_net_outflow);
}

// ---- refresh ------------------------------------------------------------------
let timer = null;
async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetch("/board", { headers: authHeaders() });
    if (response.status === 401) { askToken(); setLive(false, "token?"); return; }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || response.statusText);
    draw(data);
    $("notice").hidden = true;
    setLive(true, new Date().toLocaleTimeString("zh-CN", { hour12: false }));
  } catch (err) {
    $("notice").hidden = false;
    $("notice").textContent = "看板未能刷新 could not refresh: " + err.message;
    setLive(false, "offline");
  }
  timer = setTimeout(refresh, EVERY);
}

function setLive(on, text) {
  $("refreshed").className = on ? "on" : "off";
  $("refreshed").textContent = "● " + text;
}

tokenPrompt(() => refresh());
refresh();
