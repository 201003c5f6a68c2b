/* The GPU backends panel, in failover order: each one's state and slots, and (for an instructor who may change
 * backends) switching it off or on, warming it up and scaling it to zero. */

import { state } from "./state.js";
import { $, el, emptyRow, money, pill, ticking } from "./dom.js";
import { act } from "./controls.js";

export function renderBackends() {
  const rows = state.snap.backends;
  $("backend-rows").replaceChildren(
    ...(rows.length
      ? rows.map(backendRow)
      : [emptyRow(4, "No GPU backend is attached: jobs cannot run. Add one in the workshop's settings.")]),
  );
}

function backendRow(b) {
  const kind = { ready: "online", busy: "running", warming: "queued", failing: "failed" }[b.state] || "idle";
  return el(
    "tr",
    { dataset: { backend: b.name, enabled: String(b.enabled) } },
    el("td", {}, el("a", { href: b.admin_url }, b.name),
      el("span", { class: "reason" }, [b.kind_label, b.gpu_type].filter(Boolean).join(" · ")),
      backendActions(b)),
    el("td", {}, pill(kind, b.enabled ? b.state_label : `${b.state_label}, switched off`),
      b.state === "warming" ? el("span", { class: "reason" }, "starting for ", ticking(b.state_since)) : null,
      b.last_error ? el("span", { class: "reason" }, b.last_error) : null),
    el("td", { class: "num" }, `${b.active} / ${b.max_concurrency}`,
      el("span", { class: "reason" }, `${b.active_here} here`),
      b.pinned_waiting ? el("span", { class: "reason", title: `Waiting jobs only ${b.name} may start` },
        `${b.pinned_waiting} pinned`) : null),
    el("td", { class: "num" }, money(b.price_per_hour)),
  );
}

function backendActions(b) {
  if (!state.mayChangeBackends) return null;
  const button = (label, title, payload, question, danger) =>
    el("button", { type: "button", class: `button${danger ? " danger" : ""}`, title, onclick: () => act(payload, question) }, label);
  return el(
    "div",
    { class: "backend-actions" },
    b.serverless
      ? [
          button(
            "Warm up now",
            `Start ${b.name}'s warm replicas now and keep them for an hour, so the next jobs skip the cold start (Verda).`,
            { action: "warm", backend: b.id },
          ),
          button(
            "Scale to zero",
            `Let ${b.name}'s replicas stop once idle, to stop paying for them. While a workshop using it is on, the next scaling check warms it again.`,
            { action: "scale_to_zero", backend: b.id },
            `Scale ${b.name} to zero? Jobs sent to it then wait for a cold start.`,
          ),
        ]
      : null,
    b.enabled
      ? button(
          "Switch off",
          `No new job starts on ${b.name}; jobs running on it finish. Waiting jobs go to the next backend in order: ` +
            `switching off a spot backend is the manual failover to the on-demand one. Jobs pinned to ${b.name} wait.`,
          { action: "switch_off", backend: b.id },
          `Switch off ${b.name}? Waiting jobs go to the next backend in order; jobs pinned to it wait.`,
          true,
        )
      : button(
          "Switch on",
          `Let ${b.name} take jobs again, in its place in the failover order.`,
          { action: "switch_on", backend: b.id },
        ),
  );
}
