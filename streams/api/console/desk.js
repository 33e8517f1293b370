// FundFlow case desk: plain JavaScript, no build step, no third-party code.
// Every value from the API is set as text (never as HTML). Only the actions the
// caller's role allows are shown; the API refuses the rest anyway (403).
"use strict";

const state = { me: null, cases: [], current: null, picked: new Set() };
const STATUS = { open: "待处理 open", in_progress: "处理中 in progress", resolved: "已结案 resolved", dismissed: "已忽略 dismissed" };
const OUTCOME = {
  confirmed_outflow: "确认流出 confirmed outflow", retained_after_contact: "联系后留存 retained after contact",
  false_positive: "误报 false positive", not_actionable: "无法处理 not actionable", funds_retained: "资金留存 funds retained",
  funds_left: "资金流出 funds left", confirmed: "确认 confirmed", other: "其他 other (note)",
  retracted: "撤回 retracted (taken back by the monitor)",
};

const DISMISSAL = [["duplicate", "重复 duplicate"], ["not_actionable", "无需处理 not actionable"],
  ["false_positive", "误报 false positive (counts in precision)"], ["other", "其他 other (note)"]];

tokenPrompt(() => start());
addCategories($("f-category"));

const supervisor = () => state.me && state.me.role === "supervisor";
const mayWork = (c) => supervisor() || (state.me && state.me.role === "analyst" && (!c.assignee || c.assignee === state.me.name));
const isOpen = (c) => c.status === "open" || c.status === "in_progress";

// ---- the list ---------------------------------------------------------------
async function refreshList() {
  const query = new URLSearchParams({ limit: "200" });
  for (const name of ["status", "category", "type", "queue"]) if ($("f-" + name).value) query.set(name, $("f-" + name).value);
  const who = $("f-assignee").value;
  if (who) query.set("assignee", who === "@me" ? state.me.name : who);
  try {
    const listed = await api("/cases?" + query);
    state.cases = listed.cases;
    $("total").textContent = `${listed.count} / ${listed.total}`;
    renderList();
  } catch (err) { notify(err.message); }
}

function renderList() {
  const rows = state.cases.map((c) => {
    const pick = supervisor()
      ? el("input", { type: "checkbox", "aria-label": `select case ${c.id}`, onclick: (e) => { e.stopPropagation(); togglePick(c.id, e.target.checked); } })
      : null;
    if (pick && state.picked.has(c.id)) pick.checked = true;
    return el("tr", { "data-case": c.id, class: state.current === c.id ? "current" : "", onclick: () => showCase(c.id) },
      el("td", { class: "pick" }, pick), el("td", {}, c.id), el("td", { class: "prio-" + c.priority }, "P" + c.priority),
      el("td", {}, el("span", { class: "badge " + c.status }, STATUS[c.status] || c.status), ...marks(c)),
      el("td", {}, c.customer_id + (c.tier ? ` (${c.tier})` : "")), el("td", {}, c.category),
      el("td", {}, c.rules.join(", ")), el("td", {}, c.count), el("td", { class: "assignee" }, c.assignee || "—"));
  });
  $("cases").tBodies[0].replaceChildren(...rows);
}

// A case the monitor took findings back from, or made of history findings (docs/cases.md).
function marks(c) {
  const found = [];
  if (c.outcome === "retracted") found.push(el("span", { class: "tag retracted" }, "撤回 retracted"));
  else if (c.retracted) found.push(el("span", { class: "tag retracted", title: "findings taken back by the monitor" }, `撤回 ${c.retracted}`));
  if (c.history) found.push(el("span", { class: "tag history" }, "历史 history"));
  if (c.queue === "rm") found.push(el("span", { class: "tag rm", title: "a task for the relationship manager (docs/contact.md)" }, "客户经理 RM"));
  return found;
}

function togglePick(id, on) {
  if (on) state.picked.add(id); else state.picked.delete(id);
  $("bulk-count").textContent = `${state.picked.size} selected`;
}

for (const name of ["status", "assignee", "category", "type", "queue"]) $("f-" + name).addEventListener("change", refreshList);

