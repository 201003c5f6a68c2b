/* The instructor's actions: one POST each, its answer shown above the tables; and the selection the bulk
 * buttons of the queue and of the ended jobs act on. */

import { state } from "./state.js";
import { $, el, plural } from "./dom.js";

const MAX_MESSAGES = 4;
const MESSAGE_SECONDS = 20;

export async function readJson(response) {
  // Signed out, the admin answers with its login page (after a redirect), not JSON.
  if (!(response.headers.get("Content-Type") || "").includes("application/json")) return null;
  try {
    return await response.json();
  } catch (error) {
    return null;
  }
}

/** Show what an action did (or why not) at the top of the window, whatever part of the page it came from. */
export function say(level, text) {
  const list = $("dashboard-messages");
  const time = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const item = el("li", { class: level, title: "Click to dismiss", onclick: () => item.remove() }, `${time} — ${text}`);
  list.prepend(item);
  while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
  // Successes fade after a while; a refusal stays until dismissed, so nobody misses that nothing happened.
  if (level === "success") setTimeout(() => item.remove(), MESSAGE_SECONDS * 1000);
}

function setBusy(on) {
  state.busy = on;
  state.root.classList.toggle("busy", on);
  updateBulk();
}

/** POST one action; show what the hub answered; refresh. Returns the answer (null if not sent). */
export async function act(payload, question) {
  if (state.busy) return null;
  if (question && !window.confirm(question)) return null;
  setBusy(true);
  let answer;
  try {
    const response = await fetch(state.urls.act, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": state.csrfToken },
      body: JSON.stringify(payload),
    });
    answer = (await readJson(response)) || {
      ok: false,
      message:
        response.status === 403
          ? "Refused: your session may have ended. Reload the page (sign in again if asked) and retry."
          : `The hub answered ${response.status} and did not say why; reload the page to see the current state.`,
    };
  } catch (error) {
    answer = { ok: false, message: "Could not reach the hub: nothing was sent. Check the network and try again." };
  } finally {
    setBusy(false);
  }
  say(answer.ok ? "success" : "error", answer.message);
  if (answer.warning) say("warning", answer.warning);
  state.refresh();
  return answer;
}

// --- Selection and bulk actions -------------------------------------------------------------------

/** Moving only means something with two backends switched on, or to let a pinned job go anywhere again. */
export const canMove = () => state.snap.backends.filter((b) => b.enabled).length > 1 || state.anyPinned;

export function laneAdvice() {
  const w = state.snap.workshop;
  return w.lane_counts
    ? "Jobs in the instructor lane start before every participant job."
    : `The lane only goes first under the "Instructor lane and priority" policy; this workshop uses "${w.policy_label}".`;
}

export function pick(table, id, on) {
  if (on) state.selected[table].add(id);
  else state.selected[table].delete(id);
  updateBulk();
}

export function updateBulk() {
  if (!state.mayAct) return;
  const { busy, selected } = state;
  const chosen = state.snap.queue.filter((job) => selected.queue.has(job.id));
  const movable = chosen.filter((job) => job.status === "queued" && !job.lane);
  const cancel = $("bulk-cancel");
  cancel.disabled = busy || !chosen.length;
  cancel.textContent = chosen.length ? `Cancel ${plural(chosen.length, "selected job")}` : "Cancel selected jobs";
  const lane = $("bulk-lane");
  lane.disabled = busy || !movable.length;
  lane.textContent = movable.length
    ? `Move ${plural(movable.length, "waiting job")} to the instructor lane`
    : "Move selected to the instructor lane";
  lane.title = laneAdvice();
  updateBulkMove(chosen);
  $("bulk-hint").textContent = chosen.length ? "" : "Tick jobs to act on several at once.";
  const requeue = $("bulk-requeue");
  requeue.disabled = busy || !selected.ended.size;
  requeue.textContent = selected.ended.size
    ? `Queue ${plural(selected.ended.size, "selected job")} again`
    : "Queue selected again";
}

/** The bulk "Move selected" list offers the switched-on backends (and "any backend" to unpin waiting jobs). */
function updateBulkMove(chosen) {
  $("bulk-move-box").hidden = !canMove();
  const select = $("bulk-move-target");
  const previous = select.value;
  const options = [el("option", { value: "any" }, "to any backend")].concat(
    state.snap.backends.filter((b) => b.enabled).map((b) => el("option", { value: String(b.id) }, `to ${b.name}`)),
  );
  select.replaceChildren(...options);
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  else if (select.options.length > 1) select.value = select.options[1].value;
  const button = $("bulk-move");
  button.disabled = state.busy || !chosen.length;
  button.textContent = chosen.length ? `Move ${plural(chosen.length, "selected job")}` : "Move selected";
  button.title =
    "Waiting jobs wait for that backend only (any backend: for whichever is free); jobs on a GPU are stopped " +
    "and run again from the start there.";
}

/** The bulk buttons above the queue and the ended jobs (shown only to an instructor who may act). */
export function wireBulk() {
  const { selected } = state;
  const chosenJobs = () => state.snap.queue.filter((job) => selected.queue.has(job.id));
  $("bulk-move").addEventListener("click", () => {
    const chosen = chosenJobs();
    const value = $("bulk-move-target").value;
    const backend = value === "any" ? null : Number(value);
    const name = backend === null ? "any backend" : state.snap.backends.find((b) => b.id === backend).name;
    const running = chosen.filter((job) => job.status !== "queued").length;
    const question = running
      ? `Move ${plural(chosen.length, "job")} to ${name}? ${running === 1 ? "One is" : `${running} are`} on a GPU: ` +
        "stopped there, they start again from the beginning."
      : null;
    act({ action: "move", jobs: chosen.map((job) => job.id), backend }, question).then((answer) => {
      if (answer && answer.ok) selected.queue.clear();
    });
  });
  $("bulk-cancel").addEventListener("click", () => {
    const chosen = chosenJobs();
    const running = chosen.filter((job) => job.status !== "queued").length;
    const onGpu = running === 1 ? "One of them is" : `${running} of them are`;
    const question = `Cancel ${plural(chosen.length, "job")}?${running ? ` ${onGpu} on a GPU and will be stopped.` : ""}`;
    act({ action: "cancel", jobs: chosen.map((job) => job.id) }, question).then((answer) => {
      if (answer && answer.ok) selected.queue.clear();
    });
  });
  $("bulk-lane").addEventListener("click", () => {
    const movable = chosenJobs().filter((job) => job.status === "queued" && !job.lane);
    act({ action: "lane", jobs: movable.map((job) => job.id) }).then((answer) => {
      if (answer && answer.ok) selected.queue.clear();
    });
  });
  $("bulk-requeue").addEventListener("click", () => {
    act({ action: "requeue", jobs: [...selected.ended] }).then((answer) => {
      if (answer && answer.ok) selected.ended.clear();
    });
  });
}
