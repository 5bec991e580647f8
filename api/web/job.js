// The job page (#/jobs/{id}): status, progress and ETA, the latest snapshot, the loss chart, a
// cancel button and, once succeeded, the result; once ended, a timelapse of its snapshots. Opened
// directly, reloaded or shared, it loads the job and its whole loss history, then follows it live
// (live.js).

import { getJob, getLosses, cancelJob, isFinal, asProblem, timelapseUrl } from "./api.js";
import { LossChart } from "./chart.js";
import { h, $, show, duration, when, valueText } from "./dom.js";
import { LossHistory } from "./history.js";
import { JobImage } from "./images.js";
import { watch } from "./live.js";
import { showError, clearError } from "./notice.js";

const RANK = { queued: 0, running: 1, succeeded: 2, failed: 2, canceled: 2 };
const QUEUED_REFRESH_MS = 3000; // no event says the queue moved: ask now and then while queued
const RETRY_MS = 2000; // a first read that failed (the service restarting, say) is tried again

/** Whether `a` is an older state than `b` (answers and events can cross on the wire). */
function older(a, b) {
  if (RANK[a.status] !== RANK[b.status]) return RANK[a.status] < RANK[b.status];
  if (a.progress.iteration !== b.progress.iteration) return a.progress.iteration < b.progress.iteration;
  return a.snapshots.length < b.snapshots.length;
}

function weightsText(weights) {
  if (!weights) return "";
  if (weights === "random") {
    return (
      "VGG-19 weights: random. These are untrained test weights: the images show that the pipeline " +
      "runs, not a real style transfer."
    );
  }
  if (weights === "imagenet") return "VGG-19 weights: ImageNet.";
  return `VGG-19 weights: ${weights}.`;
}

export class JobView {
  constructor(root) {
    this.root = root;
    this.el = {
      id: $("#job-id", root),
      status: $("[data-testid=status]", root),
      cancelNote: $("#job-cancel-note", root),
      queue: $("#job-queue", root),
      cancel: $("[data-testid=cancel]", root),
      progress: $("[data-testid=progress]", root),
      progressText: $("#job-progress-text", root),
      eta: $("#job-eta", root),
      snapshotFigure: $("#snapshot-figure", root),
      snapshot: $("[data-testid=snapshot]", root),
      snapshotCaption: $("#snapshot-figure figcaption", root),
      waiting: $("#job-waiting", root),
      resultFigure: $("#result-figure", root),
      result: $("[data-testid=result]", root),
      download: $("#job-download", root),
      sweep: $("#job-sweep", root),
      timelapse: $("#timelapse", root),
      timelapseImg: $("[data-testid=timelapse-image]", root),
      timelapseLink: $("#timelapse-link", root),
      timelapseError: $("#timelapse-error", root),
      weights: $("#job-weights", root),
      times: $("#job-times", root),
      params: $("#job-params", root),
    };
    this.chart = new LossChart($("#loss-chart", root));
    this.snapshotImage = new JobImage(this.el.snapshot);
    this.resultImage = new JobImage(this.el.result, (src) => {
      this.el.download.href = src; // with an API key a blob: URL, which a plain link can download
    });
    this.timelapseImage = new JobImage(this.el.timelapseImg, (src) => {
      this.el.timelapseLink.href = src;
    });
    // Made from every snapshot on request: only loaded when someone opens it.
    this.el.timelapse.addEventListener("toggle", () => this.renderTimelapse());
    this.el.timelapseImg.addEventListener("error", () => {
      if (this.el.timelapseImg.getAttribute("src")) show(this.el.timelapseError, true);
    });
    this.el.timelapseImg.addEventListener("load", () => show(this.el.timelapseError, false));
    this.el.cancel.addEventListener("click", () => this.cancel());
    this.id = null;
  }

