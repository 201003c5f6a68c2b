/* Building the page's elements, and the formatting every panel shares. */

import { state } from "./state.js";

const SVG_NS = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false || child === "") continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) if (value !== null && value !== undefined) node.setAttribute(key, value);
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const now = () => Date.now() + state.clockOffset;
export const secondsSince = (iso) => (now() - Date.parse(iso)) / 1000;
export const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
export const money = (value) => Number(value).toFixed(2);

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return `${minutes} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

/** A duration since ``iso`` that main.js's clock keeps ticking. */
export const ticking = (iso) => el("span", { class: "since", dataset: { since: iso } }, duration(secondsSince(iso)));

export const pill = (kind, label) => el("span", { class: `status ${kind}` }, label);

export function seatName(label, name) {
  return [el("strong", {}, label), name ? ` ${name}` : ""];
}

export function emptyRow(columns, text) {
  return el("tr", { class: "empty" }, el("td", { colspan: String(columns) }, text));
}
