/* The charts of the last hour, drawn as inline SVG from the charts endpoint's figures (build_charts). */

import { state } from "./state.js";
import { $, clock, el, plural, svg } from "./dom.js";

// Drawn at about its own size (a third or half of the main column), so its 15 px text stays readable.
const CHART = { width: 320, height: 180, left: 46, right: 14, top: 12, bottom: 30 };
const OUTCOME_COLOURS = { succeeded: "#2e7d32", failed: "#b3261e", cancelled: "#8d8d8d" };
const LINE_COLOURS = { p50: "#1f6feb", p90: "#c2410c" };

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
  const charts = state.charts;
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
  const b = state.charts.buckets;
  return `${clock(b[index].start)}–${clock(index + 1 < b.length ? b[index + 1].start : state.charts.end)}`;
}

function throughputChart() {
  const charts = state.charts;
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
  const buckets = state.charts.buckets;
  const values = buckets.flatMap((b) => [b[key].p50, b[key].p90]).filter((v) => v !== null);
  const top = niceTop(values.length ? Math.max(...values) : 1, 1, false);
  const { frame, x, y, step } = chartFrame(title, top, shortDuration);
  for (const quantile of ["p50", "p90"]) {
    let path = "";
    buckets.forEach((bucket, index) => {
      const value = bucket[key][quantile];
      if (value === null) return;
      const cx = x(index) + step / 2;
      // A bucket without jobs breaks the line rather than drawing through it.
      const joined = index > 0 && buckets[index - 1][key][quantile] !== null;
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

export function renderCharts() {
  const charts = state.charts;
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
