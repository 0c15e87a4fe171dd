// Shortlist console: small vanilla script over the JSON API (api/...). No framework.
"use strict";

const base = document.body.dataset.base || "";
const page = document.body.dataset.page;
const keyField = document.getElementById("admin-key");
const errorBox = document.getElementById("error");

// The admin key stays in this tab (sessionStorage) and goes out only as a request header.
keyField.value = sessionStorage.getItem("shortlist-admin-key") || "";
keyField.addEventListener("input", () => sessionStorage.setItem("shortlist-admin-key", keyField.value));

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function getJSON(path) {
  const response = await fetch(base + path, {headers: {accept: "application/json"}});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

const itemHref = (id) => `${base}/items/${encodeURIComponent(id)}`;
const userHref = (id) => `${base}/users/${encodeURIComponent(id)}`;

// Reasons (when the gateway sends them) in any shape: objects as "key: value", lists joined.
function describe(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.map(describe).join(", ");
  if (typeof value === "object") {
    return Object.keys(value).sort().map((k) => `${k}: ${describe(value[k])}`).join("; ");
  }
  return String(value);
}

// Reasons in the gateway's shape (sources, becauseLiked, topFeatures, rules), as the server
// renders them (templates/macros.html); other fields as "key: value".
const KNOWN_REASONS = ["becauseLiked", "sources", "topFeatures", "rules"];
function reasonsText(r) {
  const parts = [];
  if (r.becauseLiked?.length) parts.push(`because you liked ${r.becauseLiked.join(", ")}`);
  if (r.sources?.length) parts.push(`from ${r.sources.join(", ")}`);
  if (r.topFeatures?.length) {
    const sign = (x) => (x >= 0 ? "+" : "") + Number(x || 0).toFixed(3);
    parts.push(`ranker: ${r.topFeatures.map((f) => `${f.feature} ${sign(f.contribution)}`).join(", ")}`);
  }
  if (r.rules?.length) parts.push(`rules: ${r.rules.join(", ")}`);
  for (const k of Object.keys(r).sort()) {
    const v = r[k];
    if (!KNOWN_REASONS.includes(k) && v && (!Array.isArray(v) || v.length)) parts.push(`${k}: ${describe(v)}`);
  }
  return parts.join(" · ");
}

// ---- live feed (feed page, user page) ----
let feedAfter = 0;
async function pollFeed() {
  const table = document.querySelector("#feed tbody");
  if (!table) return;
  try {
    const data = await getJSON(`/api/events?after=${feedAfter}`);
    const rate = document.getElementById("feed-rate");
    if (rate) rate.textContent = data.perSecond;
    const feedError = document.getElementById("feed-error");
    feedError.textContent = data.error || "";
    feedError.hidden = !data.error;
    const user = document.querySelector("[data-user]")?.dataset.user;
    for (const e of data.events) {
      const when = e.timestampMs ? new Date(Number(e.timestampMs)).toLocaleTimeString() : "";
      const row = el("tr", {"data-user": e.userId, "data-item": e.itemId, class: e.userId === user ? "mine" : ""},
        el("td", {}, when), el("td", {class: `kind ${e.kind}`}, e.kind),
        el("td", {}, el("a", {href: userHref(e.userId)}, e.userId)),
        el("td", {}, e.itemId ? el("a", {href: itemHref(e.itemId)}, e.itemId) : ""),
        el("td", {class: "muted"}, e.eventId));
      table.prepend(row);
    }
    while (table.rows.length > 100) table.deleteRow(-1);
    feedAfter = data.last;
  } catch (err) {
    showError(`live feed: ${err.message}`);
  }
}

// ---- user page ----
function renderRecommendations(recs, before) {
  const list = document.getElementById("recommendations");
  list.replaceChildren(...recs.items.map((item) => {
    const fresh = before && !before.includes(item.itemId);
    const li = el("li", {"data-item": item.itemId, class: fresh ? "new" : ""},
      el("a", {href: itemHref(item.itemId)}, item.itemId), " ",
      el("span", {class: "score"}, item.score.toFixed(3)), " ",
      el("button", {class: "like", "data-kind": "like", "data-item": item.itemId}, "like"), " ",
      el("button", {class: "dislike", "data-kind": "dislike", "data-item": item.itemId}, "dislike"));
    if (item.reasons) li.append(el("div", {class: "reasons"}, reasonsText(item.reasons)));
    return li;
  }));
  document.getElementById("arm").textContent = recs.arm;
  document.getElementById("model-version").textContent = recs.modelVersion;
  const fallback = document.getElementById("fallback");
  fallback.hidden = !recs.fallbackUsed;
  fallback.querySelector("span").textContent = recs.fallbackReason;
}

function renderHistory(history) {
  const list = document.getElementById("history");
  if (!history.length) return;
  list.replaceChildren(...history.map((h) => el("li", {},
    el("span", {class: `kind ${h.kind}`}, h.kind), " ",
    el("a", {href: itemHref(h.itemId)}, h.itemId))));
}

const currentIds = () =>
  [...document.querySelectorAll("#recommendations > li")].map((li) => li.dataset.item);

async function sendFeedback(userId, itemId, kind) {
  const status = document.getElementById("status");
  const before = currentIds().join(" ");
  const headers = {"content-type": "application/json"};
  if (keyField.value) headers["x-api-key"] = keyField.value;
  const response = await fetch(`${base}/api/feedback`, {
    method: "POST", headers, body: JSON.stringify({userId, itemId, kind}),
  });
  const body = await response.json();
  if (!response.ok) {
    showError(`${kind} refused (${response.status}): ${body.error}`);
    status.textContent = "";
    return;
  }
  showError("");
  status.textContent = `${kind} of ${itemId} sent (event ${body.eventIds[0]}); waiting for the list to change`;
  // The event goes gateway -> Kafka -> feedback worker -> Redis; poll until the list moves.
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    const data = await getJSON(`/api/users/${encodeURIComponent(userId)}`);
    const ids = data.recommendations.items.map((i) => i.itemId).join(" ");
    const applied = data.history.some((h) => h.itemId === itemId && h.kind === kind);
    // A list read while the event was being applied can differ and still hold the item:
    // wait until it is gone (liked and disliked items are both excluded once applied).
    const gone = !ids.split(" ").includes(itemId);
    if (applied && gone && ids !== before) {
      renderRecommendations(data.recommendations, before.split(" "));
      renderHistory(data.history);
      document.getElementById("live-likes").textContent = data.liveLikes;
      if (data.folded) document.getElementById("folded").textContent = "vector folded in";
      const added = document.querySelectorAll("#recommendations > li.new").length;
      status.textContent = `${kind} of ${itemId} applied: the list changed (${added} new, marked)`;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  status.textContent = `${kind} of ${itemId} sent; the list has not changed yet`;
}

if (page === "user") {
  const userId = document.querySelector("[data-user]").dataset.user;
  document.getElementById("recommendations").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-kind]");
    if (!button) return;
    button.disabled = true;
    sendFeedback(userId, button.dataset.item, button.dataset.kind)
      .catch((err) => showError(err.message))
      .finally(() => { button.disabled = false; });
  });
}

// ---- overview: refresh the live figures ----
async function refreshOverview() {
  try {
    const data = await getJSON("/api/overview");
    const m = data.metrics;
    const set = (id, value) => {
      const node = document.getElementById(id);
      if (node && value !== undefined && value !== null) node.textContent = value;
    };
    set("serving-version", data.serving || "none");
    set("feed-rate", data.feed ? data.feed.perSecond : "-");
    set("applied-rate", m.rates.events_applied_per_s);
    set("published-total", m.totals.events_published || 0);
    set("applied-total", m.totals.events_applied || 0);
    set("consumer-lag", m.totals.consumer_lag || 0);
    set("gateway-requests", m.totals.gateway_requests || 0);
    set("gateway-errors", m.totals.gateway_errors || 0);
    set("fallbacks", m.totals.fallbacks || 0);
    document.getElementById("fallback-reasons").replaceChildren(
      ...m.fallbacks.map((f) => el("li", {}, `${f.reason} (arm ${f.arm}): ${f.count}`)));
  } catch (err) {
    showError(`overview: ${err.message}`);
  }
}

if (page === "overview") setInterval(refreshOverview, 5000);
if (document.querySelector("#feed")) {
  pollFeed();
  setInterval(pollFeed, 1000);
}
