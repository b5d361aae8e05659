// One job on the page: its progress bar with phase and ETA, cancel, and its result playing, with a
// download link. The animate tab and the edit tab's keyframe video each have one.

import { cancelJob, describeProgress, followJob, jobFailure, resultURL } from "./api.js";
import { setObjectURL, showError, showStatus } from "./ui.js";

export class JobView {
  /** `root` is filled from the page's `job-view` template; its data attributes name the parts for
   * assistive technology: `progress`, `video`, `image` (labels) and `download` (the link's text). */
  constructor(root) {
    root.replaceChildren(document.getElementById("job-view").content.cloneNode(true));
    const part = (name) => root.querySelector(`.job-${name}`);
    part("progress").setAttribute("aria-label", root.dataset.progress);
    part("video").setAttribute("aria-label", root.dataset.video);
    part("image").alt = root.dataset.image;
    part("download").textContent = root.dataset.download;
    this.root = root;
    this.progress = part("progress");
    this.status = part("status");
    this.cancel = part("cancel");
    this.video = part("video");
    this.image = part("image");
    this.download = part("download");
    this.error = part("error");
    this.controller = null;
    this.jobId = null;
    this.cancel.addEventListener("click", () => this.requestCancel());
  }

  /** Follow job `job` (as the API answered it) until it ends; then play its result or show why not. */
  async show(job, onEnd = () => {}) {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.jobId = job.id;
    this.root.hidden = false;
    this.video.hidden = true;
    this.image.hidden = true;
    this.download.hidden = true;
    showError(this.error, null);
    this.update(job);
    try {
      const final = await followJob(job.id, (update) => this.update(update), controller.signal);
      if (controller.signal.aborted) return;
      if (final.status === "succeeded") await this.play(final);
      else showError(this.error, jobFailure(final));
      onEnd(final);
    } catch (error) {
      if (!controller.signal.aborted) showError(this.error, error);
    }
  }

  update(job) {
    this.progress.value = job.progress?.fraction ?? 0;
    this.progress.setAttribute("aria-valuetext", describeProgress(job));
    showStatus(this.status, `Job ${job.id.slice(0, 8)}: ${describeProgress(job)}`);
    this.cancel.hidden = !["queued", "running"].includes(job.status);
  }

  async play(job) {
    const url = await resultURL(job.id);
    const isVideo = job.result?.content_type?.startsWith("video/");
    const target = isVideo ? this.video : this.image;
    setObjectURL(target, url);
    target.hidden = false;
    this.download.href = url;
    this.download.download = `${job.id}.${isVideo ? "mp4" : "png"}`;
    this.download.hidden = false;
  }

  async requestCancel() {
    if (!this.jobId) return;
    try {
      this.update(await cancelJob(this.jobId));
    } catch (error) {
      showError(this.error, error);
    }
  }
}
