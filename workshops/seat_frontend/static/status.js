// ComfyuME's extension for the participant's ComfyUI: a small banner that says where the seat's job is
// (its place in the queue, "GPU starting", running, done) and shows the instructor's announcements.
// It only listens: the frontend's own Queue button and /prompt call stay the submission path.
const comfyApp = window.comfyAPI.app.app;
const api = window.comfyAPI.api.api;

const STYLE = `
#comfyume-banner{position:fixed;left:50%;bottom:12px;transform:translateX(-50%);z-index:1200;display:flex;
  flex-direction:column;gap:6px;align-items:center;pointer-events:none;font:14px/1.35 system-ui,sans-serif}
#comfyume-banner .cm-pill{pointer-events:auto;background:#1f2937;color:#f9fafb;border:1px solid #374151;
  border-radius:999px;padding:6px 14px;box-shadow:0 2px 8px rgba(0,0,0,.35);display:flex;gap:8px;align-items:center}
#comfyume-banner .cm-pill[data-tone=ok]{border-color:#15803d}
#comfyume-banner .cm-pill[data-tone=wait]{border-color:#b45309}
#comfyume-banner .cm-pill[data-tone=bad]{border-color:#b91c1c;background:#3f1d1d}
#comfyume-banner .cm-dot{width:8px;height:8px;border-radius:50%;background:currentColor;opacity:.8}
#comfyume-banner .cm-note{pointer-events:auto;background:#fef3c7;color:#1f2937;border:1px solid #f59e0b;
  border-radius:8px;padding:8px 12px;max-width:min(640px,90vw);box-shadow:0 2px 8px rgba(0,0,0,.3);display:flex;gap:10px}
#comfyume-banner .cm-note button{background:none;border:0;font-size:16px;cursor:pointer;color:#92400e}
/* No comfy.org sign-in (API-node credits) in a workshop seat: jobs run on the workshop's GPUs, not on comfy.org's
   account, and a stock server's show_signin_button flag (off here) does not hide this button in newer frontends. */
[data-testid=login-button]{display:none !important}
`;

function elapsed(since) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

function describe(state) {
  const jobs = state.jobs || [];
  const active = jobs.find((j) => j.status === "running" || j.status === "dispatching");
  const queued = jobs.filter((j) => j.status === "queued");
  const backend = state.backend || {};
  const waiting = queued.length ? ` · ${queued.length} more queued` : "";
  if (active && active.status === "running") {
    return { tone: "ok", text: `Running on ${active.backend || "the GPU"} · ${elapsed(active.started_at)}${waiting}` };
  }
  if (active) {
    const since = active.dispatched_at || active.created_at;
    if (active.backend_state === "warming" || active.backend_state === "cold") {
      return { tone: "wait", text: `GPU starting · ${elapsed(since)}${waiting}` };
    }
    const slow = Date.now() - Date.parse(since) > 3000 ? ` · ${elapsed(since)}` : "";
    return { tone: "ok", text: `Sending your job to the GPU…${slow}${waiting}` };
  }
  if (queued.length) {
    const first = queued[0];
    if (state.paused) return { tone: "wait", text: "The instructor has paused the queue — your job waits its turn." };
    if (state.spending_capped) {
      return { tone: "wait", text: "The workshop's GPU budget is spent: no new job starts until the instructor raises it." };
    }
    if (backend.state === "warming" || backend.state === "cold") {
      return { tone: "wait", text: `GPU starting · ${elapsed(backend.since || first.created_at)}` };
    }
    if (backend.state === "failing" || backend.state === "none") {
      return { tone: "wait", text: "Waiting for a GPU — the instructor has been told." };
    }
    const ahead = first.queued_ahead || 0;
    const more = queued.length > 1 ? ` (+${queued.length - 1} more of yours)` : "";
    return {
      tone: "wait",
      text: ahead ? `Queued · ${ahead} job${ahead === 1 ? "" : "s"} ahead of yours${more}` : `Queued · next up${more}`,
    };
  }
  const last = jobs[0];
  if (last && last.finished_at && Date.now() - Date.parse(last.finished_at) < 120000) {
    if (last.status === "succeeded") return { tone: "ok", text: `Done in ${last.gpu_seconds.toFixed(1)} s` };
    if (last.status === "cancelled") return { tone: "wait", text: "Cancelled" };
    return { tone: "bad", text: `${last.status_label}${last.reason ? `: ${last.reason}` : ""}` };
  }
  return null;
}

