/* The progress of the jobs on a GPU, from the ComfyUI messages on the workshop's socket: many a second, so each
 * one moves its job's bar in place rather than redrawing the queue. */

import { state } from "./state.js";
import { el, ticking } from "./dom.js";

export function progressBox(job) {
  const box = el("div", { class: "progress", dataset: { prompt: job.prompt_id } });
  fillProgress(box, job);
  return box;
}

/** The bar and words for a job on a GPU, from the progress messages seen so far. */
function fillProgress(box, job) {
  const live = state.progress.get(job.prompt_id);
  const titles = job.nodes || {};
  const bar = el("progress", { max: "1", "aria-label": `Progress of job #${job.id}` });
  let words = job.status === "dispatching" ? "starting on the GPU…" : "running";
  if (live) {
    const states = Object.values(live.nodes);
    const done = states.filter((n) => n.state === "finished").length;
    const partial = states
      .filter((n) => n.state === "running" && n.max)
      .reduce((sum, n) => sum + Math.min(1, n.value / n.max), 0);
    const total = Math.max(Object.keys(titles).length, states.length, 1);
    bar.value = Math.min(1, (done + partial) / total);
    const current = live.node !== null ? live.nodes[live.node] : null;
    const name = live.node !== null ? (titles[live.node] ? `${titles[live.node]} (#${live.node})` : `node ${live.node}`) : "";
    words = [
      name && `executing ${name}`,
      current && current.state === "running" && current.max > 1 ? `${current.value}/${current.max}` : "",
      `${done}/${total} nodes`,
    ]
      .filter(Boolean)
      .join(" · ");
  }
  const parts = [bar, el("span", { class: "node" }, words)];
  if (job.started_at) parts.push(el("span", { class: "node" }, "running for ", ticking(job.started_at)));
  box.replaceChildren(...parts); // replaceChildren would write a null as the text "null"
}

function showProgress(promptId) {
  const job = state.snap.queue.find((j) => j.prompt_id === promptId);
  const box = job && state.root.querySelector(`.progress[data-prompt="${CSS.escape(promptId)}"]`);
  if (box) fillProgress(box, job);
}

function progressOf(promptId) {
  if (!state.progress.has(promptId)) state.progress.set(promptId, { nodes: {}, node: null });
  return state.progress.get(promptId);
}

/** Forget the progress of the jobs no longer in the queue (called with each new snapshot). */
export function forgetEnded(queue) {
  const onGpu = new Set(queue.map((job) => job.prompt_id));
  for (const promptId of [...state.progress.keys()]) if (!onGpu.has(promptId)) state.progress.delete(promptId);
}

/** Take in one of ComfyUI's progress messages and move its job's bar; any other message is ignored. */
export function trackProgress(message) {
  const data = message.data || {};
  switch (message.type) {
    case "progress_state": {
      if (!data.prompt_id) break;
      const live = progressOf(data.prompt_id);
      live.nodes = {};
      for (const [id, node] of Object.entries(data.nodes || {})) live.nodes[id] = { ...node };
      const running = Object.entries(live.nodes).find(([, node]) => node.state === "running");
      if (running) live.node = running[0];
      showProgress(data.prompt_id);
      break;
    }
    case "progress": {
      if (!data.prompt_id || data.node === undefined || data.node === null) break;
      const live = progressOf(data.prompt_id);
      const id = String(data.node);
      live.nodes[id] = { ...(live.nodes[id] || {}), state: "running", value: data.value, max: data.max };
      live.node = id;
      showProgress(data.prompt_id);
      break;
    }
    case "executing": {
      if (!data.prompt_id) break;
      const live = progressOf(data.prompt_id);
      live.node = data.node === null || data.node === undefined ? null : String(data.display_node ?? data.node);
      showProgress(data.prompt_id);
      break;
    }
    default:
      break;
  }
}
