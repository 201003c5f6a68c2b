/* The queue's policy and caps, changed from the dashboard. */

import { state } from "./state.js";
import { $ } from "./dom.js";
import { act } from "./controls.js";

const QUEUE_SETTINGS = ["queue_policy", "max_queued_per_seat", "max_running_per_seat", "max_queue_depth"];

export function renderSettings() {
  const form = $("queue-settings");
  if (!form || state.settingsEdited) return;
  const w = state.snap.workshop;
  form.elements.queue_policy.value = w.policy;
  for (const name of QUEUE_SETTINGS.slice(1)) form.elements[name].value = String(w.caps[name]);
}

export function wireSettings() {
  const settings = $("queue-settings");
  settings.addEventListener("input", () => {
    state.settingsEdited = true;
  });
  settings.addEventListener("submit", async (event) => {
    event.preventDefault();
    const payload = { action: "queue_settings" };
    for (const name of QUEUE_SETTINGS) payload[name] = settings.elements[name].value.trim();
    const answer = await act(payload);
    if (answer && answer.ok) {
      state.settingsEdited = false;
      renderSettings();
    }
  });
}