async function bulk(path, body) {
  if (!state.picked.size) { notify("select cases first 请先选择案件"); return; }
  try {
    const reply = await api(path, { ids: [...state.picked], ...body });
    notify(`${reply.done} done, ${reply.refused} refused` + reply.results.filter((r) => r.error).map((r) => ` · #${r.id}: ${r.error}`).join(""), !reply.refused);
    state.picked.clear();
    togglePick(0, false);
    await refreshList();
    if (state.current) showCase(state.current);
  } catch (err) { notify(err.message); }
}

$("bulk-assign").addEventListener("click", () => bulk("/cases/bulk/assign", { assignee: $("bulk-assignee").value || null }));
$("bulk-dismiss").addEventListener("click", () => bulk("/cases/bulk/dismiss", { reason: "not_actionable", note: "bulk dismissed" }));

// ---- one case ---------------------------------------------------------------
async function showCase(id) {
  state.current = id;
  try {
    const d = await api(`/cases/${id}`);
    if (state.current !== id) return;
    const c = d.case;
    $("case-empty").hidden = true;
    $("case").hidden = false;
    $("k-id").textContent = c.id;
    $("k-status").className = "badge " + c.status;
    $("k-status").textContent = STATUS[c.status] || c.status;
    $("k-meta").replaceChildren(bdi(c.customer_id), ` · ${c.type} · ${c.category} · ${c.severity} · P${c.priority} · ${c.count} finding(s) · `
      + `assignee ${c.assignee || "—"} · opened ${c.opened_at}` + (c.outcome ? ` · outcome ${c.outcome}` : "") + (c.note ? ` · ${c.note}` : "")
      + (c.retracted ? ` · ${c.retracted} taken back 撤回` : "") + (c.history ? " · history 历史" : ""));
    $("actions").replaceChildren(...actions(c, d.outcomes));
    $("k-comments").replaceChildren(...(d.comments.length ? d.comments.map(commentItem) : [el("li", { class: "hint" }, "no comments")]));
    older("comments", id, d.comments_page, commentItem);
    const gone = new Set(d.audit.filter((a) => a.action === "finding_retracted").map((a) => a.finding_id));
    $("k-findings").replaceChildren(...d.findings.map((f) => el("li", { class: gone.has(f.id) ? "withdrawn" : "", "data-id": f.id },
      el("span", { class: "who" }, f.rule), f.history === true ? el("span", { class: "tag history" }, "历史 history") : null, ` ${f.ts}: ${f.message}`,
      el("div", { class: "evidence" }, evidence(f)))));
    showContact(c.customer_id);
    $("k-audit").replaceChildren(...d.audit.map(auditItem));
    older("audit", id, d.audit_page, auditItem);
    for (const row of $("cases").tBodies[0].rows) row.className = Number(row.dataset.case) === id ? "current" : "";
  } catch (err) { notify(err.message); }
}

// What made a finding fire, and for a recommendation what it suggests (an RM's task needs both).
function evidence(f) {
  const parts = Object.entries(f.evidence || {}).filter(([, v]) => typeof v !== "object").map(([k, v]) => `${k}: ${v}`);
  if (f.product) parts.unshift(`产品 product: ${f.product}` + (f.amount ? ` · ${f.amount}` : ""));
  return parts.join(" · ");
}

// ---- contact: consent and complaints (docs/contact.md) ---------------------------
const mayRecord = () => state.me && (state.me.role === "analyst" || state.me.role === "supervisor");

