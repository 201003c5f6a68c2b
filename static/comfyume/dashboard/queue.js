/* The queue panel: the jobs waiting or on a GPU, each with its progress, and what the instructor may do to it. */

import { state } from "./state.js";
import { $, el, duration, emptyRow, pill, seatName, ticking } from "./dom.js";
import { act, canMove, laneAdvice, pick, updateBulk } from "./controls.js";
import { progressBox } from "./progress.js";

export function renderQueue() {
  const { snap, selected, mayAct } = state;
  state.anyPinned = snap.queue.some((job) => job.status === "queued" && job.pinned_backend);
  const open = document.activeElement;
  if (open && open.matches && open.matches("#queue-rows select.move")) {
    state.queueRenderWaiting = true;
    return;
  }
  state.queueRenderWaiting = false;
  const rows = snap.queue;
  const present = new Set(rows.map((job) => job.id));
  for (const id of [...selected.queue]) if (!present.has(id)) selected.queue.delete(id);
  const waiting = rows.filter((job) => job.status === "queued").length;
  $("queue-count").textContent = `(${waiting} waiting, ${rows.length - waiting} on a GPU)`;
  $("queue-rows").replaceChildren(
    ...(rows.length ? rows.map(queueRow) : [emptyRow(mayAct ? 9 : 7, "No job is waiting or running.")]),
  );
  const all = $("queue-all");
  if (all) all.checked = rows.length > 0 && selected.queue.size === rows.length;
  updateBulk();
}

/** The box that ticks or unticks every job in the queue at once. */
export function wireQueue() {
  $("queue-all").addEventListener("change", (event) => {
    for (const job of state.snap.queue) pick("queue", job.id, event.target.checked);
    renderQueue();
  });
}

function queueRow(job) {
  const onGpu = job.status !== "queued";
  const tr = el("tr", { dataset: { job: String(job.id), prompt: job.prompt_id, status: job.status } });
  if (state.mayAct) {
    tr.append(
      el(
        "td",
        {},
        el("input", {
          type: "checkbox",
          "aria-label": `Select job #${job.id} of ${job.seat}`,
          checked: state.selected.queue.has(job.id),
          onchange: (event) => pick("queue", job.id, event.target.checked),
        }),
      ),
    );
  }
  tr.append(
    el("td", { class: "num" }, job.position ?? "—"),
    el("td", {}, el("a", { href: job.admin_url, title: "The job's page and history in the admin" }, `#${job.id}`)),
    el("td", {}, seatName(job.seat, job.seat_name)),
    el(
      "td",
      {},
      pill(job.status, job.status_label),
      job.lane ? el("span", { class: "tag", title: "In the instructor lane" }, "lane") : null,
      job.cancel_requested ? el("span", { class: "reason" }, "stopping…") : null,
      job.reason ? el("span", { class: "reason" }, job.reason) : null,
    ),
    el("td", {}, backendCell(job)),
    el("td", { class: "num" }, onGpu ? duration(job.waited_seconds) : ticking(job.created_at)),
    el("td", {}, onGpu ? progressBox(job) : null),
  );
  if (state.mayAct) tr.append(el("td", { class: "actions" }, queueActions(job)));
  return tr;
}

/** Where a job runs or may run: its GPU, the backend it is pinned to, and why it waits for that one. */
function backendCell(job) {
  const pin = job.pinned_backend;
  const tag = pin
    ? el("span", { class: "tag pin", title: `Pinned: only ${pin.name} may start this job` }, `→ ${pin.name}`)
    : null;
  if (job.status !== "queued") return [job.backend || el("span", { class: "quiet" }, "—"), pin && pin.name !== job.backend ? tag : null];
  return [
    pin ? tag : el("span", { class: "quiet", title: "Any of the workshop's backends may start it" }, "any"),
    job.waiting_for ? el("span", { class: "reason warn" }, job.waiting_for) : null,
  ];
}

/** The backends a job may be moved to: the workshop's switched-on ones, less where it is or waits already. */
function moveTargets(job) {
  const here = job.status === "queued" ? (job.pinned_backend ? job.pinned_backend.id : null) : job.backend_id;
  return state.snap.backends.filter((b) => b.enabled && b.id !== here);
}

function moveSelect(job) {
  const targets = moveTargets(job);
  const unpin = job.status === "queued" && job.pinned_backend;
  if (!unpin && (!targets.length || !canMove())) return null;
  const onGpu = job.status !== "queued";
  return el(
    "select",
    {
      class: "move",
      "aria-label": `Move job #${job.id} of ${job.seat} to another GPU backend`,
      title: onGpu
        ? `Stop job #${job.id} on ${job.backend || "its GPU"} and run it again from the start on another backend`
        : `Only the backend you pick may start job #${job.id}; "any backend" lets the workshop's backends share it again`,
      onchange: (event) => {
        const value = event.target.value;
        event.target.value = ""; // back to "Move to…" whatever the answer (or a declined confirmation)
        event.target.blur();
        if (!value) return;
        const backend = value === "any" ? null : Number(value);
        const name = backend === null ? "any backend" : state.snap.backends.find((b) => b.id === backend).name;
        const question = onGpu
          ? `Stop job #${job.id} of ${job.seat} on ${job.backend || "its GPU"} and queue it again on ${name}? It starts again from the beginning.`
          : null;
        act({ action: "move", jobs: [job.id], backend }, question);
      },
      onblur: () => {
        if (state.queueRenderWaiting) setTimeout(renderQueue, 0);
      },
    },
    el("option", { value: "" }, onGpu ? "Run on…" : "Move to…"),
    unpin ? el("option", { value: "any" }, "any backend") : null,
    targets.map((b) => el("option", { value: String(b.id) }, b.name)),
  );
}

function queueActions(job) {
  if (job.status === "queued") {
    return [
      el(
        "button",
        {
          type: "button",
          class: "button",
          disabled: job.lane,
          title: `Move job #${job.id} of ${job.seat} to the instructor lane. ${laneAdvice()}`,
          onclick: () => act({ action: "lane", jobs: [job.id] }),
        },
        "Move to lane",
      ),
      " ",
      el(
        "button",
        {
          type: "button",
          class: "button danger",
          title: `Cancel job #${job.id}: it leaves the queue and ${job.seat} sees it as cancelled.`,
          onclick: () => act({ action: "cancel", jobs: [job.id] }),
        },
        "Cancel",
      ),
      " ",
      moveSelect(job),
    ];
  }
  return [
    job.cancel_requested ? null : moveSelect(job),
    " ",
    el(
      "button",
      {
        type: "button",
        class: "button danger",
        disabled: job.cancel_requested,
        title: `Stop job #${job.id} on its GPU: it ends as interrupted and ${job.seat} keeps nothing from it.`,
        onclick: () =>
          act({ action: "cancel", jobs: [job.id] }, `Stop job #${job.id} of ${job.seat} on the GPU now?`),
      },
      job.cancel_requested ? "Stopping…" : "Stop",
    ),
  ];
}