  /** Show job `id`; `known` is the job as just submitted, shown while the rest loads. */
  async open(id, known) {
    this.close();
    const token = (this.token = Symbol(id)); // answers for a job no longer shown are dropped
    Object.assign(this, { id, job: null, transient: null, refused: null, rate: null, attempt: null });
    this.history = new LossHistory();
    this.el.id.textContent = id;
    this.snapshotImage.clear();
    this.resultImage.clear();
    this.timelapseImage.clear();
    this.el.timelapse.open = false;
    this.el.timelapseLink.removeAttribute("href");
    show(this.el.timelapseError, false);
    this.chart.update([], 1);
    if (known) this.applyJob(known);
    else this.render();
    let job;
    while (!job) {
      try {
        job = await getJob(id);
      } catch (error) {
        if (this.token !== token) return;
        const problem = asProblem(error);
        this.problem(problem);
        if (problem.status === 404) return; // no such job (or it expired): nothing to wait for
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
        if (this.token !== token) return;
      }
    }
    if (this.token !== token) return;
    if (this.transient) this.problem(null);
    this.applyJob(job);
    this.loadLosses();
    if (isFinal(this.job)) return; // nothing more will happen: no stream to open
    this.stopWatching = watch(id, {
      job: (data) => this.applyJob(data),
      status: (data) => this.applyStatus(data),
      progress: (data) => this.applyProgress(data),
      snapshot: (data) => this.applySnapshot(data),
      end: (data) => {
        this.applyJob(data);
        this.loadLosses(); // the history's last points, whatever the stream carried
      },
      problem: (problem) => this.problem(problem),
      ok: () => this.transient && this.problem(null), // it works again: drop the last request's error
      polling: () => this.loadLosses(), // polling sees one loss per answer: fill the gaps
    });
    this.queueTimer = setInterval(() => this.refreshQueued(token), QUEUED_REFRESH_MS);
  }

  close() {
    this.token = null;
    this.stopWatching?.();
    this.stopWatching = null;
    clearInterval(this.queueTimer);
  }

  async loadLosses() {
    const token = this.token;
    try {
      const columns = await getLosses(this.id);
      if (this.token !== token) return;
      this.history.addColumns(columns);
      this.drawChart();
    } catch (error) {
      if (this.token === token) this.problem(asProblem(error));
    }
  }

  async refreshQueued(token) {
    if (this.job?.status !== "queued") return;
    try {
      const job = await getJob(this.id);
      if (this.token === token) this.applyJob(job);
    } catch {
      // the stream or the poller reports problems; this is only for the queue position
    }
  }

  async cancel() {
    this.el.cancel.disabled = true;
    this.refused = null;
    try {
      this.applyJob(await cancelJob(this.id));
    } catch (error) {
      // e.g. 409: it finished meanwhile; the stream brings the end. Kept until the next click,
      // unlike a failed read, which the next working request clears.
      this.refused = asProblem(error);
    }
    this.render();
  }

  problem(problem) {
    this.transient = problem;
    this.render();
  }

  applyJob(job) {
    if (this.job && older(job, this.job)) return;
    this.job = structuredClone(job);
    if (job.losses && job.progress.iteration > 0) this.history.add(job.progress.iteration, job.losses);
    this.render();
  }

  applyStatus(data) {
    const job = this.job;
    if (!job || isFinal(job)) return;
    if (data.status !== job.status) job.queue_position = null; // a new status: the old position is stale
    job.status = data.status;
    job.cancel_requested = Boolean(data.cancel_requested);
    if (data.attempt) this.attempt = data.attempt;
    this.render();
  }

  applyProgress(data) {
    this.history.add(data.iteration, data.losses);
    const job = this.job;
    if (job && !isFinal(job) && data.iteration >= job.progress.iteration) {
      job.status = "running"; // progress only comes from a running job
      job.queue_position = null;
      job.progress = { iteration: data.iteration, total: data.total, fraction: data.fraction, scale: data.scale };
      job.checkpointing = data.checkpointing ?? job.checkpointing;
      job.losses = data.losses;
      job.eta_seconds = data.eta_seconds;
      this.rate = data.iterations_per_second;
    }
    this.render();
  }

  applySnapshot(data) {
    const job = this.job;
    if (!job || job.snapshots.some((s) => s.iteration === data.iteration)) return;
    job.snapshots.push({ iteration: data.iteration, url: data.url });
    job.snapshots.sort((a, b) => a.iteration - b.iteration);
    this.render();
  }

