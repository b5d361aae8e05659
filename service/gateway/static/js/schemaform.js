// Forms generated from the API's own OpenAPI schema (/openapi.json): the animation options as
// inputs showing their defaults, the expression controls as sliders.

let openapi = null;

/** The component schemas of /openapi.json (fetched once). */
export async function components() {
  if (!openapi) {
    const response = await fetch("openapi.json");
    if (!response.ok) throw new Error(`cannot read the API schema (HTTP ${response.status})`);
    openapi = await response.json();
  }
  return openapi.components.schemas;
}

/** A property's schema with `nullable` set when it is `anyOf: [X, {type: null}]`. */
function plain(property) {
  if (!property.anyOf) return property;
  const kinds = property.anyOf.filter((kind) => kind.type !== "null");
  return kinds.length === 1 ? { ...property, ...kinds[0], anyOf: undefined, nullable: true } : property;
}

function bounds(input, schema) {
  const low = schema.minimum ?? schema.exclusiveMinimum;
  const high = schema.maximum ?? schema.exclusiveMaximum;
  if (low !== undefined) input.min = String(low);
  if (high !== undefined) input.max = String(high);
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function hint(id, schema) {
  const shown = schema.default === null || schema.default === undefined ? "auto" : String(schema.default);
  const text = [schema.description, `Default: ${shown}.`].filter(Boolean).join(" ");
  return element("small", { id: `${id}-hint`, class: "hint" }, text);
}

const NUMBERS = new Set(["number", "integer"]);

/** A text field's value for a schema of several kinds (e.g. "largest", "all" or a list of indices):
 * JSON when it parses as JSON, a comma-separated list where the schema takes an array, else the text. */
function parseText(text, schema) {
  const array = (schema.anyOf ?? []).find((kind) => kind.type === "array");
  let value = text;
  try {
    value = JSON.parse(text);
  } catch {
    if (array && text.includes(",")) value = text.split(",").map((part) => part.trim());
  }
  if (array && NUMBERS.has(array.items?.type)) {
    if (typeof value === "number") value = [value];
    if (Array.isArray(value)) value = value.map(Number);
  }
  return value;
}

/** One input for a property, set to its default: a checkbox, a select (enum), a number field, or a
 * text field (anything else). */
function optionField(id, name, property) {
  const schema = plain(property);
  const field = element("div", { class: `field field-${schema.type || "text"}` });
  const label = element("label", { for: id }, schema.title || name);
  let input;
  if (schema.type === "boolean") {
    input = element("input", { id, type: "checkbox", name });
    input.checked = Boolean(schema.default);
  } else if (schema.enum) {
    input = element("select", { id, name });
    for (const value of schema.enum) input.append(element("option", { value }, value));
    input.value = schema.default;
  } else if (NUMBERS.has(schema.type)) {
    input = element("input", { id, name, type: "number", step: schema.type === "integer" ? "1" : "any" });
    bounds(input, schema);
    if (schema.default !== null && schema.default !== undefined) input.value = String(schema.default);
    else input.placeholder = "auto";
  } else {
    input = element("input", { id, name, type: "text", spellcheck: "false" });
    input.value = typeof schema.default === "string" ? schema.default : JSON.stringify(schema.default ?? null);
  }
  input.setAttribute("aria-describedby", `${id}-hint`);
  field.append(...(schema.type === "boolean" ? [input, label] : [label, input]), hint(id, schema));

  const read = () => {
    if (schema.type === "boolean") return input.checked;
    if (schema.enum) return input.value;
    if (!NUMBERS.has(schema.type)) return parseText(input.value.trim(), schema);
    if (input.value === "") return null;
    return schema.type === "integer" ? Number.parseInt(input.value, 10) : Number(input.value);
  };
  const changed = () => JSON.stringify(read()) !== JSON.stringify(schema.default ?? null);
  return { field, name, changed, read };
}

/** The form of an object schema (e.g. AnimationOptions) in `container`; `values()` gives the fields
 * changed from their defaults (the API fills in the rest). */
export function optionsForm(container, schema, prefix) {
  const fields = Object.entries(schema.properties).map(([name, property]) =>
    optionField(`${prefix}-${name}`, name, property),
  );
  container.replaceChildren(...fields.map((f) => f.field));
  return {
    values() {
      return Object.fromEntries(fields.filter((f) => f.changed()).map((f) => [f.name, f.read()]));
    },
  };
}

function sliderStep(low, high) {
  return 10 ** Math.floor(Math.log10((high - low) / 100));
}

/** Sliders for the expression controls (aliases of other controls left out); `onChange(values)` is
 * called when a slider is let go or stepped with the keyboard. */
export function sliders(container, schema, prefix, onChange) {
  const controls = [];
  for (const [name, property] of Object.entries(schema.properties)) {
    if (property["x-alias-of"]) continue;
    const control = plain(property);
    const id = `${prefix}-${name}`;
    const rest = control.default;
    const low = control.minimum;
    const high = control.maximum;
    const field = element("div", { class: "field field-slider" });
    const label = element("label", { for: id }, control.title || name);
    const input = element("input", {
      id,
      name,
      type: "range",
      min: String(low),
      max: String(high),
      step: String(sliderStep(low, high)),
      "aria-describedby": `${id}-hint`,
    });
    const value = element("output", { for: id });
    let enable = null;
    if (control.nullable) {
      enable = element("input", { id: `${id}-set`, type: "checkbox" });
      const enableLabel = element("label", { for: `${id}-set`, class: "inline" }, `set ${control.title || name}`);
      field.append(enable, enableLabel);
      enable.addEventListener("change", () => {
        input.disabled = !enable.checked;
        value.textContent = enable.checked ? input.value : "source's own";
        onChange(readAll());
      });
    }
    const show = () => {
      value.textContent = enable && !enable.checked ? "source's own" : input.value;
    };
    input.addEventListener("input", show);
    input.addEventListener("change", () => onChange(readAll()));
    field.prepend(label, input, value);
    field.append(element("small", { id: `${id}-hint`, class: "hint" }, control.description || ""));
    container.append(field);
    const reset = () => {
      input.value = String(rest ?? (low + high) / 2);
      if (enable) {
        enable.checked = false;
        input.disabled = true;
      }
      show();
    };
    reset();
    controls.push({
      name,
      reset,
      read: () => (enable && !enable.checked ? null : Number(input.value)),
      set: (v) => {
        if (enable) {
          enable.checked = v !== null && v !== undefined;
          input.disabled = !enable.checked;
        }
        if (v !== null && v !== undefined) input.value = String(v);
        show();
      },
      rest: rest ?? null,
    });
  }
  const readAll = () =>
    Object.fromEntries(
      controls.filter((c) => c.read() !== null && c.read() !== c.rest).map((c) => [c.name, c.read()]),
    );
  return {
    values: readAll,
    set(values) {
      for (const c of controls) c.set(values[c.name] ?? c.rest);
    },
    reset() {
      for (const c of controls) c.reset();
    },
  };
}
