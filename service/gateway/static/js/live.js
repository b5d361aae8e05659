// The live tab: the webcam drives the portrait through a live session; latency and fps shown.
//
// At most two camera frames are in flight: a new one goes when an earlier one came back animated,
// dropped or refused, or was sent IN_FLIGHT_MS ago (the server keeps only the latest waiting frame,
// and closes a session that sends none for a while). Latency is from
// sending a frame to receiving its animated frame, matched by `seq` (frames are numbered in the
// order sent, from 0).

import { ApiError } from "./api.js";
import { optionsForm } from "./schemaform.js";
import { describeEvent, LiveSession, toJPEG } from "./session.js";
import { $, setObjectURL, showError, showStatus } from "./ui.js";

const IN_FLIGHT = 2;
const IN_FLIGHT_MS = 3000;
const FORGET_AFTER_MS = 120_000;

function scalarProperties(schema) {
  const scalar = Object.entries(schema.properties).filter(([, p]) => !p.$ref && p.type !== "object" && !p.anyOf?.some((k) => k.$ref));
  return { ...schema, properties: Object.fromEntries(scalar) };
}

export function setupLive(schemas) {
  const camera = $("live-camera");
  const output = $("live-output");
  const status = $("live-status");
  const error = $("live-error");
  const start = $("live-start");
  const stop = $("live-stop");
  const reset = $("live-reset");
  const options = schemas.LiveOptions
    ? optionsForm($("live-options"), scalarProperties(schemas.LiveOptions), "live-option")
    : null;
  let session = null;
  let stream = null;
  let timer = null;
  let seq = 0;
  let sent = new Map();
  let arrived = [];
  let latencies = [];
  let lastFrameAt = 0;

  const showStats = () => {
    const now = performance.now();
    arrived = arrived.filter((t) => now - t < 1000);
    latencies = latencies.slice(-10);
    const latency = latencies.length ? Math.round(latencies.reduce((a, b) => a + b, 0) / latencies.length) : null;
    $("live-fps").textContent = String(arrived.length);
    $("live-latency").textContent = latency === null ? "–" : String(latency);
  };

  const pump = async () => {
    timer = null;
    if (!session) return;
    try {
      const now = performance.now();
      for (const [n, at] of sent) if (now - at > FORGET_AFTER_MS) sent.delete(n);
      const inFlight = [...sent.values()].filter((at) => now - at < IN_FLIGHT_MS).length;
      if (session.open && inFlight < IN_FLIGHT && camera.readyState >= 2) {
        const jpeg = await toJPEG(camera, session.limits.max_frame_pixels, 0.8);
        sent.set(seq, performance.now());
        seq += 1;
        session.sendFrame(jpeg);
      }
      showStats();
    } catch (failure) {
      showError(error, failure);
    }
    if (session) timer = setTimeout(pump, 30);
  };

  const end = (message) => {
    clearTimeout(timer);
    timer = null;
    session?.close();
    session = null;
    for (const track of stream?.getTracks() ?? []) track.stop();
    stream = null;
    camera.srcObject = null;
    start.disabled = false;
    stop.disabled = true;
    reset.disabled = true;
    showStatus(status, message);
  };

  start.addEventListener("click", async () => {
    showError(error, null);
    const source = $("live-source").files[0];
    if (!source) {
      showError(error, "Choose a portrait first.");
      return;
    }
    start.disabled = true;
    try {
      showStatus(status, "Starting the camera…");
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      camera.srcObject = stream;
      await camera.play();
      showStatus(status, "Opening a live session…");
      session = await LiveSession.open(source, options ? options.values() : {});
      seq = 0;
      sent = new Map();
      session.onFrame = (jpeg) => {
        lastFrameAt = performance.now();
        arrived.push(lastFrameAt);
        setObjectURL(output, URL.createObjectURL(jpeg));
        output.hidden = false;
      };
      session.onStats = (stats) => {
        const at = sent.get(stats.seq);
        if (at !== undefined) latencies.push(lastFrameAt - at);
        sent.delete(stats.seq);
      };
      session.onEvent = (event) => {
        if (event.seq !== undefined && event.seq !== null) sent.delete(event.seq);
        if (event.type === "error" || event.type === "closing") showError(error, new ApiError(0, describeEvent(event), event));
      };
      session.onClose = (close) => {
        if (session) end(`Stopped (${close.code}).`);
      };
      timer = setTimeout(pump, 0);
      stop.disabled = false;
      await session.ready;
      reset.disabled = false;
      showStatus(status, "Live: look at the camera as the portrait does, then move.");
    } catch (failure) {
      showError(error, failure);
      end("Not started.");
    }
  });

  stop.addEventListener("click", () => end("Stopped."));
  reset.addEventListener("click", () => {
    session?.reset();
    showStatus(status, "Reference reset: the next camera frame is the new reference.");
  });
}
