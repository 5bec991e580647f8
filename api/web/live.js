// Live updates of one job: Server-Sent Events (GET /jobs/{id}/events), or polling GET /jobs/{id}
// once a second where EventSource is missing or keeps failing, or where the page has an API key.
// EventSource resumes by itself after a dropped connection (it sends Last-Event-ID), so a few
// errors are normal.

import { isFinal, request, asProblem } from "./api.js";
import { apiKey } from "./key.js";

const EVENTS = ["job", "status", "progress", "snapshot", "end"];
const POLL_MS = 1000;
const MAX_ERRORS = 3; // consecutive EventSource errors before polling instead

/**
 * Watch job `id`. handlers: job(job), status(data), progress(data), snapshot(data), end(job),
 * problem(problem) for a failed request, ok() once requests work again, polling() when it
 * switches to polling. Returns a function that stops watching.
 */
export function watch(id, handlers) {
  const base = `/jobs/${encodeURIComponent(id)}`;
  let stopped = false;
  let source = null;
  let timer = null;

  const stop = () => {
    stopped = true;
    source?.close();
    clearTimeout(timer);
  };

  function startPolling() {
    source?.close();
    source = null;
    handlers.polling?.();
    let etag = null;
    const pollOnce = async () => {
      if (stopped) return;
      try {
        // If-None-Match: the server answers 304 while nothing changed (the browser passes it through).
        const headers = { Accept: "application/json", ...(etag ? { "If-None-Match": etag } : {}) };
        const response = await request(base, { headers });
        handlers.ok?.();
        if (response.status !== 304) {
          etag = response.headers.get("ETag");
          const job = await response.json();
          if (stopped) return;
          if (isFinal(job)) {
            handlers.end(job);
            stop();
            return;
          }
          handlers.job(job);
        }
      } catch (error) {
        const problem = asProblem(error);
        handlers.problem?.(problem);
        if (problem.status === 404) return stop(); // gone (expired): nothing more to poll
      }
      if (!stopped) timer = setTimeout(pollOnce, POLL_MS);
    };
    pollOnce();
  }

  // EventSource cannot send an Authorization header: with an API key, poll (with If-None-Match).
  if (typeof window.EventSource !== "function" || apiKey()) {
    startPolling();
    return stop;
  }

  let received = false;
  let errors = 0;
  source = new EventSource(`${base}/events`);
  for (const name of EVENTS) {
    source.addEventListener(name, (event) => {
      if (stopped) return;
      received = true;
      errors = 0;
      handlers.ok?.();
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return; // not ours to show: the next event or the end brings the state
      }
      if (name === "end") {
        stop(); // the server closes the stream now; without close() EventSource would reconnect
        handlers.end(data);
      } else {
        handlers[name](data);
      }
    });
  }
  source.addEventListener("error", () => {
    if (stopped) return;
    errors += 1;
    // CLOSED: it will not reconnect (e.g. an error status); no event yet: the stream does not work here.
    if (source.readyState === EventSource.CLOSED || !received || errors >= MAX_ERRORS) startPolling();
  });
  return stop;
}
