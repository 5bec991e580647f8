// The sweep page (#/sweeps/{id}): a live grid of its jobs, rows the first axis's values and
// columns the second's; each cell shows its values, its status, its latest snapshot while it runs
// and its result once it has succeeded, and links to the job's own page. It polls GET
// /sweeps/{id} (If-None-Match: 304 while nothing changed), which has each cell's progress and
// latest snapshot; one event stream per cell would take all the browser's connections. From a
// service whose sweep view lacks them, the running cells' GET /jobs/{id} gives them.

import { request, cancelSweep, sweepUrl, sweepFinal, isFinal, asProblem } from "./api.js";
import { h, $, show, valueText } from "./dom.js";
import { ImageCache } from "./images.js";
import { apiKey } from "./key.js";
import { showError, clearError } from "./notice.js";

const POLL_MS = 1500;
const ORDER = ["running", "queued", "succeeded", "failed", "canceled"];

/** "style weight = 100"; the style axis's values are indices, shown as the images' names. */
function axisLabel(axis, value) {
  const index = axis.values.findIndex((v) => keyOf(v) === keyOf(value));
  return `${axis.name.replaceAll("_", " ")} = ${axis.labels?.[index] ?? valueText(value)}`;
}
/** A value as a key: equal values (100 and 100.0 alike) give the same text. */
const keyOf = (values) => JSON.stringify(values);

/** The cartesian product of the axes' values: [[v0, v1, ...], ...], the last axis fastest. */
function combinations(axes) {
  return axes.reduce((rows, axis) => rows.flatMap((row) => axis.values.map((v) => [...row, v])), [[]]);
}

/** GET url with If-None-Match `etag`: {etag, body} or null when unchanged (304). */
async function getChanged(url, etag) {
  const headers = { Accept: "application/json", ...(etag ? { "If-None-Match": etag } : {}) };
  const response = await request(url, { headers });
  if (response.status === 304) return null;
  return { etag: response.headers.get("ETag"), body: await response.json() };
}

export class SweepView {
  constructor(root) {
    this.root = root;
    this.el = {
      id: $("#sweep-id", root),
      status: $("[data-testid=sweep-status]", root),
      counts: $("#sweep-counts", root),
      sheet: $("#sweep-sheet", root),
      cancel: $("[data-testid=sweep-cancel]", root),
      progress: $("[data-testid=sweep-progress]", root),
      progressText: $("#sweep-progress-text", root),
      grid: $("[data-testid=sweep-grid]", root),
    };
    this.images = new ImageCache(); // with an API key: each picture fetched once, as a blob: URL
    this.el.cancel.addEventListener("click", () => this.cancel());
    this.el.sheet.addEventListener("click", (event) => this.openSheet(event));
    this.token = null;
  }

  /** Show sweep `id`; `known` is the sweep as just submitted, shown while it loads. */
  open(id, known) {
    this.close();
    const token = (this.token = Symbol(id)); // answers for a sweep no longer shown are dropped
    Object.assign(this, { id, sweep: null, etag: null, transient: null, refused: null });
    this.details = new Map(); // job id -> {etag, job}: GET /jobs/{id}, for the snapshots
    this.cells = new Map(); // job id -> the cell's elements
    this.layout = null; // the axes the table was built for
    this.el.id.textContent = id;
    this.el.grid.replaceChildren();
    if (known) this.apply(known);
    this.render();
    this.poll(token);
  }

  close() {
    this.token = null;
    clearTimeout(this.timer);
  }

  async poll(token) {
    clearTimeout(this.timer);
    try {
      const changed = await getChanged(sweepUrl(this.id), this.etag);
      if (this.token !== token) return;
      if (changed) {
        this.etag = changed.etag;
        this.apply(changed.body);
      }
      this.transient = null;
      await this.refreshJobs(token);
      if (this.token !== token) return;
    } catch (error) {
      if (this.token !== token) return;
      this.transient = asProblem(error);
      if (this.transient.status === 404) {
        this.render();
        return; // no such sweep (or it was deleted): nothing to wait for
      }
    }
    this.render();
    if (!this.sweep || !sweepFinal(this.sweep)) this.timer = setTimeout(() => this.poll(token), POLL_MS);
  }

  apply(sweep) {
    this.sweep = sweep;
  }

  /** GET /jobs/{id} of the cells whose pictures a sweep view without `snapshot_url` lacks: the
   *  running ones (their latest snapshot) and the ones that ended without a result (their last). */
  async refreshJobs(token) {
    const wanted = this.sweep.jobs.filter((cell) => {
      if ("snapshot_url" in cell) return false; // the sweep's view has it
      const known = this.details.get(cell.id)?.job;
      if (cell.status === "running") return true;
      if (cell.status === "queued" || cell.status === "succeeded") return false;
      return !known || !isFinal(known);
    });
    await Promise.all(
      wanted.map(async (cell) => {
        const url = `/jobs/${encodeURIComponent(cell.id)}`;
        try {
          const changed = await getChanged(url, this.details.get(cell.id)?.etag);
          if (changed && this.token === token) this.details.set(cell.id, { etag: changed.etag, job: changed.body });
        } catch {
          // a cell's picture can wait for the next round; the sweep's own answer reports problems
        }
      }),
    );
  }

  async cancel() {
    this.el.cancel.disabled = true;
    this.refused = null;
    const token = this.token;
    try {
      const answer = await cancelSweep(this.id);
      if (this.token === token && Array.isArray(answer?.jobs)) this.apply(answer);
    } catch (error) {
      this.refused = asProblem(error); // e.g. 409: it finished meanwhile; shown until the next click
    }
    if (this.token !== token) return;
    this.render();
    this.poll(token); // at once: the cells change now
  }