async function showContact(customer) {
  const box = $("k-contact");
  try {
    const v = await api(`/contact/${encodeURIComponent(customer)}`);
    const scope = (s) => (v.scopes[s] ? `${v.scopes[s].status} (${v.scopes[s].at})` : "—");
    const held = Object.entries(v.held).map(([ch, why]) => `${ch}: ${why || "ok"}`).join(" · ");
    const shown = [el("p", { id: "contact-state" }, `push ${scope("push")} · sms ${scope("sms")} · all ${scope("all")}`
      + (v.complaint ? ` · 投诉 complaint until ${v.complaint.quiet_until}` : "") + ` · now: ${held} · tier ${v.tier || "—"}`)];
    if (mayRecord()) {
      const channel = el("select", { id: "c-channel", "aria-label": "channel" }, ...["push", "sms", "all"].map((c) => el("option", { value: c }, c)));
      const status = el("select", { id: "c-status", "aria-label": "consent" },
        el("option", { value: "opt_out" }, "退订 opt out"), el("option", { value: "opt_in" }, "订阅 opt in"));
      const reason = el("input", { id: "c-reason", placeholder: "原因 reason (required)", "aria-label": "consent reason" });
      const record = (path, body) => async (e) => {
        e.preventDefault();
        try { await api(path, body()); notify("recorded 已记录", true); showContact(customer); } catch (err) { notify(err.message); }
      };
      const path = `/contact/${encodeURIComponent(customer)}`;
      shown.push(el("form", { id: "consent-form", onsubmit: record(path + "/consent", () => ({ channel: channel.value, status: status.value, reason: reason.value })) },
        channel, status, reason, el("button", { type: "submit" }, "记录 Record consent")));
      const complaint = el("input", { id: "c-complaint", placeholder: "投诉内容 complaint", "aria-label": "complaint" });
      shown.push(el("form", { id: "complaint-form", onsubmit: record(path + "/complaint", () => ({ reason: complaint.value })) },
        complaint, el("button", { type: "submit", class: "quiet" }, "记录投诉 Record complaint")));
    }
    shown.push(el("ol", { class: "audit" }, ...v.audit.map((a) => el("li", {}, el("span", { class: "who" }, bdi(a.by)),
      ` ${a.action} ${a.channel}: `, bdi(a.reason)))));
    if (v.held_pushes.length) shown.push(el("p", { id: "contact-held" }, "未发送 held pushes: "
      + v.held_pushes.map((h) => `${h.rule} ${h.ts} (${h.why})`).join(" · ")));
    box.replaceChildren(...shown);
  } catch (err) { box.replaceChildren(el("p", {}, err.message)); }
}

// Free text as sent, each piece isolated (<bdi>): a U+202E in a comment cannot turn what follows around.
const bdi = (text) => el("bdi", {}, text);
const commentItem = (m) => el("li", {}, el("span", { class: "who" }, bdi(m.actor)), ` ${m.at}: `, bdi(m.text));
const auditItem = (a) => el("li", { "data-action": a.action }, el("span", { class: "who" }, bdi(a.actor)), a.by_system ? " ⚙" : "",
  ` ${a.at} ${a.action}`, a.action === "finding_retracted" ? ` ${a.rule || ""} ${a.finding_id}` : "",
  a.field ? ` ${a.field}: ` : "", a.field ? bdi(String(a.from ?? "—")) : "", a.field ? " → " : "", a.field ? bdi(String(a.to ?? "—")) : "",
  a.text ? ": " : "", a.text ? bdi(a.text) : "", a.outcome ? ` (${a.outcome})` : "", a.reason ? " — " : "", a.reason ? bdi(a.reason) : "");

// A case read gives the newest entries of each list; "older" reads the page before, as often as asked.
function older(kind, id, page, item) {
  const list = $(kind === "audit" ? "k-audit" : "k-comments");
  if (!page || page.before === null) return;
  const more = el("button", { type: "button", class: "quiet more", "data-more": kind }, `更早 older (${page.before})`);
  more.addEventListener("click", async () => {
    try {
      const d = await api(`/cases/${id}?${kind}_before=${page.before}`);
      if (state.current !== id) return;
      more.parentElement.remove();
      list.prepend(...(kind === "audit" ? d.audit : d.comments).map(item));
      older(kind, id, kind === "audit" ? d.audit_page : d.comments_page, item);
    } catch (err) { notify(err.message); }
  });
  list.prepend(el("li", { class: "hint" }, more));
}

function act(path, body, done) {
  return async (e) => {
    if (e) e.preventDefault();
    try {
      await api(`/cases/${state.current}/${path}`, body());
      notify(done, true);
      await Promise.all([showCase(state.current), refreshList(), refreshPrecision()]);
    } catch (err) { notify(err.message); }
  };
}

