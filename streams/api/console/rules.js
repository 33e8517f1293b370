// FundFlow rule versions: plain JavaScript, no build step, no third-party code.
// History, any two versions side by side, the shadow report, the audit. Every value from
// the API is set as text (never as HTML). Only the controls the caller's role allows are
// shown (a viewer sees none); the API refuses the rest anyway (403), four eyes included.
"use strict";

const state = { me: null, versions: [], current: null, shadow: null };
const STATE = { in_force: "生效中 in force", scheduled: "待生效 scheduled", was_in_force: "曾生效 was in force", never_in_force: "" };
const STATUS = { proposed: "待审批 proposed", approved: "已批准 approved", rejected: "已驳回 rejected" };

tokenPrompt(() => start());

const rank = { viewer: 0, analyst: 1, supervisor: 2 };
const atLeast = (role) => state.me && rank[state.me.role] >= rank[role];
const bdi = (text) => el("bdi", {}, text);

// ---- history ------------------------------------------------------------------
async function refreshVersions() {
  try {
    const listed = await api("/rules/versions");
    state.versions = listed.versions;
    state.shadow = listed.shadow;
    $("in-force").textContent = listed.in_force ? `in force: version ${listed.in_force}` : "";
    $("shadow-now").textContent = listed.shadow ? `version ${listed.shadow.version} in shadow since ${listed.shadow.started_at} (${listed.shadow.by})` : "no shadow run now";
    $("versions").tBodies[0].replaceChildren(...listed.versions.map(versionRow));
    $("timeline").replaceChildren(...listed.timeline.map((e) => el("li", { "data-version": e.version },
      `from ${e.effective}: `, el("span", { class: "who" }, `version ${e.version}`), ` (${e.fingerprint}) by `, bdi(e.by), ` at ${e.at}`)));
    fillCompare(listed.versions);
  } catch (err) { notify(err.message); }
}

function versionRow(v) {
  return el("tr", { "data-version": v.number, class: state.current === v.number ? "current" : "", onclick: () => showVersion(v.number) },
    el("td", {}, v.number),
    el("td", {}, el("span", { class: "badge " + v.status }, STATUS[v.status] || v.status)),
    el("td", { class: "state-" + v.state }, STATE[v.state] || "", v.shadow ? el("span", { class: "tag shadow" }, "影子 shadow") : null),
    el("td", {}, bdi(v.author)), el("td", {}, bdi(v.approver || v.rejecter || "—")), el("td", {}, v.proposed_at),
    el("td", { class: "reason" }, bdi(v.reason)), el("td", {}, v.diff.length ? `${v.diff.length} setting(s)` : "—"));
}

// ---- one version ----------------------------------------------------------------
async function showVersion(number) {
  state.current = number;
  try {
    const v = await api(`/rules/versions/${number}`);
    if (state.current !== number) return;
    $("version-empty").hidden = true;
    $("version").hidden = false;
    $("v-number").textContent = v.number;
    $("v-status").className = "badge " + v.status;
    $("v-status").textContent = STATUS[v.status] || v.status;
    $("v-meta").replaceChildren(`fingerprint ${v.fingerprint} · proposed by `, bdi(v.author), ` (${v.author_role}) at ${v.proposed_at}`,
      v.approver ? " · approved by " : "", v.approver ? bdi(v.approver) : "", v.approved_at ? ` at ${v.approved_at}` : "",
      v.rejecter ? " · rejected by " : "", v.rejecter ? bdi(v.rejecter) : "", v.rejected_reason ? ": " : "", v.rejected_reason ? bdi(v.rejected_reason) : "",
      v.effective.length ? ` · in force from ${v.effective.join(", ")}` : "", " · reason: ", bdi(v.reason));
    $("v-diff").replaceChildren(...(v.diff.length ? v.diff.map((line) => el("li", {}, line)) : [el("li", { class: "hint" }, v.base ? "no setting differs" : "the deployment's first version")]));
    $("v-yaml").textContent = v.yaml || JSON.stringify(v.rules, null, 2);
    $("v-actions").replaceChildren(...actions(v));
    for (const row of $("versions").tBodies[0].rows) row.className = Number(row.dataset.version) === number ? "current" : "";
  } catch (err) { notify(err.message); }
}

function change(path, body, done) {
  return async (e) => {
    if (e) e.preventDefault();
    try {
      await api(path, body());
      notify(done, true);
      await Promise.all([refreshVersions(), refreshAudit(), refreshReport()]);
      if (state.current) await showVersion(state.current);
    } catch (err) { notify(err.message); }
  };
}

// The controls the caller's role allows for version ``v`` (none for a viewer; four eyes: not one's own).
function actions(v) {
  const found = [];
  if (!atLeast("analyst")) return found;
  const mine = state.me.name === v.author;
  if (atLeast("supervisor") && v.status === "proposed" && !mine) {
    found.push(el("button", { id: "a-approve", type: "button", onclick: change(`/rules/versions/${v.number}/approve`, () => ({}), `version ${v.number} approved 已批准`) }, "批准 Approve"));
    const why = el("input", { id: "a-reject-reason", placeholder: "驳回原因 reason", "aria-label": "rejection reason" });
    found.push(el("form", { id: "reject-form", onsubmit: change(`/rules/versions/${v.number}/reject`, () => ({ reason: why.value }), `version ${v.number} rejected 已驳回`) },
      why, el("button", { type: "submit", class: "quiet" }, "驳回 Reject")));
  }
  if (atLeast("supervisor") && v.status === "approved" && v.state !== "in_force") {
    const at = el("input", { id: "a-effective", placeholder: "生效时间 RFC 3339 (empty: now + grace)", "aria-label": "effective from" });
    found.push(el("form", { id: "promote-form", onsubmit: change(`/rules/versions/${v.number}/promote`, () => ({ effective: at.value || null }), `version ${v.number} promoted 已发布`) },
      at, el("button", { type: "submit" }, "发布 Promote")));
  }
  if (v.status !== "rejected" && v.state !== "in_force" && !v.shadow && !state.shadow) {
    found.push(el("button", { id: "a-shadow", type: "button", onclick: change("/rules/shadow", () => ({ version: v.number }), `version ${v.number} runs in shadow 影子运行`) }, "影子运行 Shadow"));
  }
  if (v.shadow) {
    found.push(el("button", { id: "a-shadow-stop", type: "button", class: "quiet", onclick: change("/rules/shadow/stop", () => ({}), "shadow run stopped") }, "停止影子 Stop shadow"));
    found.push(el("button", { id: "a-report", type: "button", class: "quiet", onclick: () => refreshReport(v.number) }, "报告 Report"));
  }
  return found;
}

