// Shared by the console pages (plain JavaScript, no build step): element building,
// the token prompt and the bearer header. Values are always set as text, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const session = { token: sessionStorage.getItem("fundflow.token") || "" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  return node;
}

function authHeaders() { return session.token ? { Authorization: "Bearer " + session.token } : {}; }

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// A GET, or with ``body`` a POST carrying a fresh Idempotency-Key (one per click: a retried
// request is answered, never applied twice); the JSON answer, or an Error with the API's message
// and ``status``. A 401 asks for the token.
async function api(path, body) {
  const headers = authHeaders();
  const options = { headers };
  if (body !== undefined) {
    Object.assign(headers, { "Content-Type": "application/json", "Idempotency-Key": newKey() });
    Object.assign(options, { method: "POST", body: JSON.stringify(body) });
  }
  const response = await fetch(path, options);
  if (response.status === 401) { askToken(); throw new Error("unauthorized"); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { const err = new Error(data.error || response.statusText); err.status = response.status; throw err; }
  return data;
}

// A line under the header: an error, or with ``ok`` a change made (the page's #notice).
function notify(text, ok) {
  $("notice").hidden = false;
  $("notice").className = ok ? "ok" : "";
  $("notice").textContent = text;
}

function askToken() {
  $("token-box").hidden = false;
  $("token").focus();
}

// The token prompt under the page header; ``onToken`` runs once a token is given.
function tokenPrompt(onToken) {
  const input = el("input", { id: "token", type: "password", autocomplete: "off" });
  const form = el("form", { id: "token-form" }, el("label", {}, "API token ", input), el("button", { type: "submit" }, "Use"));
  const box = el("div", { id: "token-box" }, form);
  box.hidden = true;
  document.querySelector("header").after(box);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    session.token = input.value.trim();
    sessionStorage.setItem("fundflow.token", session.token);
    box.hidden = true;
    onToken();
  });
}

const CATEGORIES = [
  ["outflow_risk", "流出预警 outflow risk"], ["collection", "资金归集 collection"], ["repayment", "还款 repayment"],
  ["sweep", "智能归集 sweep"], ["ledger", "对账 ledger"],
];

// The rule families as options of ``select`` (after its "all" option).
function addCategories(select) {
  select.append(...CATEGORIES.map(([value, label]) => el("option", { value }, label)));
}
