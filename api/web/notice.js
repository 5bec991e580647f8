// The one error box of the page (data-testid="error"): the overall `detail` of a problem, moved
// into whichever view is showing so it sits next to what the user is looking at.

import { h } from "./dom.js";

const box = document.querySelector("[data-testid=error]");
let shown = null; // what the box holds, so re-rendering the same problem does not re-announce it

/** Put the box into `slot` (an element of the view being shown) and empty it. */
export function placeError(slot) {
  slot.append(box);
  clearError();
}

/** Show a problem: its title and detail, and a link to the page that explains its type. */
export function showError(problem) {
  const key = JSON.stringify([problem.title, problem.detail, problem.type]);
  if (key === shown) return;
  shown = key;
  const parts = [h("strong", {}, `${problem.title || "Error"}. `), problem.detail || ""];
  if (typeof problem.type === "string" && problem.type.startsWith("/problems/")) {
    parts.push(" ", h("a", { href: problem.type, target: "_blank", rel: "noopener" }, "What does this mean?"));
  }
  box.replaceChildren(...parts);
  box.hidden = false;
}

export function clearError() {
  shown = null;
  box.replaceChildren();
  box.hidden = true;
}
