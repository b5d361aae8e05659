// The page's entry point: the API key (kept in localStorage), the tabs, and each tab's setup from
// the API's schema.

import { setupAnimate } from "./animate.js";
import { apiKey, setApiKey } from "./api.js";
import { setupEdit } from "./edit.js";
import { setupLive } from "./live.js";
import { components } from "./schemaform.js";
import { $, showError } from "./ui.js";

function setupKey(onChange) {
  const input = $("api-key");
  const state = $("key-state");
  const show = () => {
    state.textContent = apiKey() ? "Key saved in this browser." : "No key saved (an open gateway needs none).";
  };
  input.value = apiKey();
  show();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    show();
    onChange();
  });
  $("key-forget").addEventListener("click", () => {
    input.value = "";
    setApiKey("");
    show();
  });
}

/** ARIA tabs: click or arrow keys (Home, End too) switch; only the selected tab is in the tab order. */
function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    window.history.replaceState(null, "", `#${tab.dataset.tab}`);
  };
  for (const [index, tab] of tabs.entries()) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      const target = tabs[(next + tabs.length) % tabs.length];
      select(target);
      target.focus();
    });
  }
  select(tabs.find((tab) => `#${tab.dataset.tab}` === window.location.hash) ?? tabs[0]);
}

async function main() {
  setupTabs();
  let jobs = null;
  setupKey(() => jobs?.refresh());
  try {
    const schemas = await components();
    jobs = setupAnimate(schemas);
    setupEdit(schemas);
    setupLive(schemas);
    await jobs.refresh();
    document.body.dataset.ready = "true";
  } catch (error) {
    showError($("page-error"), error);
  }
}

main();