function mount() {
  const style = document.createElement("style");
  style.textContent = STYLE;
  document.head.appendChild(style);
  const root = document.createElement("div");
  root.id = "comfyume-banner";
  root.setAttribute("role", "status");
  root.setAttribute("aria-live", "polite");
  document.body.appendChild(root);
  return root;
}

const dismissed = new Set(JSON.parse(sessionStorage.getItem("comfyume.dismissed") || "[]"));
let state = {};
let root = null;
let pending = null;

function render() {
  if (!root) return;
  root.replaceChildren();
  for (const note of state.announcements || []) {
    if (dismissed.has(note.id)) continue;
    const box = document.createElement("div");
    box.className = "cm-note";
    box.dataset.announcement = note.id;
    const text = document.createElement("span");
    text.textContent = note.message;
    const close = document.createElement("button");
    close.type = "button";
    close.title = "Dismiss";
    close.textContent = "×";
    close.onclick = () => {
      dismissed.add(note.id);
      sessionStorage.setItem("comfyume.dismissed", JSON.stringify([...dismissed]));
      render();
    };
    box.append(text, close);
    root.appendChild(box);
  }
  let line = describe(state);
  const budget = state.budget;
  if (budget && budget.exhausted) {
    line = { tone: "bad", text: budget.exhausted };
  } else if (budget && budget.used >= 0.8) {
    const note = `${Math.round(budget.used * 100)}% of your GPU budget used`;
    line = line ? { ...line, text: `${line.text} · ${note}` } : { tone: "wait", text: note };
  }
  if (line) {
    const pill = document.createElement("div");
    pill.className = "cm-pill";
    pill.dataset.tone = line.tone;
    const dot = document.createElement("span");
    dot.className = "cm-dot";
    const text = document.createElement("span");
    text.className = "cm-text";
    text.textContent = line.text;
    pill.append(dot, text);
    root.appendChild(pill);
  }
}

async function refresh() {
  try {
    const res = await api.fetchApi("/comfyume/status");
    if (res.ok) {
      state = await res.json();
      render();
    }
  } catch (err) {
    console.warn("ComfyuME status unavailable", err);
  }
}

function refreshSoon() {
  clearTimeout(pending);
  pending = setTimeout(refresh, 150);
}

async function openDefaultTemplate() {
  // A seat whose canvas is empty (a first visit) opens the workshop's default template.
  const graph = comfyApp.graph;
  if (!graph || (graph._nodes && graph._nodes.length)) return;
  const res = await api.fetchApi("/comfyume/seat");
  const seat = res.ok ? await res.json() : {};
  if (!seat.default_template) return;
  const file = await api.fetchApi(`/userdata/${encodeURIComponent(`workflows/${seat.default_template}`)}`);
  if (!file.ok) return;
  await comfyApp.loadGraphData(await file.json(), true, true, seat.default_template);
}

comfyApp.registerExtension({
  name: "comfyume.status",
  async setup() {
    root = mount();
    api.addEventListener("comfyume.job", refreshSoon);
    api.addEventListener("comfyume.announcement", refreshSoon);
    api.addEventListener("comfyume.queue", refreshSoon);
    api.addEventListener("comfyume.backend", refreshSoon);
    api.addEventListener("reconnected", refreshSoon);
    setInterval(() => state.jobs && state.jobs.some((j) => j.status !== "succeeded") && render(), 1000);
    await refresh();
    try {
      await openDefaultTemplate();
    } catch (err) {
      console.warn("ComfyuME: could not open the workshop's default template", err);
    }
  },
});
