// The recent jobs under the form (GET /jobs?limit=12), newest first, each linking to its page;
// refreshed every few seconds while one of them is still queued or running.

import { listJobs, isFinal, asProblem } from "./api.js";
import { h, when } from "./dom.js";
import { ImageCache } from "./images.js";

const LIMIT = 12;
const REFRESH_MS = 4000;

function card(job, images) {
  // Only jobs with a snapshot get an <img>: /snapshots/latest is a 404 before the first one.
  // The latest snapshot's own URL is cached for good by the browser, unlike /latest.
  const latest = job.snapshots.at(-1);
  let picture;
  if (latest) {
    picture = h("img", { alt: "", loading: "lazy" });
    images.show(picture, latest.url);
  } else {
    picture = h("div", { class: "placeholder", "aria-hidden": "true" }, "no image yet");
  }
  const percent = job.status === "running" ? ` ${Math.floor(job.progress.fraction * 100)}%` : "";
  const { width, height, iterations } = job.params;
  return h(
    "li",
    {},
    h(
      "a",
      { href: `#/jobs/${job.id}`, class: "job-card", title: `job ${job.id}` },
      picture,
      h("span", { class: `status status-${job.status}` }, job.status + percent),
      h("time", { datetime: job.created_at }, when(job.created_at)),
      h("span", { class: "muted" }, `${width}×${height}, ${iterations} iterations`),
    ),
  );
}

export class RecentJobs {
  constructor(list) {
    this.list = list;
    this.timer = null;
    this.active = false;
    this.images = new ImageCache(); // with an API key: the thumbnails, fetched once each
  }

  start() {
    this.active = true;
    this.refresh();
  }

  stop() {
    this.active = false;
    clearTimeout(this.timer);
  }

  async refresh() {
    clearTimeout(this.timer);
    let page;
    try {
      page = await listJobs(LIMIT);
    } catch (error) {
      if (!this.active) return;
      const message = `Could not load the jobs: ${asProblem(error).detail}`;
      this.list.replaceChildren(h("li", { class: "muted" }, message));
      this.timer = setTimeout(() => this.refresh(), REFRESH_MS); // the service may be restarting
      return;
    }
    if (!this.active) return;
    const jobs = page.items;
    const cards = jobs.map((job) => card(job, this.images));
    const items = jobs.length ? cards : [h("li", { class: "muted" }, "No jobs yet.")];
    this.list.replaceChildren(...items);
    this.images.keepOnly(jobs.map((job) => job.snapshots.at(-1)?.url));
    if (jobs.some((job) => !isFinal(job))) this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
  }
}
