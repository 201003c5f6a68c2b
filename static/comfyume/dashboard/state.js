/* The dashboard's one shared state: what the page says about itself (set once by main.js) and what the
 * panels draw from or remember between two snapshots. Every module reads and writes it here. */

export const state = {
  root: null, // the #live-dashboard element
  urls: { snapshot: "", charts: "", act: "" },
  mayAct: false,
  mayChangeBackends: false,
  csrfToken: "",
  snap: null, // the last snapshot (workshops/instructor/dashboard.py, build_snapshot)
  charts: null, // the charts of the last hour (build_charts)
  // The queue form keeps what the instructor is typing; the snapshot fills it only while it is untouched.
  settingsEdited: false,
  // A re-drawn queue would close a "Move to…" list the instructor has open: drawn once it is closed.
  queueRenderWaiting: false,
  anyPinned: false, // some waiting job is pinned to a backend (so "any backend" is worth offering)
  clockOffset: 0, // the hub's clock minus this browser's, so waits tick from the hub's timestamps
  busy: false,
  // Live progress of jobs on a GPU, by prompt id: {nodes: {id: {state, value, max}}, node}. Kept here, not
  // in the snapshot: the hub does not store it, and it changes many times a second.
  progress: new Map(),
  selected: { queue: new Set(), ended: new Set() },
  // Fetches the snapshot again and redraws every panel; main.js sets it. The panels' buttons call act, and
  // act calls this: were it imported, the modules would import each other in a circle, which the static
  // files' manifest cannot hash (each name would depend on the other's).
  refresh: () => {},
};