function actions(c, outcomes) {
  const me = state.me, found = [];
  if (!me || me.role === "viewer") return found;
  if (isOpen(c)) {
    if (supervisor()) {
      const who = el("select", { id: "a-assignee", "aria-label": "assignee" }, el("option", { value: "" }, "未分配 unassigned"),
        ...me.assignable.map((n) => el("option", { value: n }, n)));
      who.value = c.assignee || "";
      found.push(el("form", { id: "assign-form", onsubmit: act("assign", () => ({ assignee: who.value || null }), "assigned 已分配") },
        who, el("button", { type: "submit" }, "分配 Assign")));
    } else if (!c.assignee) {
      found.push(el("button", { id: "a-take", type: "button", onclick: act("assign", () => ({ assignee: me.name }), "taken 已认领") }, "认领 Take"));
    } else if (c.assignee === me.name) {
      found.push(el("button", { id: "a-release", type: "button", class: "quiet", onclick: act("assign", () => ({ assignee: null }), "released") }, "释放 Release"));
    }
  }
  if (isOpen(c) && mayWork(c)) {
    if (c.status === "open") found.push(el("button", { id: "a-start", type: "button", onclick: act("transition", () => ({ to: "in_progress" }), "started 开始处理") }, "开始 Start"));
    const outcome = el("select", { id: "a-outcome", "aria-label": "outcome" }, ...outcomes.map((o) => el("option", { value: o }, OUTCOME[o] || o)));
    const note = el("input", { id: "a-note", placeholder: "备注 note", "aria-label": "note" });
    found.push(el("form", { id: "resolve-form", onsubmit: act("transition", () => ({ to: "resolved", outcome: outcome.value, note: note.value || null }), "resolved 已结案") },
      outcome, note, el("button", { type: "submit" }, "结案 Resolve")));
    const why = el("select", { id: "a-dismissal", "aria-label": "dismissal reason" }, ...DISMISSAL.map(([v, label]) => el("option", { value: v }, label)));
    found.push(el("form", { id: "dismiss-form", onsubmit: act("transition", () => ({ to: "dismissed", outcome: why.value, note: note.value || null }), "dismissed 已忽略") },
      why, el("button", { id: "a-dismiss", type: "submit", class: "quiet" }, "忽略 Dismiss")));
  }
  if (!isOpen(c) && supervisor()) {
    const reason = el("input", { id: "a-reason", placeholder: "原因 reason (required)", "aria-label": "reason" });
    found.push(el("form", { id: "reopen-form", onsubmit: act("transition", () => ({ to: "open", reason: reason.value }), "reopened 已重新打开") },
      reason, el("button", { type: "submit" }, "重新打开 Reopen")));
  }
  if (mayWork(c)) {
    const text = el("input", { id: "a-comment", placeholder: "评论 comment", "aria-label": "comment" });
    found.push(el("form", { id: "comment-form", onsubmit: act("comment", () => ({ text: text.value }), "comment added 已评论") },
      text, el("button", { type: "submit" }, "评论 Comment")));
  }
  return found;
}

// ---- rule precision -----------------------------------------------------------
const seconds = (s) => (s === null || s === undefined ? "—" : s < 120 ? `${Math.round(s)} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

async function refreshPrecision() {
  try {
    const p = await api("/rules/precision");
    $("precision").tBodies[0].replaceChildren(...p.rules.map((r) => el("tr", { "data-rule": r.rule },
      el("td", {}, r.rule), el("td", {}, r.cases), el("td", {}, r.resolved),
      el("td", { class: "precision" }, r.precision === null ? "—" : `${(r.precision * 100).toFixed(1)}% (${r.confirmed}/${r.resolved})`),
      el("td", {}, seconds(r.median_first_action_seconds)), el("td", {}, seconds(r.median_resolution_seconds)))));
  } catch (err) { /* shown by the token prompt or retried on the next tick */ }
}

// ---- start --------------------------------------------------------------------
async function start() {
  try { state.me = await api("/whoami"); } catch (err) { return; }
  $("me").textContent = `${state.me.name} · ${state.me.role}`;
  $("bulk").hidden = !supervisor();
  $("bulk-assignee").replaceChildren(el("option", { value: "" }, "未分配 unassigned"), ...state.me.assignable.map((n) => el("option", { value: n }, n)));
  await Promise.all([refreshList(), refreshPrecision()]);
}

setInterval(() => { if (state.me) { refreshList(); refreshPrecision(); } }, 10000);
start();
