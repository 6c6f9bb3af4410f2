// semsearch web page: vanilla JS over GET /search and GET /info (no build step, no external resources).
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

function renderResults(data) {
  const list = $("results");
  list.replaceChildren();
  const scores = data.results.map((r) => r.score);
  const max = Math.max(...scores), min = Math.min(...scores);
  for (const hit of data.results) {
    const li = document.createElement("li");
    li.className = "result";
    const text = document.createElement("p");
    text.className = "result-text";
    text.textContent = hit.text;
    // cosine in [0, 1] as is; reranker scores are relative within the list
    const fraction = data.reranked ? (max > min ? (hit.score - min) / (max - min) : 1) : Math.max(0, Math.min(1, hit.score));
    const score = document.createElement("div");
    score.className = "score";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `score ${hit.score.toFixed(3)}`);
    const fill = document.createElement("span");
    fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    bar.append(fill);
    const label = document.createElement("span");
    label.textContent = data.reranked
      ? `score ${hit.score.toFixed(3)} · cosine ${hit.retrieval_score.toFixed(3)}`
      : `cosine ${hit.score.toFixed(3)}`;
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

async function search(event) {
  event.preventDefault();
  const q = $("q").value.trim();
  if (!q) { showError("Type a query first."); return; }
  const params = new URLSearchParams({ q, k: $("k").value, mode: $("mode").value });
  if (!$("rerank-field").hidden && $("rerank").checked) params.set("rerank", "true");
  $("search-button").disabled = true;
  $("status").textContent = "Searching…";
  showError("");
  try {
    const data = await getJSON(`/search?${params}`);
    renderResults(data);
    const n = data.results.length;
    $("status").textContent =
      `${n} result${n === 1 ? "" : "s"} in ${data.took_ms.toFixed(1)} ms · index ${data.index_version}` +
      (data.reranked ? " · reranked" : "");
  } catch (err) {
    $("status").textContent = "";
    showError(err.message);
    if (err.status === 401) askForKey();
  } finally {
    $("search-button").disabled = false;
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
  loadInfo();
});
