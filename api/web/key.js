// The API key, for a service that has keys (NST_API_KEYS_FILE): asked for in the dialog of
// index.html when the API first answers 401, kept in this browser (localStorage) and sent as
// `Authorization: Bearer KEY` with every request. A service without keys never answers 401, so
// the page never asks and sends nothing.

const STORAGE_NAME = "nst-api-key";

const dialog = document.getElementById("key-dialog");
const input = dialog.querySelector("[data-testid=key-input]");
const reason = dialog.querySelector("#key-reason");
const forget = dialog.querySelector("[data-testid=key-forget]");
const button = document.getElementById("key-button"); // in the header, once keys are in play

let asking = null; // the one question on screen, shared by every request that met a 401
let declined = false; // closed without a key: later 401s fail quietly until the button is used

/** The key kept in this browser, or null. */
export function apiKey() {
  try {
    return localStorage.getItem(STORAGE_NAME);
  } catch {
    return null; // storage blocked (some private modes): no key
  }
}

function keep(key) {
  try {
    if (key) localStorage.setItem(STORAGE_NAME, key);
    else localStorage.removeItem(STORAGE_NAME);
  } catch {
    // storage blocked: the key lasts as long as the page would have asked again anyway
  }
  button.hidden = false;
}

/**
 * Ask for a key because the API answered `problem` (a 401) to a request sent with `refused` (the
 * key it had, or null). Resolves with the key to try again with, or null if the user closed the
 * dialog. Requests that meet a 401 while it is open wait for the same answer.
 */
export function askForKey(problem, refused) {
  button.hidden = false;
  const current = apiKey();
  if (current && current !== refused) return Promise.resolve(current); // another request got a key meanwhile
  if (declined) return Promise.resolve(null);
  if (!asking) {
    asking = open(problem).finally(() => {
      asking = null;
    });
  }
  return asking;
}

function open(problem) {
  const refused = Boolean(apiKey());
  reason.textContent = problem
    ? refused
      ? "The service did not accept the key kept in this browser. Enter another one."
      : "This service needs an API key. Ask its operator for one (they make it with `nst keys add NAME`)."
    : "The key sent with every request to this service.";
  input.value = "";
  forget.hidden = !apiKey();
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        input.value = ""; // not left in the DOM
        if (dialog.returnValue === "save" && key) {
          declined = false;
          keep(key);
          resolve(key);
        } else {
          if (dialog.returnValue === "forget") keep(null);
          declined = true;
          resolve(null);
        }
      },
      { once: true },
    );
  });
}

// The header's button: change or forget the key, then show the page again with it.
button.hidden = !apiKey();
button.addEventListener("click", async () => {
  declined = false;
  const before = apiKey();
  await open(null);
  if (apiKey() !== before) location.reload();
});
