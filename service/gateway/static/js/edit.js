// The edit tab: a portrait, the expression controls as sliders with a live preview, and keyframes
// rendered to a video.
//
// The preview goes through a live session when a slot is free (the portrait itself is sent as the
// driving frame, so only the expression moves it), else through still edit jobs. Either way the
// latest slider state wins: while one preview renders, only the newest change waits.

import { ApiError, followJob, jobFailure, resultURL, submitJob } from "./api.js";
import { JobView } from "./jobview.js";
import { sliders } from "./schemaform.js";
import { describeEvent, LiveSession, toJPEG } from "./session.js";
import { $, setObjectURL, showError, showStatus } from "./ui.js";

/** Previews by still edit jobs (POST /v1/jobs with `source` and `expression`). */
class JobPreview {
  constructor(source, show, fail) {
    this.source = source;
    this.show = show;
    this.fail = fail;
    this.pending = null;
    this.running = false;
    this.description = "preview by edit jobs";
  }

  update(expression) {
    this.pending = expression;
    if (!this.running) this.run();
  }

  async run() {
    this.running = true;
    while (this.pending !== null) {
      const expression = this.pending;
      this.pending = null;
      try {
        const job = await submitJob({ source: this.source, expression, priority: "high" });
        const final = await followJob(job.id, () => {});
        if (final.status === "succeeded") this.show(await resultURL(final.id));
        else this.fail(jobFailure(final));
      } catch (error) {
        this.fail(error);
      }
    }
    this.running = false;
  }

  close() {
    this.pending = null;
  }
}

/** Ends of a live session that the next slider move mends with a new session, without a word. */
const QUIET_ENDS = new Set(["idle_timeout", "session_expired"]);

/** Previews through a live session: the portrait is the driving frame, the sliders its expression. */
class LivePreview {
  static async open(source, show, fail) {
    const session = await LiveSession.open(source, { output_kind: "pasteback" });
    try {
      await session.ready;
    } catch (error) {
      session.close();
      throw error;
    }
    const frame = await toJPEG(source, session.limits.max_frame_pixels);
    return new LivePreview(session, frame, show, fail);
  }

  constructor(session, frame, show, fail) {
    this.session = session;
    this.frame = frame;
    this.description = "live preview";
    this.closed = false;
    session.onFrame = (jpeg) => show(URL.createObjectURL(jpeg));
    session.onEvent = (event) => {
      if (event.type === "closing" && QUIET_ENDS.has(event.reason)) return;
      if (event.type === "error" || event.type === "closing") fail(new ApiError(0, describeEvent(event), event));
    };
    session.onClose = () => {
      this.closed = true;
    };
    session.sendFrame(frame);
  }

  update(expression) {
    this.session.setExpression(expression);
    this.session.sendFrame(this.frame);
  }

  close() {
    this.session.close();
  }
}

export function setupEdit(schemas) {
  const preview = $("edit-preview");
  const status = $("edit-status");
  const error = $("edit-error");
  const keyframes = [];
  let previewer = null;
  let source = null;
  const show = (url) => {
    setObjectURL(preview, url);
    showError(error, null);
  };
  const fail = (failure) => showError(error, failure);

  /** A live preview when a slot is free, else edit jobs; a live session that ended is replaced. */
  let opening = null;
  const previewing = async () => {
    if (previewer && !previewer.closed) return previewer;
    if (!opening) {
      const pending = choose();
      opening = pending;
      pending.finally(() => {
        if (opening === pending) opening = null;
      });
    }
    return opening;
  };
  const choose = async () => {
    const chosen = source;
    let next;
    try {
      next = await LivePreview.open(chosen, show, fail);
    } catch (failure) {
      next = new JobPreview(chosen, show, fail);
      if (failure instanceof ApiError && ![404, 503].includes(failure.status)) fail(failure);
    }
    if (chosen !== source) {
      next.close();
      return null;
    }
    previewer = next;
    showStatus(status, `Move a slider: ${previewer.description}.`);
    return previewer;
  };
  const update = async (values) => {
    if (source) (await previewing())?.update(values);
  };
  const controls = sliders($("edit-sliders"), schemas.ExpressionControls, "edit", update);

  $("edit-source").addEventListener("change", async (event) => {
    previewer?.close();
    previewer = null;
    opening = null;
    source = event.target.files[0] || null;
    showError(error, null);
    if (!source) return;
    setObjectURL(preview, URL.createObjectURL(source));
    preview.hidden = false;
    const values = controls.values();
    const chosen = await previewing();
    if (chosen && Object.keys(values).length) chosen.update(values);
  });

  $("edit-reset").addEventListener("click", () => {
    controls.reset();
    update({});
  });

  const list = $("keyframe-list");
  const renderList = () => {
    list.replaceChildren(
      ...keyframes.map((keyframe, index) => {
        const item = document.createElement("li");
        const controlsText = Object.entries(keyframe.expression)
          .map(([name, value]) => `${name} ${value}`)
          .join(", ");
        const text = document.createElement("span");
        text.textContent = `${controlsText || "rest"}: ramp ${keyframe.change}, hold ${keyframe.keep} frames`;
        const load = document.createElement("button");
        load.type = "button";
        load.textContent = "Load";
        load.setAttribute("aria-label", `Load keyframe ${index + 1} into the sliders`);
        load.addEventListener("click", () => {
          controls.set(keyframe.expression);
          update(keyframe.expression);
        });
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", `Remove keyframe ${index + 1}`);
        remove.addEventListener("click", () => {
          keyframes.splice(index, 1);
          renderList();
        });
        item.append(text, load, remove);
        return item;
      }),
    );
    $("keyframes-render").disabled = keyframes.length === 0;
  };
  renderList();

  $("keyframe-add").addEventListener("click", () => {
    keyframes.push({
      expression: controls.values(),
      change: Number.parseInt($("keyframe-change").value, 10) || 0,
      keep: Number.parseInt($("keyframe-keep").value, 10) || 0,
    });
    renderList();
  });

  const view = new JobView($("keyframes-job"));
  $("keyframes-render").addEventListener("click", async () => {
    const renderError = $("keyframes-error");
    showError(renderError, null);
    if (!source) {
      showError(renderError, "Choose a portrait first.");
      return;
    }
    try {
      const job = await submitJob({
        source,
        keyframes,
        options: { output_fps: Number($("keyframes-fps").value) },
      });
      await view.show(job);
    } catch (failure) {
      showError(renderError, failure);
    }
  });
}
