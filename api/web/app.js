// The page's entry point: hash routing between the form (#/ or no hash) and a job's page
// (#/jobs/{id}). Hash routes need nothing from the server, so a job's URL can be opened
// directly, shared and reloaded.

import { JobForm } from "./form.js";
import { JobView } from "./job.js";
import { placeError } from "./notice.js";
import { RecentJobs } from "./recent.js";

const formView = document.getElementById("form-view");
const jobView = document.getElementById("job-view");
const recent = new RecentJobs(document.getElementById("recent-jobs"));
const job = new JobView(jobView);
let submitted = null; // the job just accepted, shown at once instead of waiting for GET /jobs/{id}

new JobForm(document.getElementById("job-form"), (accepted) => {
  submitted = accepted;
  location.hash = `#/jobs/${accepted.id}`;
});

function route() {
  const match = /^#\/jobs\/([^/?#]+)$/.exec(location.hash);
  const id = match ? decodeURIComponent(match[1]) : null;
  formView.hidden = Boolean(id);
  jobView.hidden = !id;
  if (id) {
    recent.stop();
    placeError(document.getElementById("job-error-slot"));
    job.open(id, submitted?.id === id ? submitted : undefined);
    submitted = null;
    window.scrollTo(0, 0);
  } else {
    job.close();
    placeError(document.getElementById("form-error-slot"));
    document.title = "neural style transfer";
    recent.start();
  }
}

// A file dropped outside the drop zones would make the browser leave the page to open it.
for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
window.addEventListener("hashchange", route);
route();
