/* The instructor's live dashboard (templates/workshops/dashboard.html, workshops/instructor/views.py).
 *
 * Draws the tables from the snapshot the page was rendered with, then keeps them current without a reload:
 * the workshop's staff socket (/ws/hub/workshops/<slug>/) carries every seat's ComfyUI messages plus our
 * comfyume.* ones. A job changing state re-fetches the snapshot (at most one fetch per 300 ms), progress
 * messages move that job's bar in place, and each action is one POST whose answer is shown above the tables.
 * A dropped socket reconnects with backoff and fetches the snapshot again, so no missed event is lost.
 * The charts of the last hour come from their own endpoint every 30 s and are drawn as inline SVG.
 */
"use strict";

(() => {
  const root = document.getElementById("live-dashboard");
  if (!root) return;

  const REFRESH_DEBOUNCE_MS = 300; // a burst of job events (a bulk cancel) costs one fetch
  const SAFETY_REFRESH_MS = 30000; // a backend's health changes send no event: look again now and then
  const MAX_BACKOFF_MS = 15000;
  const MAX_MESSAGES = 4;
  const MESSAGE_SECONDS = 20;
  const CHARTS_REFRESH_MS = 30000; // 5-minute buckets: fresher would show nothing new
  const QUEUE_SETTINGS = ["queue_policy", "max_queued_per_seat", "max_running_per_seat", "max_queue_depth"];

  const urls = { snapshot: root.dataset.snapshotUrl, charts: root.dataset.chartsUrl, act: root.dataset.actUrl };
  const mayAct = root.dataset.mayAct === "true";
  const mayChangeBackends = root.dataset.mayChangeBackends === "true";
  const csrfToken = root.querySelector("input[name=csrfmiddlewaretoken]")?.value || "";
  const $ = (id) => document.getElementById(id);

  let snap = JSON.parse($("dashboard-snapshot").textContent);
  let charts = JSON.parse($("dashboard-charts").textContent);
  // The queue form keeps what the instructor is typing; the snapshot fills it only while it is untouched.
  let settingsEdited = false;
  // A re-drawn queue would close a "Move to…" list the instructor has open: drawn once it is closed.
  let queueRenderWaiting = false;
  let anyPinned = false; // some waiting job is pinned to a backend (so "any backend" is worth offering)
  let clockOffset = 0; // the hub's clock minus this browser's, so waits tick from the hub's timestamps
  let busy = false;
  // Live progress of jobs on a GPU, by prompt id: {nodes: {id: {state, value, max}}, node}. Kept here, not
  // in the snapshot: the hub does not store it, and it changes many times a second.
  const progress = new Map();
  const selected = { queue: new Set(), ended: new Set() };

  // --- Small helpers ----------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false || child === "") continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const now = () => Date.now() + clockOffset;
  const secondsSince = (iso) => (now() - Date.parse(iso)) / 1000;
  const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const money = (value) => Number(value).toFixed(2);

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const minutes = Math.floor(s / 60);
    if (minutes < 60) return `${minutes} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
  }

  /** A duration since ``iso`` that the clock below keeps ticking. */
  const ticking = (iso) => el("span", { class: "since", dataset: { since: iso } }, duration(secondsSince(iso)));

  const pill = (kind, label) => el("span", { class: `status ${kind}` }, label);

  function seatName(label, name) {
    return [el("strong", {}, label), name ? ` ${name}` : ""];
  }

  function emptyRow(columns, text) {
    return el("tr", { class: "empty" }, el("td", { colspan: String(columns) }, text));
  }

  // --- Drawing the snapshot -----------------------------------------------------------------------------

  function renderAll() {
    renderBar();
    renderQueue();
    renderSeats();
    renderEnded();
    renderBackends();
    renderTotals();
    renderAnnouncements();
    renderActions();
    renderSettings();
  }

  function renderBar() {
    const w = snap.workshop;
    const caps = w.caps;
    $("policy").textContent =
      `${w.policy_label} · up to ${caps.max_queued_per_seat} waiting and ${caps.max_running_per_seat} running ` +
      `per seat · queue depth ${caps.max_queue_depth}`;
    $("updated").textContent = `Updated ${new Date(snap.generated_at).toLocaleTimeString()}`;
    $("paused-banner").hidden = !w.paused;
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

  function renderQueue() {
    anyPinned = snap.queue.some((job) => job.status === "queued" && job.pinned_backend);
    const open = document.activeElement;
    if (open && open.matches && open.matches("#queue-rows select.move")) {
      queueRenderWaiting = true;
      return;
    }
    queueRenderWaiting = false;
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

  function queueRow(job) {
    const onGpu = job.status !== "queued";
    const tr = el("tr", { dataset: { job: String(job.id), prompt: job.prompt_id, status: job.status } });
    if (mayAct) {
      tr.append(
        el(
          "td",
          {},
          el("input", {
            type: "checkbox",
            "aria-label": `Select job #${job.id} of ${job.seat}`,
            checked: selected.queue.has(job.id),
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
    if (mayAct) tr.append(el("td", { class: "actions" }, queueActions(job)));
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
    return snap.backends.filter((b) => b.enabled && b.id !== here);
  }

  /** Moving only means something with two backends switched on, or to let a pinned job go anywhere again. */
  const canMove = () => snap.backends.filter((b) => b.enabled).length > 1 || anyPinned;

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
          const name = backend === null ? "any backend" : snap.backends.find((b) => b.id === backend).name;
          const question = onGpu
            ? `Stop job #${job.id} of ${job.seat} on ${job.backend || "its GPU"} and queue it again on ${name}? It starts again from the beginning.`
            : null;
          act({ action: "move", jobs: [job.id], backend }, question);
        },
        onblur: () => {
          if (queueRenderWaiting) setTimeout(renderQueue, 0);
        },
      },
      el("option", { value: "" }, onGpu ? "Run on…" : "Move to…"),
      unpin ? el("option", { value: "any" }, "any backend") : null,
      targets.map((b) => el("option", { value: String(b.id) }, b.name)),
    );
  }

  function laneAdvice() {
    const w = snap.workshop;
    return w.lane_counts
      ? "Jobs in the instructor lane start before every participant job."
      : `The lane only goes first under the "Instructor lane and priority" policy; this workshop uses "${w.policy_label}".`;
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

  function progressBox(job) {
    const box = el("div", { class: "progress", dataset: { prompt: job.prompt_id } });
    fillProgress(box, job);
    return box;
  }

  /** The bar and words for a job on a GPU, from the progress messages seen so far. */
  function fillProgress(box, job) {
    const live = progress.get(job.prompt_id);
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
    const job = snap.queue.find((j) => j.prompt_id === promptId);
    const box = job && root.querySelector(`.progress[data-prompt="${CSS.escape(promptId)}"]`);
    if (box) fillProgress(box, job);
  }

  function renderSeats() {
    const seats = snap.seats;
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
    const budget = snap.workshop.budget;
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

  function renderEnded() {
    const rows = snap.ended;
    const present = new Set(rows.filter((job) => job.can_requeue).map((job) => job.id));
    for (const id of [...selected.ended]) if (!present.has(id)) selected.ended.delete(id);
    $("ended-rows").replaceChildren(...(rows.length ? rows.map(endedRow) : [emptyRow(mayAct ? 7 : 5, "No job has ended yet.")]));
    updateBulk();
  }

  function endedRow(job) {
    const tr = el("tr", { dataset: { job: String(job.id), status: job.status } });
    if (mayAct) {
      tr.append(
        el(
          "td",
          {},
          job.can_requeue
            ? el("input", {
                type: "checkbox",
                "aria-label": `Select job #${job.id} of ${job.seat} to queue it again`,
                checked: selected.ended.has(job.id),
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
    if (mayAct) {
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

  function renderBackends() {
    const rows = snap.backends;
    $("backend-rows").replaceChildren(
      ...(rows.length
        ? rows.map((b) => {
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
          })
        : [emptyRow(4, "No GPU backend is attached: jobs cannot run. Add one in the workshop's settings.")]),
    );
  }

  function backendActions(b) {
    if (!mayChangeBackends) return null;
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

  function renderSettings() {
    const form = $("queue-settings");
    if (!form || settingsEdited) return;
    const w = snap.workshop;
    form.elements.queue_policy.value = w.policy;
    for (const name of QUEUE_SETTINGS.slice(1)) form.elements[name].value = String(w.caps[name]);
  }

  // --- Charts of the last hour ----------------------------------------------------------------------------

  const SVG_NS = "http://www.w3.org/2000/svg";
  // Drawn at about its own size (a third or half of the main column), so its 15 px text stays readable.
  const CHART = { width: 320, height: 180, left: 46, right: 14, top: 12, bottom: 30 };
  const OUTCOME_COLOURS = { succeeded: "#2e7d32", failed: "#b3261e", cancelled: "#8d8d8d" };
  const LINE_COLOURS = { p50: "#1f6feb", p90: "#c2410c" };

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) if (value !== null && value !== undefined) node.setAttribute(key, value);
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** A round top for an axis whose ticks are 0, half and top; whole numbers for counts. */
  function niceTop(value, minimum, whole) {
    const top = Math.max(value, minimum);
    const magnitude = 10 ** Math.floor(Math.log10(top));
    let nice = 10 * magnitude;
    for (const step of [1, 2, 4, 6, 8, 10]) { // halves that read well: 0.5, 1, 2, 3, 4, 5
      if (step * magnitude >= top) {
        nice = step * magnitude;
        break;
      }
    }
    return whole ? Math.ceil(nice / 2) * 2 : nice;
  }

  function shortDuration(seconds) {
    const trim = (value) => value.toFixed(1).replace(/\.0$/, "");
    if (seconds < 10) return `${trim(seconds)} s`;
    if (seconds < 90) return `${Math.round(seconds)} s`;
    const minutes = seconds / 60;
    return minutes < 10 ? `${trim(minutes)} min` : `${Math.round(minutes)} min`;
  }

  /** The frame every chart shares: horizontal grid with labels, and the clock at its start, middle and end. */
  function chartFrame(title, top, label) {
    const { width, height, left, right, top: pad, bottom } = CHART;
    const plotHeight = height - pad - bottom;
    const y = (value) => pad + plotHeight - (value / top) * plotHeight;
    const buckets = charts.buckets.length;
    const x = (index) => left + (index / buckets) * (width - left - right);
    const frame = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
    for (const value of [0, top / 2, top]) {
      frame.append(
        svg("line", { class: value ? "grid" : "axis", x1: left, x2: width - right, y1: y(value), y2: y(value) }),
        svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" }, label(value)),
      );
    }
    const times = charts.buckets.map((b) => b.start).concat([charts.end]);
    for (let index = 0; index <= buckets; index += buckets / 2) {
      const anchor = index === 0 ? "start" : index === buckets ? "end" : "middle"; // the ends stay inside
      frame.append(svg("text", { x: x(index), y: height - 8, "text-anchor": anchor }, clock(times[index])));
    }
    return { frame, x, y, step: (width - left - right) / buckets };
  }

  function bucketSpan(index) {
    const b = charts.buckets;
    return `${clock(b[index].start)}–${clock(index + 1 < b.length ? b[index + 1].start : charts.end)}`;
  }

  function throughputChart() {
    const outcomes = charts.outcomes;
    const totals = charts.buckets.map((b) => outcomes.reduce((sum, o) => sum + b.finished[o.key], 0));
    const top = niceTop(Math.max(...totals), 4, true);
    const { frame, x, y, step } = chartFrame("Jobs ended per 5 minutes, by outcome", top, (v) => String(Math.round(v)));
    charts.buckets.forEach((bucket, index) => {
      let base = 0;
      const words = outcomes.filter((o) => bucket.finished[o.key]).map((o) => `${bucket.finished[o.key]} ${o.label.toLowerCase()}`);
      const bar = svg("g", {}, svg("title", {}, `${bucketSpan(index)}: ${words.join(", ") || "none"}`));
      for (const outcome of outcomes) {
        const count = bucket.finished[outcome.key];
        if (!count) continue;
        bar.append(svg("rect", { x: x(index) + 2, width: Math.max(step - 4, 1), y: y(base + count), height: y(base) - y(base + count), fill: OUTCOME_COLOURS[outcome.key] }));
        base += count;
      }
      frame.append(bar);
    });
    return chartBox(
      "Jobs ended per 5 minutes",
      frame,
      outcomes.map((o) => el("span", { style: `--swatch: ${OUTCOME_COLOURS[o.key]}` }, o.label)),
    );
  }

  function latencyChart(key, title) {
    const values = charts.buckets.flatMap((b) => [b[key].p50, b[key].p90]).filter((v) => v !== null);
    const top = niceTop(values.length ? Math.max(...values) : 1, 1, false);
    const { frame, x, y, step } = chartFrame(title, top, shortDuration);
    for (const quantile of ["p50", "p90"]) {
      let path = "";
      charts.buckets.forEach((bucket, index) => {
        const value = bucket[key][quantile];
        if (value === null) return;
        const cx = x(index) + step / 2;
        // A bucket without jobs breaks the line rather than drawing through it.
        const joined = index > 0 && charts.buckets[index - 1][key][quantile] !== null;
        path += `${joined ? "L" : "M"}${cx.toFixed(1)},${y(value).toFixed(1)}`;
        frame.append(
          svg("circle", { cx, cy: y(value), r: 3.5, fill: LINE_COLOURS[quantile] },
            svg("title", {}, `${bucketSpan(index)}: ${quantile} ${shortDuration(value)} (${plural(bucket[key].jobs, "job")})`)),
        );
      });
      frame.insertBefore(
        svg("path", { d: path, fill: "none", stroke: LINE_COLOURS[quantile], "stroke-width": 2.5, "stroke-dasharray": quantile === "p90" ? "6 4" : null }),
        frame.querySelector("circle"),
      );
    }
    return chartBox(title, frame, [
      el("span", { class: "line", style: `--swatch: ${LINE_COLOURS.p50}` }, "median (p50)"),
      el("span", { class: "line", style: `--swatch: ${LINE_COLOURS.p90}` }, "9 in 10 jobs under (p90)"),
    ]);
  }

  function chartBox(title, frame, legend) {
    return el("figure", { class: "chart", dataset: { chart: title } }, el("h3", {}, title), frame, el("div", { class: "legend" }, legend));
  }

  function renderCharts() {
    const box = $("charts");
    $("charts-count").textContent = `(${charts.bucket_minutes}-minute steps · ${plural(charts.finished, "job")} ended)`;
    if (!charts.finished) {
      box.replaceChildren(el("p", { class: "charts-empty" }, "No jobs finished in the last hour"));
      return;
    }
    box.replaceChildren(
      throughputChart(),
      latencyChart("wait", "Wait before starting"),
      latencyChart("run", "Run time on the GPU"),
    );
  }

  async function refreshCharts() {
    try {
      const response = await fetch(urls.charts, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
      const data = await readJson(response);
      if (data) {
        charts = data;
        renderCharts();
      }
    } catch (error) {
      // The next tick tries again; the socket's indicator already says when the hub cannot be reached.
    }
  }

  function renderTotals() {
    const t = snap.totals;
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

  function renderAnnouncements() {
    const list = $("announcements");
    if (!list) return;
    list.replaceChildren(
      ...snap.announcements.map((note) =>
        el(
          "li",
          { dataset: { announcement: String(note.id) } },
          el("span", {}, note.message, el("span", { class: "reason" }, `shown since ${clock(note.created_at)}`)),
          el(
            "button",
            {
              type: "button",
              class: "button",
              title: "Take this note off every participant's banner",
              onclick: () => act({ action: "withdraw", announcement: note.id }),
            },
            "Withdraw",
          ),
        ),
      ),
    );
  }

  function renderActions() {
    $("actions").replaceChildren(
      ...(snap.actions.length
        ? snap.actions.map((a) => el("li", {}, el("span", { class: "quiet" }, `${clock(a.at)} ${a.who || "—"}: `), a.summary))
        : [el("li", { class: "quiet" }, "Nothing done in this workshop yet.")]),
    );
  }

  // --- Selection and bulk actions -------------------------------------------------------------------

  function pick(table, id, on) {
    if (on) selected[table].add(id);
    else selected[table].delete(id);
    updateBulk();
  }

  function updateBulk() {
    if (!mayAct) return;
    const chosen = snap.queue.filter((job) => selected.queue.has(job.id));
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
      snap.backends.filter((b) => b.enabled).map((b) => el("option", { value: String(b.id) }, `to ${b.name}`)),
    );
    select.replaceChildren(...options);
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
    else if (select.options.length > 1) select.value = select.options[1].value;
    const button = $("bulk-move");
    button.disabled = busy || !chosen.length;
    button.textContent = chosen.length ? `Move ${plural(chosen.length, "selected job")}` : "Move selected";
    button.title =
      "Waiting jobs wait for that backend only (any backend: for whichever is free); jobs on a GPU are stopped " +
      "and run again from the start there.";
  }

  function wireControls() {
    if (!mayAct) return;
    $("bulk-move").addEventListener("click", () => {
      const chosen = snap.queue.filter((job) => selected.queue.has(job.id));
      const value = $("bulk-move-target").value;
      const backend = value === "any" ? null : Number(value);
      const name = backend === null ? "any backend" : snap.backends.find((b) => b.id === backend).name;
      const running = chosen.filter((job) => job.status !== "queued").length;
      const question = running
        ? `Move ${plural(chosen.length, "job")} to ${name}? ${running === 1 ? "One is" : `${running} are`} on a GPU: ` +
          "stopped there, they start again from the beginning."
        : null;
      act({ action: "move", jobs: chosen.map((job) => job.id), backend }, question).then((answer) => {
        if (answer && answer.ok) selected.queue.clear();
      });
    });
    const settings = $("queue-settings");
    settings.addEventListener("input", () => {
      settingsEdited = true;
    });
    settings.addEventListener("submit", async (event) => {
      event.preventDefault();
      const payload = { action: "queue_settings" };
      for (const name of QUEUE_SETTINGS) payload[name] = settings.elements[name].value.trim();
      const answer = await act(payload);
      if (answer && answer.ok) {
        settingsEdited = false;
        renderSettings();
      }
    });
    $("queue-all").addEventListener("change", (event) => {
      for (const job of snap.queue) pick("queue", job.id, event.target.checked);
      renderQueue();
    });
    $("bulk-cancel").addEventListener("click", () => {
      const chosen = snap.queue.filter((job) => selected.queue.has(job.id));
      const running = chosen.filter((job) => job.status !== "queued").length;
      const onGpu = running === 1 ? "One of them is" : `${running} of them are`;
      const question = `Cancel ${plural(chosen.length, "job")}?${running ? ` ${onGpu} on a GPU and will be stopped.` : ""}`;
      act({ action: "cancel", jobs: chosen.map((job) => job.id) }, question).then((answer) => {
        if (answer && answer.ok) selected.queue.clear();
      });
    });
    $("bulk-lane").addEventListener("click", () => {
      const movable = snap.queue.filter((job) => selected.queue.has(job.id) && job.status === "queued" && !job.lane);
      act({ action: "lane", jobs: movable.map((job) => job.id) }).then((answer) => {
        if (answer && answer.ok) selected.queue.clear();
      });
    });
    $("bulk-requeue").addEventListener("click", () => {
      act({ action: "requeue", jobs: [...selected.ended] }).then((answer) => {
        if (answer && answer.ok) selected.ended.clear();
      });
    });
    $("pause-toggle").addEventListener("click", (event) => act({ action: event.currentTarget.dataset.action }));
    const text = $("announce-text");
    const left = () => {
      $("announce-left").textContent = `${text.maxLength - text.value.length} characters left`;
    };
    text.addEventListener("input", left);
    left();
    const send = async () => {
      if (!text.value.trim()) {
        say("error", "Write the announcement first.");
        text.focus();
        return;
      }
      const answer = await act({ action: "announce", message: text.value });
      if (answer && answer.ok) {
        text.value = "";
        left();
      }
    };
    $("announce-send").addEventListener("click", send);
    text.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) send();
    });
  }

  // --- Talking to the hub ---------------------------------------------------------------------------

  async function readJson(response) {
    // Signed out, the admin answers with its login page (after a redirect), not JSON.
    if (!(response.headers.get("Content-Type") || "").includes("application/json")) return null;
    try {
      return await response.json();
    } catch (error) {
      return null;
    }
  }

  /** Show what an action did (or why not) at the top of the window, whatever part of the page it came from. */
  function say(level, text) {
    const list = $("dashboard-messages");
    const time = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    const item = el("li", { class: level, title: "Click to dismiss", onclick: () => item.remove() }, `${time} — ${text}`);
    list.prepend(item);
    while (list.children.length > MAX_MESSAGES) list.lastElementChild.remove();
    // Successes fade after a while; a refusal stays until dismissed, so nobody misses that nothing happened.
    if (level === "success") setTimeout(() => item.remove(), MESSAGE_SECONDS * 1000);
  }

  function setBusy(on) {
    busy = on;
    root.classList.toggle("busy", on);
    updateBulk();
  }

  /** POST one action; show what the hub answered; refresh. Returns the answer (null if not sent). */
  async function act(payload, question) {
    if (busy) return null;
    if (question && !window.confirm(question)) return null;
    setBusy(true);
    let answer;
    try {
      const response = await fetch(urls.act, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken },
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
    refresh();
    return answer;
  }

  let refreshTimer = null;
  let fetching = false;
  let fetchAgain = false;

  function refreshSoon() {
    // Events within the window join the fetch already planned rather than postponing it, so a busy
    // workshop still sees its tables change at least every REFRESH_DEBOUNCE_MS.
    if (refreshTimer !== null) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refresh();
    }, REFRESH_DEBOUNCE_MS);
  }

  async function refresh() {
    if (fetching) {
      fetchAgain = true; // one more fetch after this one, so the last event is never missed
      return;
    }
    fetching = true;
    try {
      const response = await fetch(urls.snapshot, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      const data = await readJson(response);
      if (data) apply(data);
      else if (response.ok || response.redirected) setLive("signed-out", "signed out — reload the page");
    } catch (error) {
      // The hub restarting or the network dropping: the socket's indicator says so, and it refreshes on reconnect.
    } finally {
      fetching = false;
      if (fetchAgain) {
        fetchAgain = false;
        refreshSoon();
      }
    }
  }

  function apply(data) {
    snap = data;
    clockOffset = Date.parse(data.generated_at) - Date.now();
    const onGpu = new Set(data.queue.map((job) => job.prompt_id));
    for (const promptId of [...progress.keys()]) if (!onGpu.has(promptId)) progress.delete(promptId);
    renderAll();
  }

  function progressOf(promptId) {
    if (!progress.has(promptId)) progress.set(promptId, { nodes: {}, node: null });
    return progress.get(promptId);
  }

  function onMessage(message) {
    const data = message.data || {};
    switch (message.type) {
      case "comfyume.job":
      case "comfyume.queue":
      case "comfyume.announcement":
      case "comfyume.backend":
        refreshSoon();
        break;
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

  function setLive(state, text) {
    const badge = $("live-status");
    badge.className = `live-status ${state}`;
    badge.textContent = text;
  }

  let attempt = 0;
  let reconnected = false;

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}${root.dataset.socketPath}`);
    socket.onopen = () => {
      attempt = 0;
      setLive("live", "live");
      refresh(); // whatever happened while the socket was down (or before it first opened)
      if (reconnected) refreshCharts(); // the page came with fresh ones the first time
      reconnected = true;
    };
    socket.onmessage = (event) => {
      try {
        onMessage(JSON.parse(event.data));
      } catch (error) {
        console.warn("ComfyuME dashboard: unreadable message", error);
      }
    };
    socket.onclose = (event) => {
      if (event.code === 4401 || event.code === 4403) {
        setLive("signed-out", "signed out — reload the page");
        return;
      }
      // Exponential backoff with jitter, so a restarted hub is not hit by every dashboard at once.
      const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** attempt) * (0.8 + Math.random() * 0.4);
      attempt += 1;
      setLive("reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s…`);
      setTimeout(connect, delay);
    };
  }

  // --- Start --------------------------------------------------------------------------------------------

  clockOffset = Date.parse(snap.generated_at) - Date.now();
  renderAll();
  renderCharts();
  wireControls();
  connect();
  setInterval(() => {
    for (const span of root.querySelectorAll(".since")) span.textContent = duration(secondsSince(span.dataset.since));
  }, 1000);
  setInterval(() => {
    if (!document.hidden) refresh();
  }, SAFETY_REFRESH_MS);
  setInterval(() => {
    if (!document.hidden) refreshCharts();
  }, CHARTS_REFRESH_MS);
})();
