/* The seats panel: each seat's ComfyUI, what it is doing, its share of the budget and its last job. */

import { state } from "./state.js";
import { $, clock, duration, el, emptyRow, money, pill } from "./dom.js";

export function renderSeats() {
  const seats = state.snap.seats;
  const online = seats.filter((s) => s.online).length;
  $("seats-count").textContent = `(${online} of ${seats.length} ComfyUIs running)`;
  $("seat-rows").replaceChildren(...(seats.length ? seats.map(seatRow) : [emptyRow(6, "This workshop has no seats.")]));
}

function seatRow(seat) {
  const doing =
    seat.state === "running"
      ? `Running${seat.queued ? ` · ${seat.queued} waiting` : ""}`
      : seat.state === "queued"
        ? `${seat.queued} waiting`
        : "Idle";
  const login = seat.username
    ? `${seat.username} · ${seat.last_login ? `signed in ${clock(seat.last_login)}` : "not signed in yet"}`
    : "no participant account";
  return el(
    "tr",
    { dataset: { seat: seat.label } },
    el("td", {}, el("a", { href: seat.admin_url }, seat.label), seat.display_name ? ` ${seat.display_name}` : "", el("span", { class: "reason" }, login)),
    el(
      "td",
      {},
      pill(seat.online ? "online" : "offline", seat.frontend_label),
      " ",
      seat.url
        ? el("a", { href: seat.url, target: "_blank", rel: "noopener", title: `Open ${seat.label}'s ComfyUI in a new tab` }, "open")
        : null,
      seat.frontend_error ? el("span", { class: "reason" }, seat.frontend_error) : null,
    ),
    el("td", {}, pill(seat.state, doing)),
    el("td", { class: "num" }, `${seat.succeeded} / ${seat.failed}`),
    el("td", {}, budgetCell(seat)),
    el("td", {}, lastJobCell(seat.last_job)),
  );
}

function budgetCell(seat) {
  const budget = state.snap.workshop.budget;
  let text = duration(seat.gpu_seconds);
  if (budget.seat_gpu_seconds !== null) text += ` of ${duration(budget.seat_gpu_seconds)}`;
  if (budget.seat_cost !== null) text += ` · ${money(seat.cost)} of ${money(budget.seat_cost)}`;
  else if (seat.cost) text += ` · ${money(seat.cost)}`;
  if (seat.budget_used === null) return text;
  const share = Math.round(seat.budget_used * 100);
  return [
    el("span", { class: seat.budget_warning ? "warn" : "" }, `${text} (${share} %)`),
    el(
      "div",
      { class: `meter${seat.budget_warning ? " high" : ""}`, title: `${share} % of the seat's budget` },
      el("span", { style: `width: ${Math.min(100, share)}%` }),
    ),
  ];
}

function lastJobCell(job) {
  if (!job) return el("span", { class: "quiet" }, "none yet");
  const output = job.output;
  let file = null;
  if (output && output.url && output.kind === "image") {
    file = el("a", { href: output.url, target: "_blank", rel: "noopener", title: output.filename },
      el("img", { class: "thumb", src: output.url, alt: `${output.filename}, the last output`, loading: "lazy" }));
  } else if (output && output.url) {
    file = el("a", { href: output.url, target: "_blank", rel: "noopener" }, output.filename);
  } else if (output) {
    file = el("span", { class: "quiet" }, output.filename);
  }
  return el(
    "div",
    { class: "last-job" },
    file,
    el("span", {}, el("a", { href: job.admin_url }, `#${job.id}`), " ", pill(job.status, job.status_label),
      job.finished_at ? el("span", { class: "reason" }, clock(job.finished_at)) : null),
  );
}
