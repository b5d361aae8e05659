// A live session (POST /v1/live/sessions, then its WebSocket): JPEG driving frames in, animated
// JPEG frames out, JSON control messages both ways (docs/api.md, "Live sessions").

import { ApiError, json } from "./api.js";

export class LiveSession {
  /** Open a session for the portrait `source` (a File or Blob) with LiveOptions `options`; its
   * WebSocket connects, and `ready` resolves once the server prepared the source. Raises ApiError
   * (503 with its Retry-After when no live slot is free). */
  static async open(source, options = {}) {
    const form = new FormData();
    form.append("source", source);
    form.append("options", JSON.stringify(options));
    const answer = await json("v1/live/sessions", { method: "POST", body: form });
    const session = new LiveSession(answer);
    session.connect();
    return session;
  }

  constructor(answer) {
    this.id = answer.session_id;
    this.limits = answer.limits;
    this.url = new URL(answer.websocket_url, window.location.href);
    if (this.url.protocol === "http:") this.url.protocol = "ws:";
    if (this.url.protocol === "https:") this.url.protocol = "wss:";
    this.onFrame = () => {};
    this.onStats = () => {};
    this.onEvent = () => {};
    this.onClose = () => {};
    this.ready = null;
  }

  /** Connect the WebSocket; resolves on the server's `ready`, rejects if it closes first. */
  connect() {
    this.socket = new WebSocket(this.url);
    this.socket.binaryType = "blob";
    this.ready = new Promise((resolve, reject) => {
      this.socket.addEventListener("message", (message) => {
        if (message.data instanceof Blob) {
          this.onFrame(message.data);
          return;
        }
        const event = JSON.parse(message.data);
        if (event.type === "ready") resolve(event);
        else if (event.type === "stats") this.onStats(event);
        else this.onEvent(event);
      });
      this.socket.addEventListener("close", (close) => {
        reject(new ApiError(0, `the live session closed (${close.code}${close.reason ? `: ${close.reason}` : ""})`));
        this.onClose(close);
      });
    });
    return this.ready;
  }

  get open() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  sendFrame(jpeg) {
    if (this.open) this.socket.send(jpeg);
  }

  send(message) {
    if (this.open) this.socket.send(JSON.stringify(message));
  }

  reset() {
    this.send({ type: "reset" });
  }

  setExpression(expression) {
    this.send({ type: "expression", expression });
  }

  close() {
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
  }
}

/** An image (File, Blob, <video> or <img>) drawn as a JPEG of at most `maxPixels` pixels. */
export async function toJPEG(image, maxPixels, quality = 0.85) {
  const bitmap = image instanceof Blob ? await createImageBitmap(image) : image;
  const width = bitmap.videoWidth || bitmap.naturalWidth || bitmap.width;
  const height = bitmap.videoHeight || bitmap.naturalHeight || bitmap.height;
  const scale = Math.min(1, Math.sqrt(maxPixels / (width * height)));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
}

/** A live session's error or closing message for people. */
export function describeEvent(event) {
  if (event.type === "error") return `${event.message}${event.seq !== null && event.seq !== undefined ? ` (frame ${event.seq})` : ""}`;
  if (event.type === "closing") return `The session ended: ${event.message || event.reason}`;
  return JSON.stringify(event);
}
