/* The two read-only lists of the side column: the totals and budget, and the recent actions. */

import { state } from "./state.js";
import { $, clock, duration, el, money } from "./dom.js";

export function renderTotals() {
  const t = state.snap.totals;
  const jobs = t.jobs;
  const rows = [
    ["Waiting", jobs.queued],
    ["On a GPU", jobs.dispatching + jobs.running],
    ["Done", jobs.succeeded],
    ["Failed or timed out", jobs.failed + jobs.timed_out],
    ["Cancelled or interrupted", jobs.cancelled + jobs.interrupted],
    ["GPU time used", duration(t.gpu_seconds) + (t.gpu_budget_seconds !== null ? ` of ${duration(t.gpu_budget_seconds)}` : "")],
    ["Cost so far", money(t.cost) + (t.cost_budget !== null ? ` of ${money(t.cost_budget)}` : "")],
    ["Seats at 80 % of budget or more", t.seats_near_budget],
  ];
  $("totals").replaceChildren(
    ...rows.flatMap(([label, value]) => [el("dt", {}, label), el("dd", { dataset: { total: label } }, String(value))]),
  );
}

export function renderActions() {
  const actions = state.snap.actions;
  $("actions").replaceChildren(
    ...(actions.length
      ? actions.map((a) => el("li", {}, el("span", { class: "quiet" }, `${clock(a.at)} ${a.who || "—"}: `), a.summary))
      : [el("li", { class: "quiet" }, "Nothing done in this workshop yet.")]),
  );
}