  /** With an API key a plain link cannot fetch the sheet: fetch it with the key and save it. */
  async openSheet(event) {
    if (!apiKey()) return; // the link works as it is
    event.preventDefault();
    try {
      const response = await request(this.sweep.sheet_url, { headers: { Accept: "image/jpeg" } });
      const url = URL.createObjectURL(await response.blob());
      const save = h("a", { href: url, download: `sweep-${this.id}.jpg` });
      save.click();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      this.refused = asProblem(error);
      this.render();
    }
  }

  render() {
    const { el, sweep } = this;
    const error = this.refused || this.transient;
    if (error) showError(error);
    else clearError();
    show(el.sheet, Boolean(sweep));
    if (!sweep) {
      el.status.textContent = "";
      el.counts.textContent = "";
      el.cancel.disabled = true;
      return;
    }
    el.status.textContent = sweep.status;
    el.status.className = `status status-${sweep.status === "finished" ? "succeeded" : sweep.status}`;
    const counts = Object.entries(sweep.counts || {}).filter(([, n]) => n > 0);
    counts.sort(([a], [b]) => ORDER.indexOf(a) - ORDER.indexOf(b));
    el.counts.textContent = counts.map(([status, n]) => `${n} ${status}`).join(" · ");
    el.cancel.disabled = ["finished", "canceled"].includes(sweep.status);
    el.sheet.href = sweep.sheet_url;
    el.sheet.target = "_blank";
    el.sheet.rel = "noopener";
    const total = sweep.jobs.length;
    const ended = sweep.jobs.filter((job) => isFinal(job)).length;
    el.progress.max = Math.max(total, 1);
    el.progress.value = ended;
    el.progressText.textContent = `${ended}/${total} jobs ended`;
    this.renderGrid(sweep);
    this.images.keepOnly([...this.cells.values()].map((cell) => cell.url));
    document.title = `${sweep.status} · sweep ${sweep.id.slice(0, 8)} · neural style`;
  }

  /** The table for the sweep's axes, built once; its cells are then updated in place. */
  renderGrid(sweep) {
    const axes = sweep.axes || [];
    const layout = keyOf(axes);
    if (layout !== this.layout) this.build(axes);
    const inOrder = [...this.cells.values()]; // row by row, as the server lists the cells
    sweep.jobs.forEach((job, i) => {
      const cell = this.cells.get(keyOf(axes.map((a) => job.values?.[a.name]))) ?? inOrder[i];
      if (cell) this.update(cell, job);
    });
  }

  build(axes) {
    this.layout = keyOf(axes);
    this.cells = new Map();
    const [rowAxis, ...colAxes] = axes;
    const rows = rowAxis ? rowAxis.values : [undefined];
    const cols = combinations(colAxes);
    const colLabel = (values) => values.map((v, i) => axisLabel(colAxes[i], v)).join(", ");
    const corner = [rowAxis?.name, colAxes.map((a) => a.name).join(", ")].filter(Boolean);
    const head = h(
      "tr",
      {},
      h("td", { class: "corner muted" }, corner.map((n) => n.replaceAll("_", " ")).join(" \\ ")),
      cols.map((values) => h("th", { scope: "col" }, colAxes.length ? colLabel(values) : "")),
    );
    const body = rows.map((rowValue) => {
      const cells = cols.map((colValues) => {
        const values = rowAxis ? [rowValue, ...colValues] : colValues;
        const cell = this.makeCell(axes, values);
        this.cells.set(keyOf(values), cell);
        return h("td", {}, cell.element);
      });
      const label = rowAxis ? axisLabel(rowAxis, rowValue) : "";
      return h("tr", {}, h("th", { scope: "row" }, label), cells);
    });
    const caption = h("caption", { class: "muted" }, `${this.sweep.jobs.length} jobs; each links to its own page`);
    this.el.grid.replaceChildren(caption, h("thead", {}, head), h("tbody", {}, body));
  }

  makeCell(axes, values) {
    const label = axes.map((a, i) => axisLabel(a, values[i])).join(", ");
    const picture = h("div", { class: "placeholder", "aria-hidden": "true" }, "no image yet");
    const img = h("img", { alt: "", hidden: true });
    const status = h("span", { class: "status" });
    const element = h(
      "a",
      { class: "sweep-cell", dataset: { testid: "sweep-cell" }, title: label },
      picture,
      img,
      status,
      h("span", { class: "cell-label" }, label),
    );
    return { element, picture, img, status, label, url: null };
  }

  update(cell, job) {
    // The sweep's view has the latest snapshot and the progress; an older one, GET /jobs/{id}.
    const detail = this.details.get(job.id)?.job;
    const snapshot = job.snapshot_url ?? detail?.snapshots?.at(-1)?.url ?? null;
    const progress = job.progress ?? detail?.progress;
    const succeeded = job.status === "succeeded" && job.result_url;
    const url = succeeded ? job.result_url : snapshot;
    const { element, img, picture, status } = cell;
    if (job.status === "gone") element.removeAttribute("href"); // deleted or expired: no page to open
    else element.href = `#/jobs/${encodeURIComponent(job.id)}`;
    element.dataset.status = job.status;
    element.dataset.job = job.id;
    element.dataset.image = succeeded ? "result" : snapshot ? "snapshot" : "none";
    const percent = job.status === "running" && progress ? ` ${Math.floor(progress.fraction * 100)}%` : "";
    status.textContent = job.status + percent;
    status.className = `status status-${job.status}`;
    if (url !== cell.url) {
      cell.url = url;
      if (url) this.images.show(img, url);
      else img.removeAttribute("src");
    }
    const what = succeeded ? "result" : snapshot ? "latest snapshot" : "";
    img.alt = what && `${what}: ${cell.label}`;
    show(img, Boolean(url));
    show(picture, !url);
  }
}