  drawChart() {
    this.chart.update(this.history.points, this.job?.progress.total || 1);
  }

  render() {
    const { el, job } = this;
    const error = job?.error || this.refused || this.transient;
    if (error) showError(error);
    else clearError();
    if (!job) {
      el.status.textContent = "";
      el.cancel.disabled = true;
      const hidden = ["cancelNote", "queue", "snapshotFigure", "resultFigure", "waiting", "sweep", "timelapse"];
      for (const name of hidden) {
        show(el[name], false);
      }
      return;
    }
    const running = job.status === "running";
    el.status.textContent = job.status;
    el.status.className = `status status-${job.status}`;
    show(el.cancelNote, job.cancel_requested);
    const position = job.status === "queued" && job.queue_position;
    const place = position === 1 ? "next in the queue" : `position ${position} in the queue`;
    el.queue.textContent = position ? place : "";
    if (job.status === "queued" && this.attempt > 1) el.queue.textContent += ` (attempt ${this.attempt})`;
    show(el.queue, el.queue.textContent !== "");
    el.cancel.disabled = isFinal(job);

    const { iteration, total } = job.progress;
    el.progress.max = total;
    el.progress.value = iteration;
    el.progressText.textContent = `${iteration}/${total}` + stageText(job);
    const eta = running && job.eta_seconds !== null ? `about ${duration(job.eta_seconds)} left` : "";
    const rate = running && this.rate ? ` · ${this.rate.toFixed(1)} it/s` : "";
    el.eta.textContent = eta + rate;

    this.renderImages(job);
    // A cell of a sweep links back to the sweep's grid.
    show(el.sweep, Boolean(job.sweep));
    if (job.sweep) el.sweep.href = `#/sweeps/${encodeURIComponent(job.sweep)}`;
    el.weights.textContent = weightsText(job.weights);
    show(el.weights, Boolean(job.weights));
    const times = { created: job.created_at, started: job.started_at, finished: job.finished_at };
    el.times.replaceChildren(
      ...Object.entries(times)
        .filter(([, value]) => value)
        .flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, h("time", { datetime: value }, when(value)))]),
    );
    el.params.replaceChildren(
      ...Object.entries(job.params).flatMap(([name, value]) => [h("dt", {}, name), h("dd", {}, valueText(value))]),
    );
    const percent = running ? ` ${Math.floor(job.progress.fraction * 100)}%` : "";
    document.title = `${job.status}${percent} · job ${job.id.slice(0, 8)} · neural style`;
    this.drawChart();
  }

  renderImages(job) {
    const { el } = this;
    const latest = job.snapshots.at(-1);
    if (latest) this.snapshotImage.show(latest.url);
    el.snapshotCaption.textContent = latest ? `snapshot at iteration ${latest.iteration}` : "";
    const succeeded = job.status === "succeeded" && job.result_url;
    show(el.snapshotFigure, Boolean(latest) && !succeeded);
    show(el.resultFigure, Boolean(succeeded));
    show(el.waiting, !latest && !isFinal(job));
    if (succeeded) {
      this.resultImage.show(job.result_url);
      el.download.setAttribute("download", `${job.id}.png`);
    }
    this.renderTimelapse();
  }

  /** The timelapse is offered once the job has ended with snapshots, and fetched once opened. */
  renderTimelapse() {
    const { el, job } = this;
    const offered = Boolean(job && isFinal(job) && job.snapshots.length > 0);
    show(el.timelapse, offered);
    if (!offered || !el.timelapse.open) return;
    this.timelapseImage.show(timelapseUrl(job.id));
    el.timelapseLink.setAttribute("download", `${job.id}-timelapse.webp`);
  }
}

// Coarse-to-fine: which stage runs at what size; and whether activations are recomputed to fit.
function stageText(job) {
  const scale = job.progress.scale;
  const stage = scale && scale.count > 1 ? ` · stage ${scale.index}/${scale.count} at ${scale.width}x${scale.height}` : "";
  return stage + (job.checkpointing ? " · checkpointing" : "");
}
