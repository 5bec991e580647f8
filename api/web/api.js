// Talking to the API: every failure becomes an RFC 9457 problem object, so the views have one
// shape to show, whether the server said no or the network did.

import { apiKey, askForKey } from "./key.js";

export const FINAL = ["succeeded", "failed", "canceled"];
export const isFinal = (job) => FINAL.includes(job.status);

/** Thrown for any failed request; `problem` is {type, title, status, detail, errors?}. */
export class ProblemError extends Error {
  constructor(problem) {
    super(problem.detail || problem.title);
    this.problem = problem;
  }
}

function networkProblem(error) {
  return {
    type: "about:blank",
    title: "Network error",
    status: 0,
    detail: `The service did not answer (${error.message}). Check the connection and try again.`,
  };
}

/** The problem in an error answer; a body that is not problem+json still gives a readable one. */
async function problemOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (e.g. a proxy's HTML page): fall through to the status line
  }
  if (body && typeof body === "object" && (body.detail || body.title)) return body;
  const title = response.statusText || "error";
  const detail = `HTTP ${response.status} ${title}`;
  return { type: "about:blank", title, status: response.status, detail };
}

/**
 * fetch() that throws ProblemError for network errors and for answers >= 400. With an API key
 * kept in the browser it is sent as Bearer; a 401 asks for a key (key.js) and tries again with it.
 */
export async function request(url, options = {}) {
  for (;;) {
    const key = apiKey();
    const headers = { Accept: "application/json", ...options.headers };
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(url, { ...options, headers });
    } catch (error) {
      throw new ProblemError(networkProblem(error));
    }
    if (response.status === 401) {
      const problem = await problemOf(response);
      if (await askForKey(problem, key)) continue;
      throw new ProblemError(problem);
    }
    if (response.status >= 400) throw new ProblemError(await problemOf(response));
    return response;
  }
}

export async function getJSON(url, options) {
  return (await request(url, options)).json();
}

export const getParameters = () => getJSON("/parameters");
export const getJob = (id) => getJSON(`/jobs/${encodeURIComponent(id)}`);
export const getLosses = (id) => getJSON(`/jobs/${encodeURIComponent(id)}/losses`);
export const listJobs = (limit) => getJSON(`/jobs?limit=${limit}`);
export const cancelJob = (id) => getJSON(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });

/** POST /jobs with the multipart form; answers the job (202). */
export const submitJob = (form) => getJSON("/jobs", { method: "POST", body: form });

/** POST /sweeps with the multipart form (the job's fields, `grid`, `each_style`); answers the sweep (202). */
export const submitSweep = (form) => getJSON("/sweeps", { method: "POST", body: form });
export const sweepUrl = (id) => `/sweeps/${encodeURIComponent(id)}`;
export const cancelSweep = (id) => getJSON(`${sweepUrl(id)}/cancel`, { method: "POST" });
export const timelapseUrl = (id) => `/jobs/${encodeURIComponent(id)}/timelapse`;

/** A sweep's view is final once its status is and every cell's job is (a cancel takes a moment);
 *  a cell whose job was deleted or expired is "gone". */
export const sweepFinal = (sweep) =>
  ["finished", "canceled"].includes(sweep.status) && sweep.jobs.every((job) => isFinal(job) || job.status === "gone");

/** Turn anything thrown into a problem object for display. */
export function asProblem(error) {
  if (error instanceof ProblemError) return error.problem;
  return { type: "about:blank", title: "Error", status: 0, detail: String(error?.message || error) };
}
