// The animate tab: a source and a driving input, the options form from the schema, the job playing
// as it ends, and the caller's job list.

import { describeProgress, listJobs, submitJob } from "./api.js";
import { JobView } from "./jobview.js";
import { optionsForm } from "./schemaform.js";
import { $, showError } from "./ui.js";

export function setupAnimate(schemas) {
  const options = optionsForm($("animate-options"), schemas.AnimationOptions, "animate-option");
  const priority = $("animate-priority");
  const jobRequest = schemas.JobRequest.properties.priority;
  for (const value of jobRequest.enum ?? []) priority.append(new Option(value, value));
  priority.value = jobRequest.default;
  const view = new JobView($("animate-job"));
  const error = $("animate-error");
  const submit = $("animate-submit");
  const jobs = new JobList(view);

  $("animate-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(error, null);
    submit.disabled = true;
    try {
      const job = await submitJob({
        source: $("animate-source").files[0],
        driving: $("animate-driving").files[0],
        options: options.values(),
        priority: priority.value,
      });
      jobs.refresh();
      await view.show(job, () => jobs.refresh());
    } catch (failure) {
      showError(error, failure);
    } finally {
      submit.disabled = false;
    }
  });
  $("jobs-refresh").addEventListener("click", () => jobs.refresh());
  $("jobs-more").addEventListener("click", () => jobs.more());
  return jobs;
}

/** The caller's jobs, newest first, a page at a time; "Show" opens one in the job view. */
class JobList {
  constructor(view) {
    this.view = view;
    this.body = $("jobs-body");
    this.moreButton = $("jobs-more");
    this.error = $("jobs-error");
    this.cursor = null;
  }

  async refresh() {
    this.body.replaceChildren();
    this.cursor = null;
    await this.more();
  }

  async more() {
    showError(this.error, null);
    try {
      const page = await listJobs(this.cursor);
      for (const job of page.jobs) this.body.append(this.row(job));
      this.cursor = page.next_cursor;
      this.moreButton.hidden = !this.cursor;
    } catch (failure) {
      showError(this.error, failure);
    }
  }

  row(job) {
    const row = document.createElement("tr");
    const cells = [
      job.id.slice(0, 8),
      new Date(job.created_at).toLocaleString(),
      job.status === "failed" ? `failed [${job.error?.code}]` : job.status,
      describeProgress(job),
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const action = document.createElement("td");
    const show = document.createElement("button");
    show.type = "button";
    show.textContent = "Show";
    show.setAttribute("aria-label", `Show job ${job.id.slice(0, 8)}`);
    show.addEventListener("click", () => this.view.show(job, () => this.refresh()));
    action.append(show);
    row.append(action);
    return row;
  }
}
