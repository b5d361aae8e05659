// The API as the page uses it: the key kept in the browser, requests, error answers, job events.

const KEY_STORAGE = "liveportrait.apiKey";
export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

/** An error answer of the API, read for people: `message`, and `code`, `status`, `retryAfter` (s). */
export class ApiError extends Error {
  constructor(status, message, { code = null, retryAfter = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function fieldErrors(errors) {
  return errors
    .map((e) => {
      const where = (e.loc || []).filter((part) => part !== "body").join(".");
      return where ? `${where}: ${e.msg}` : e.msg;
    })
    .join("; ");
}

/** The ApiError of an error answer: RFC 9457 problem details ({code, title, detail, errors}) or
 * FastAPI's {detail: text | [{loc, msg, type}]}. */
export async function readError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  const wait = Number.isFinite(retryAfter) ? retryAfter : null;
  let detail = body?.detail ?? body?.message ?? body?.title ?? response.statusText;
  const fields = body?.errors ?? (Array.isArray(detail) ? detail : null);
  if (Array.isArray(detail)) detail = null;
  let message = [detail, fields?.length ? fieldErrors(fields) : null].filter(Boolean).join(": ");
  if (response.status === 429) {
    message = `Too many requests${wait !== null ? `: wait ${wait} s and try again` : ""} (${message})`;
  } else if (response.status === 413) {
    message = `Too large: ${message}`;
  } else if (response.status === 401) {
    message = `${message}: enter a valid API key above`;
  }
  return new ApiError(response.status, `${message || `HTTP ${response.status}`}`, {
    code: body?.code ?? null,
    retryAfter: wait,
  });
}

/** fetch() with the API key; error answers raise ApiError. */
export async function request(path, { method = "GET", body = undefined, signal = undefined, extra = {} } = {}) {
  const response = await fetch(path, { method, body, signal, headers: headers(extra) });
  if (!response.ok) throw await readError(response);
  return response;
}

export async function json(path, options) {
  return (await request(path, options)).json();
}

/** Submit a job from a multipart form: `fields` maps names to File objects or JSON-able values. */
export async function submitJob(fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined || value === null) continue;
    form.append(name, value instanceof Blob ? value : typeof value === "string" ? value : JSON.stringify(value));
  }
  return json("v1/jobs", { method: "POST", body: form });
}

export async function cancelJob(id) {
  return json(`v1/jobs/${id}/cancel`, { method: "POST" });
}

export async function listJobs(cursor) {
  const query = new URLSearchParams({ limit: "10" });
  if (cursor) query.set("cursor", cursor);
  return json(`v1/jobs?${query}`);
}

/** The result of a succeeded job as an object URL (the caller revokes it). */
export async function resultURL(id) {
  const blob = await (await request(`v1/jobs/${id}/result`)).blob();
  return URL.createObjectURL(blob);
}

async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, data: [] };
      for (const line of block.split("\n")) {
        if (line.startsWith("id:")) event.id = line.slice(3).trim();
        else if (line.startsWith("data:")) event.data.push(line.slice(5).trimStart());
      }
      if (event.data.length) yield event;
    }
  }
}

/** Follow a job until it ends, calling `onJob(job)` for each event; returns the final job.
 *
 * The event stream is read with fetch (EventSource cannot send the API key), resumed with
 * Last-Event-ID when it breaks; after three breaks in a row the job is polled instead. */
export async function followJob(id, onJob, signal) {
  let lastEventId = null;
  let job = null;
  for (let breaks = 0; breaks < 3; ) {
    try {
      const extra = lastEventId ? { "Last-Event-ID": lastEventId } : {};
      const response = await request(`v1/jobs/${id}/events`, { signal, extra });
      for await (const event of serverSentEvents(response)) {
        lastEventId = event.id;
        job = JSON.parse(event.data.join("\n"));
        breaks = 0;
        onJob(job);
        if (TERMINAL.has(job.status)) return job;
      }
      breaks += 1;
    } catch (error) {
      if (error instanceof ApiError || signal?.aborted) throw error;
      breaks += 1;
    }
  }
  while (!job || !TERMINAL.has(job.status)) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    job = await json(`v1/jobs/${id}`, { signal });
    onJob(job);
  }
  return job;
}

/** The failure of a job for people: "code: message". */
export function jobFailure(job) {
  if (job.status === "canceled") return "The job was canceled.";
  const error = job.error || {};
  return `The job failed [${error.code || "unknown"}]: ${error.message || "no message"}`;
}

/** The job's progress for people: phase, share done, frames, ETA. */
export function describeProgress(job) {
  const progress = job.progress || {};
  if (job.status === "queued") return "Queued";
  if (TERMINAL.has(job.status)) return job.status[0].toUpperCase() + job.status.slice(1);
  const parts = [(progress.phase || "running").replaceAll("_", " ")];
  parts.push(`${Math.round((progress.fraction || 0) * 100)} %`);
  if (progress.frames_total) parts.push(`${progress.frames_done} of ${progress.frames_total} frames`);
  if (progress.eta_s !== null && progress.eta_s !== undefined) parts.push(`about ${Math.ceil(progress.eta_s)} s left`);
  if (job.stalled) parts.push("the worker is silent");
  if (job.cancel_requested) parts.push("canceling");
  return parts.join(" · ");
}
