// semsearch web page: vanilla JS over GET /search and GET /info (no build step, no external resources).
// The query, k, mode and rerank live in the page URL (?q=...&k=...&mode=...), so a search can be shared and
// the back button returns to the previous one.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "semsearch-api-key";

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function askForKey() {
  $("key-field").hidden = false;
  $("api-key").focus();
}

async function getJSON(url) {
  const response = await fetch(url, { headers: authHeaders() });
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const err = new Error(body && body.error ? body.error.message : `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

async function loadInfo() {
  try {
    const info = await getJSON("/info");
    $("index-info").textContent =
      `${info.count.toLocaleString()} sentences · index ${info.index_version} · ${info.encoder.model}`;
    $("rerank-field").hidden = !(info.reranker && info.reranker.configured);
    // an index of passages (--chunk-tokens) stores its documents: offer the documents view
    $("documents-field").hidden = !(info.index && info.index.chunking);
    $("q").maxLength = info.limits.max_query_chars;
    if (info.api_key_required) $("key-field").hidden = false;
  } catch (err) {
    if (err.status === 401) {
      $("index-info").textContent = "Enter the API key to use this service.";
      askForKey();
    } else {
      $("index-info").textContent = `Service not available: ${err.message}`;
    }
  }
}

// what `score` is in each mode (the reranker's score replaces it when reranked)
const SCORE_LABELS = { dense: "cosine", lexical: "BM25", hybrid: "hybrid score" };

// bar length relative to this result list (scores of the lexical, hybrid and reranked modes are not in
// [0, 1]): the best hit is full, the weakest keeps a sliver so that it is still visible
function barFraction(score, min, max) {
  return max > min ? 0.05 + 0.95 * (score - min) / (max - min) : 1;
}

function renderResults(data, mode) {
  const list = $("results");
  list.replaceChildren();
  const scores = data.results.map((r) => r.score);
  const max = Math.max(...scores), min = Math.min(...scores);
  const scoreLabel = data.reranked ? "rerank score" : SCORE_LABELS[mode] || "score";
  for (const hit of data.results) {
    const li = document.createElement("li");
    li.className = "result";
    const text = document.createElement("p");
    text.className = "result-text";
    text.textContent = hit.text;
    const score = document.createElement("div");
    score.className = "score";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `${scoreLabel} ${hit.score.toFixed(3)}, relative to this list`);
    const fill = document.createElement("span");
    fill.style.width = `${(barFraction(hit.score, min, max) * 100).toFixed(1)}%`;
    bar.append(fill);
    const label = document.createElement("span");
    label.className = "score-label";
    label.textContent = data.reranked && hit.retrieval_score != null
      ? `${scoreLabel} ${hit.score.toFixed(3)} · cosine ${hit.retrieval_score.toFixed(3)}`
      : `${scoreLabel} ${hit.score.toFixed(3)}`;
    score.append(bar, label);
    const meta = document.createElement("ul");
    meta.className = "meta";
    meta.setAttribute("aria-label", "metadata");
    for (const [key, value] of Object.entries({ id: hit.id, ...hit.metadata })) {
      const item = document.createElement("li");
      item.textContent = `${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`;
      meta.append(item);
    }
    li.append(text, score, meta);
    list.append(li);
  }
}

// the documents view: one card per document, its best passages highlighted in the stored text
function highlighted(documentText, hits) {
  const spans = hits.filter((h) => h.start != null && h.end != null)
    .map((h) => [h.start, h.end]).sort((a, b) => a[0] - b[0]);
  const merged = [];
  for (const [s, e] of spans) {
    if (merged.length && s <= merged[merged.length - 1][1]) {
      merged[merged.length - 1][1] = Math.max(merged[merged.length - 1][1], e);
    } else {
      merged.push([s, e]);
    }
  }
  const p = document.createElement("p");
  p.className = "document-text";
  let pos = 0;
  for (const [s, e] of merged) {
    p.append(documentText.slice(pos, s));
    const mark = document.createElement("mark");
    mark.textContent = documentText.slice(s, e);
    p.append(mark);
    pos = e;
  }
  p.append(documentText.slice(pos));
  return p;
}

function renderDocuments(data, mode) {
  const list = $("results");
  list.replaceChildren();
  const scores = data.results.map((g) => g.score);
  const max = Math.max(...scores), min = Math.min(...scores);
  const scoreLabel = data.reranked ? "rerank score" : SCORE_LABELS[mode] || "score";
  for (const group of data.results) {
    const li = document.createElement("li");
    li.className = "result document";
    const title = document.createElement("h2");
    title.className = "document-title";
    title.textContent = `Document ${group.group}`;
    const body = group.document != null
      ? highlighted(group.document, group.hits)
      : Object.assign(document.createElement("p"), { className: "document-text", textContent: group.hits.map((h) => h.text).join(" … ") });
    const score = document.createElement("div");
    score.className = "score";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `${scoreLabel} ${group.score.toFixed(3)}, relative to this list`);
    const fill = document.createElement("span");
    fill.style.width = `${(barFraction(group.score, min, max) * 100).toFixed(1)}%`;
    bar.append(fill);
    const label = document.createElement("span");
    label.className = "score-label";
    label.textContent = `${scoreLabel} ${group.score.toFixed(3)} (best passage) · ${group.hits.length} passage${group.hits.length === 1 ? "" : "s"} highlighted`;
    score.append(bar, label);
    const meta = document.createElement("ul");
    meta.className = "meta";
    meta.setAttribute("aria-label", "metadata");
    for (const [key, value] of Object.entries(group.metadata)) {
      const item = document.createElement("li");
      item.textContent = `${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`;
      meta.append(item);
    }
    li.append(title, body, score, meta);
    list.append(li);
  }
}

// the form's state <-> the page URL (?q=&k=&mode=&rerank=): shareable, and the back button works
function formParams() {
  const params = new URLSearchParams({ q: $("q").value.trim(), k: $("k").value, mode: $("mode").value });
  if (!$("rerank-field").hidden && $("rerank").checked) params.set("rerank", "true");
  if (!$("documents-field").hidden && $("documents").checked) params.set("view", "documents");
  return params;
}

function selectIfOffered(select, value) {
  if (value !== null && [...select.options].some((o) => o.value === value)) select.value = value;
}

function fillForm(params) {
  $("q").value = params.get("q") || "";
  selectIfOffered($("k"), params.get("k"));
  selectIfOffered($("mode"), params.get("mode"));
  $("rerank").checked = params.get("rerank") === "true";
  $("documents").checked = params.get("view") === "documents";
}

async function runSearch(params) {
  const q = params.get("q") || "";
  if (!q) { showError("Type a query first."); return; }
  const mode = params.get("mode") || "dense";
  $("search-button").disabled = true;
  $("status").textContent = "Searching…";
  showError("");
  try {
    const documents = params.get("view") === "documents";
    const api = new URLSearchParams(params);
    api.delete("view");
    if (documents) {
      api.set("group_by", "doc_id");
      api.set("return_document", "true");
    }
    const data = await getJSON(`/search?${api}`);
    if (documents) renderDocuments(data, mode); else renderResults(data, mode);
    const n = data.results.length;
    const what = documents ? "document" : "result";
    $("status").textContent =
      `${n} ${what}${n === 1 ? "" : "s"} in ${data.took_ms.toFixed(1)} ms · index ${data.index_version}` +
      (data.reranked ? " · reranked" : "");
  } catch (err) {
    $("results").replaceChildren(); // never leave the previous query's results under a refusal
    $("status").textContent = "";
    showError(err.message);
    if (err.status === 401) askForKey();
  } finally {
    $("search-button").disabled = false;
  }
}

function search(event) {
  event.preventDefault();
  const params = formParams();
  if (!params.get("q")) { showError("Type a query first."); return; }
  const url = `?${params}`;
  if (url !== window.location.search) history.pushState(null, "", url);
  runSearch(params);
}

function searchFromURL() {
  const params = new URLSearchParams(window.location.search);
  fillForm(params);
  if (params.get("q")) {
    runSearch(formParams());
  } else {
    $("results").replaceChildren();
    $("status").textContent = "";
    showError("");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => {
    sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
    loadInfo();
  });
  $("search-form").addEventListener("submit", search);
  window.addEventListener("popstate", searchFromURL);
  loadInfo().then(searchFromURL); // after /info: the rerank toggle's visibility is known
});
