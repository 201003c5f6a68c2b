/* The instructor's live dashboard (templates/workshops/dashboard.html, workshops/instructor/views.py).
 *
 * Draws the panels from the snapshot the page was rendered with, then keeps them current without a reload:
 * the workshop's staff socket (/ws/hub/workshops/<slug>/) carries every seat's ComfyUI messages plus our
 * comfyume.* ones. A job changing state re-fetches the snapshot (at most one fetch per 300 ms), progress
 * messages move that job's bar in place (progress.js), and each action is one POST whose answer is shown above
 * the tables (controls.js). A dropped socket reconnects with backoff and fetches the snapshot again, so no
 * missed event is lost. The charts of the last hour come from their own endpoint every 30 s (charts.js).
 *
 * One module a panel; they share state.js and dom.js, and none needs a module that needs it.
 */

import { state } from "./state.js";
import { $, duration, secondsSince } from "./dom.js";
import { readJson, wireBulk } from "./controls.js";
import { forgetEnded, trackProgress } from "./progress.js";
import { renderQueue, wireQueue } from "./queue.js";
import { renderSeats } from "./seats.js";
import { renderEnded } from "./ended.js";
import { renderBackends } from "./backends.js";
import { renderCharts } from "./charts.js";
import { renderBar, wirePause } from "./bar.js";
import { renderSettings, wireSettings } from "./settings.js";
import { renderAnnouncements, wireAnnouncements } from "./announcements.js";
import { renderActions, renderTotals } from "./totals.js";

const REFRESH_DEBOUNCE_MS = 300; // a burst of job events (a bulk cancel) costs one fetch
const SAFETY_REFRESH_MS = 30000; // a backend's health changes send no event: look again now and then
const MAX_BACKOFF_MS = 15000;
const CHARTS_REFRESH_MS = 30000; // 5-minute buckets: fresher would show nothing new

function renderAll() {
  renderBar();
  renderQueue();
  renderSeats();
  renderEnded();
  renderBackends();
  renderTotals();
  renderAnnouncements();
  renderActions();
  renderSettings();
}

// --- Talking to the hub ---------------------------------------------------------------------------

let refreshTimer = null;
let fetching = false;
let fetchAgain = false;

function refreshSoon() {
  // Events within the window join the fetch already planned rather than postponing it, so a busy
  // workshop still sees its tables change at least every REFRESH_DEBOUNCE_MS.
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    refresh();
  }, REFRESH_DEBOUNCE_MS);
}

async function refresh() {
  if (fetching) {
    fetchAgain = true; // one more fetch after this one, so the last event is never missed
    return;
  }
  fetching = true;
  try {
    const response = await fetch(state.urls.snapshot, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    const data = await readJson(response);
    if (data) apply(data);
    else if (response.ok || response.redirected) setLive("signed-out", "signed out — reload the page");
  } catch (error) {
    // The hub restarting or the network dropping: the socket's indicator says so, and it refreshes on reconnect.
  } finally {
    fetching = false;
    if (fetchAgain) {
      fetchAgain = false;
      refreshSoon();
    }
  }
}

function apply(data) {
  state.snap = data;
  state.clockOffset = Date.parse(data.generated_at) - Date.now();
  forgetEnded(data.queue);
  renderAll();
}

async function refreshCharts() {
  try {
    const response = await fetch(state.urls.charts, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
    const data = await readJson(response);
    if (data) {
      state.charts = data;
      renderCharts();
    }
  } catch (error) {
    // The next tick tries again; the socket's indicator already says when the hub cannot be reached.
  }
}

function onMessage(message) {
  switch (message.type) {
    case "comfyume.job":
    case "comfyume.queue":
    case "comfyume.announcement":
    case "comfyume.backend":
      refreshSoon();
      break;
    default:
      trackProgress(message);
  }
}

function setLive(liveState, text) {
  const badge = $("live-status");
  badge.className = `live-status ${liveState}`;
  badge.textContent = text;
}

let attempt = 0;
let reconnected = false;

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${window.location.host}${state.root.dataset.socketPath}`);
  socket.onopen = () => {
    attempt = 0;
    setLive("live", "live");
    refresh(); // whatever happened while the socket was down (or before it first opened)
    if (reconnected) refreshCharts(); // the page came with fresh ones the first time
    reconnected = true;
  };
  socket.onmessage = (event) => {
    try {
      onMessage(JSON.parse(event.data));
    } catch (error) {
      console.warn("ComfyuME dashboard: unreadable message", error);
    }
  };
  socket.onclose = (event) => {
    if (event.code === 4401 || event.code === 4403) {
      setLive("signed-out", "signed out — reload the page");
      return;
    }
    // Exponential backoff with jitter, so a restarted hub is not hit by every dashboard at once.
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** attempt) * (0.8 + Math.random() * 0.4);
    attempt += 1;
    setLive("reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s…`);
    setTimeout(connect, delay);
  };
}

// --- Start --------------------------------------------------------------------------------------------

function start(root) {
  Object.assign(state, {
    root,
    urls: { snapshot: root.dataset.snapshotUrl, charts: root.dataset.chartsUrl, act: root.dataset.actUrl },
    mayAct: root.dataset.mayAct === "true",
    mayChangeBackends: root.dataset.mayChangeBackends === "true",
    csrfToken: root.querySelector("input[name=csrfmiddlewaretoken]")?.value || "",
    snap: JSON.parse($("dashboard-snapshot").textContent),
    charts: JSON.parse($("dashboard-charts").textContent),
    refresh,
  });
  state.clockOffset = Date.parse(state.snap.generated_at) - Date.now();
  renderAll();
  renderCharts();
  if (state.mayAct) for (const wire of [wireBulk, wireQueue, wireSettings, wirePause, wireAnnouncements]) wire();
  connect();
  setInterval(() => {
    for (const span of root.querySelectorAll(".since")) span.textContent = duration(secondsSince(span.dataset.since));
  }, 1000);
  setInterval(() => {
    if (!document.hidden) refresh();
  }, SAFETY_REFRESH_MS);
  setInterval(() => {
    if (!document.hidden) refreshCharts();
  }, CHARTS_REFRESH_MS);
}

const root = document.getElementById("live-dashboard");
if (root) start(root);
