// Shared by the station, supervisor and monitor pages: DOM building, the JSON API, formatting.
// Data is only ever placed with textContent/attributes, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// sv-SE formats as "2026-05-01 08:00:00": unambiguous for any operator.
const when = (iso) => (iso ? new Date(iso).toLocaleString("sv-SE") : "–");
const pct = (p) => (p === null || p === undefined ? "–" : Number(p).toFixed(3));
const seconds = (ms) => (ms === null || ms === undefined ? "–" : `${(ms / 1000).toFixed(1)} s`);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { headers = {}, ...options } = {}) {
  const response = await fetch(path, { credentials: "same-origin", headers, ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) throw new ApiError(response.status, (body && body.error) || `HTTP ${response.status}`);
  return body;
}
