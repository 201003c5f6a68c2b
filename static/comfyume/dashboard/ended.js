/* The panel of recently ended jobs, newest first; a failed, interrupted, timed-out or cancelled one can be
 * queued again. */

import { state } from "./state.js";
import { $, clock, duration, el, emptyRow, pill, seatName } from "./dom.js";
import { act, pick, updateBulk } from "./controls.js";

export function renderEnded() {
  const { snap, selected, mayAct } = state;
  const rows = snap.ended;
  const present = new Set(rows.filter((job) => job.can_requeue).map((job) => job.id));
  for (const id of [...selected.ended]) if (!present.has(id)) selected.ended.delete(id);
  $("ended-rows").replaceChildren(...(rows.length ? rows.map(endedRow) : [emptyRow(mayAct ? 7 : 5, "No job has ended yet.")]));
  updateBulk();
}

function endedRow(job) {
  const tr = el("tr", { dataset: { job: String(job.id), status: job.status } });
  if (state.mayAct) {
    tr.append(
      el(
        "td",
        {},
        job.can_requeue
          ? el("input", {
              type: "checkbox",
              "aria-label": `Select job #${job.id} of ${job.seat} to queue it again`,
              checked: state.selected.ended.has(job.id),
              onchange: (event) => pick("ended", job.id, event.target.checked),
            })
          : null,
      ),
    );
  }
  tr.append(
    el("td", {}, el("a", { href: job.admin_url }, `#${job.id}`)),
    el("td", {}, seatName(job.seat, job.seat_name)),
    el("td", {}, pill(job.status, job.status_label), job.reason ? el("span", { class: "reason" }, job.reason) : null),
    el("td", { class: "num" }, duration(job.gpu_seconds)),
    el("td", { class: "num" }, job.finished_at ? clock(job.finished_at) : "—"),
  );
  if (state.mayAct) {
    tr.append(
      el(
        "td",
        { class: "actions" },
        job.can_requeue
          ? el(
              "button",
              {
                type: "button",
                class: "button",
                title: `Queue job #${job.id}'s prompt again as a new job for ${job.seat} (caps and budget apply).`,
                onclick: () => act({ action: "requeue", jobs: [job.id] }),
              },
              "Queue again",
            )
          : null,
      ),
    );
  }
  return tr;
}
