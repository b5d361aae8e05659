// Small helpers the three tabs share: elements, messages to the user.

export const $ = (id) => document.getElementById(id);

const countdowns = new WeakMap();

/** Show `error` (an ApiError, an Error, or text) in the alert element `target`; with a
 * Retry-After wait, count it down. `null` hides the element. */
export function showError(target, error) {
  clearInterval(countdowns.get(target));
  if (error === null || error === undefined) {
    target.hidden = true;
    target.textContent = "";
    return;
  }
  const message = typeof error === "string" ? error : error.message || String(error);
  const code = error?.code ? ` [${error.code}]` : "";
  target.hidden = false;
  target.textContent = `${message}${code}`;
  let wait = error?.retryAfter;
  if (wait) {
    const line = document.createElement("span");
    line.className = "countdown";
    const tick = () => {
      line.textContent = wait > 0 ? ` Retry possible in ${wait} s.` : " You can retry now.";
      if (wait <= 0) clearInterval(countdowns.get(target));
      wait -= 1;
    };
    tick();
    target.append(line);
    countdowns.set(target, setInterval(tick, 1000));
  }
}

/** Show a neutral status line (a role="status" element). */
export function showStatus(target, text) {
  target.textContent = text;
}

/** A short-lived object URL set on an <img> or <video>, revoking the previous one. */
export function setObjectURL(element, url) {
  const previous = element.dataset.objectUrl;
  if (previous) URL.revokeObjectURL(previous);
  element.dataset.objectUrl = url;
  element.src = url;
}
