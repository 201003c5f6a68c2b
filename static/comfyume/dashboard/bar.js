/* The bar above the tables (the queue's policy and caps, when the snapshot was taken), the banners, and the
 * pause box. */

import { state } from "./state.js";
import { $, plural } from "./dom.js";
import { act } from "./controls.js";

export function renderBar() {
  const snap = state.snap;
  const w = snap.workshop;
  const caps = w.caps;
  $("policy").textContent =
    `${w.policy_label} · up to ${caps.max_queued_per_seat} waiting and ${caps.max_running_per_seat} running ` +
    `per seat · queue depth ${caps.max_queue_depth}`;
  $("updated").textContent = `Updated ${new Date(snap.generated_at).toLocaleTimeString()}`;
  $("paused-banner").hidden = !w.paused;
  $("capped-banner").hidden = !w.spending.capped;
  if (w.spending.cap !== null) $("capped-figures").textContent = `${w.spending.used.toFixed(2)} of ${w.spending.cap.toFixed(2)}`;
  $("no-backend-banner").hidden = snap.backends.length > 0;
  const toggle = $("pause-toggle");
  if (toggle) {
    const waiting = snap.totals.jobs.queued;
    toggle.textContent = w.paused ? "Resume the queue" : "Pause the queue";
    toggle.className = w.paused ? "button default" : "button";
    toggle.dataset.action = w.paused ? "resume" : "pause";
    $("pause-help").textContent = w.paused
      ? `Paused. Resuming lets the ${plural(waiting, "waiting job")} start at once.`
      : "No waiting job starts until you resume; running jobs finish. Participants can still queue.";
  }
}

export function wirePause() {
  $("pause-toggle").addEventListener("click", (event) => act({ action: event.currentTarget.dataset.action }));
}