// ---- side by side ------------------------------------------------------------------
function fillCompare(versions) {
  for (const [id, pick] of [["cmp-a", 1], ["cmp-b", 0]]) {
    const select = $(id), kept = select.value;
    select.replaceChildren(...versions.map((v) => el("option", { value: v.number }, `version ${v.number} (${v.status})`)));
    select.value = kept || (versions[pick] ? String(versions[pick].number) : "");
  }
}

async function compare(e) {
  if (e) e.preventDefault();
  const a = $("cmp-a").value, b = $("cmp-b").value;
  if (!a || !b) return;
  try {
    const d = await api(`/rules/diff?a=${a}&b=${b}`);
    $("cmp-head-a").textContent = `version ${a}`;
    $("cmp-head-b").textContent = `version ${b}`;
    $("cmp-summary").textContent = d.lines.length ? `${d.lines.length} setting(s) differ` : "the same rules";
    const only = $("cmp-changed").checked;
    const show = (value) => (value === null || value === undefined ? "—" : typeof value === "string" ? value : JSON.stringify(value));
    $("compare").tBodies[0].replaceChildren(...d.rows.filter((r) => !only || r.changed).map((r) =>
      el("tr", { class: r.changed ? "changed" : "", "data-path": r.path }, el("td", {}, r.path), el("td", {}, show(r.a)), el("td", {}, show(r.b)))));
  } catch (err) { notify(err.message); }
}

$("compare-form").addEventListener("submit", compare);
$("cmp-changed").addEventListener("change", compare);

// ---- the shadow report ----------------------------------------------------------------
async function refreshReport(number) {
  try {
    const r = await api("/rules/shadow/report" + (number ? `?version=${number}` : ""));
    $("r-summary").textContent = r.summary + (r.running ? " (running 运行中)" : "");
    $("report-rules").tBodies[0].replaceChildren(...r.rules.map((row) => el("tr", { "data-rule": row.rule },
      el("td", {}, row.rule), el("td", {}, row.live), el("td", {}, row.shadow), el("td", {}, row.added), el("td", {}, row.removed),
      el("td", {}, row.changed), el("td", {}, row.removed_false_positive), el("td", {}, row.removed_confirmed))));
    $("r-suppressed").replaceChildren(...(r.suppressed.length ? r.suppressed.map((s) => el("li", {}, `${s.rule} ${s.why}: ${s.count}`)) : [el("li", { class: "hint" }, "none")]));
    $("r-customers-total").textContent = `(${r.customers_total})`;
    $("report-customers").tBodies[0].replaceChildren(...r.customers.map((c) => el("tr", {},
      el("td", {}, bdi(c.customer_id)), el("td", {}, c.added), el("td", {}, c.removed), el("td", {}, c.changed))));
  } catch (err) {
    if (err.status === 404) $("r-summary").textContent = "还没有影子运行 no version has run in shadow yet";
    else notify(err.message);
  }
}

// ---- audit ------------------------------------------------------------------------------
async function refreshAudit() {
  try {
    const d = await api("/rules/audit?limit=100");
    $("audit").replaceChildren(...d.audit.map((a) => el("li", { "data-action": a.action }, el("span", { class: "who" }, bdi(a.actor)),
      ` (${a.role}) ${a.at} ${a.action}` + (a.version ? ` version ${a.version}` : "") + (a.effective ? ` from ${a.effective}` : ""),
      a.reason ? " — " : "", a.reason ? bdi(a.reason) : "")));
  } catch (err) { /* shown by the token prompt or retried on the next tick */ }
}

// ---- propose ------------------------------------------------------------------------------
$("propose-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const v = await api("/rules/versions", { yaml: $("p-yaml").value, reason: $("p-reason").value });
    notify(`version ${v.number} proposed 已提议; another supervisor approves it`, true);
    $("p-yaml").value = "";
    $("p-reason").value = "";
    await Promise.all([refreshVersions(), refreshAudit()]);
    await showVersion(v.number);
  } catch (err) { notify(err.message); }
});

$("rollback-form").addEventListener("submit", change("/rules/rollback", () => ({ effective: $("rb-effective").value || null }), "rolled back 已回滚"));

// ---- start ----------------------------------------------------------------------------------
async function start() {
  try { state.me = await api("/whoami"); } catch (err) { return; }
  $("me").textContent = `${state.me.name} · ${state.me.role}`;
  $("propose-box").hidden = !atLeast("analyst");
  $("rollback-form").hidden = !atLeast("supervisor");
  await Promise.all([refreshVersions(), refreshAudit(), refreshReport()]);
  await compare();
}

setInterval(() => { if (state.me) { refreshVersions(); refreshAudit(); } }, 10000);
start();
