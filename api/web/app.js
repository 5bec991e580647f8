// The page's entry point: hash routing between the form (#/ or no hash), a job's page
// (#/jobs/{id}) and a sweep's grid (#/sweeps/{id}). Hash routes need nothing from the server, so
// a job's or a sweep's URL can be opened directly, shared and reloaded.

import { JobForm } from "./form.js";
import { JobView } from "./job.js";
import { placeError } from "./notice.js";
import { RecentJobs } from "./recent.js";
import { SweepView } from "./sweep.js";

const formView = document.getElementById("form-view");
const jobView = document.getElementById("job-view");
const sweepView = document.getElementById("sweep-view");
const recent = new RecentJobs(document.getElementById("recent-jobs"));
const job = new JobView(jobView);
const sweep = new SweepView(sweepView);
let submitted = null; // the job or sweep just accepted, shown at once instead of waiting for its GET

new JobForm(
  document.getElementById("job-form"),
  (accepted) => {
    submitted = accepted;
    location.hash = `#/jobs/${accepted.id}`;
  },
  (accepted) => {
    submitted = accepted;
    location.hash = `#/sweeps/${accepted.id}`;
  },
);

function route() {
  const match = /^#\/(jobs|sweeps)\/([^/?#]+)$/.exec(location.hash);
  const kind = match ? match[1] : null;
  const id = match ? decodeURIComponent(match[2]) : null;
  formView.hidden = Boolean(kind);
  jobView.hidden = kind !== "jobs";
  sweepView.hidden = kind !== "sweeps";
  const known = submitted?.id === id ? submitted : undefined;
  submitted = null;
  if (kind !== "jobs") job.close();
  if (kind !== "sweeps") sweep.close();
  if (kind) {
    recent.stop();
    placeError(document.getElementById(kind === "jobs" ? "job-error-slot" : "sweep-error-slot"));
    if (kind === "jobs") job.open(id, known);
    else sweep.open(id, known);
    window.scrollTo(0, 0);
  } else {
    placeError(document.getElementById("form-error-slot"));
    document.title = "neural style transfer";
    recent.start();
  }
}

// A file dropped outside the drop zones would make the browser leave the page to open it.
for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
window.addEventListener("hashchange", route);
route();
