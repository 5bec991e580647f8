// The sweep part of the form: up to two axes (a parameter and its values) and "each style image on
// its own". The images and the other parameters are the job form's own (form.js): a sweep is that
// job, tried once per combination of the axes' values (POST /sweeps).

import { h } from "./dom.js";
import { parseValues } from "./schema.js";

const AXES = 2;
const ROLE = ["rows", "columns"];

/** What the values input of an axis over `field` takes, in a few words. */
function valuesHint(field) {
  if (!field) return "Choose a parameter first.";
  const { kind, schema, nullable } = field;
  const none = nullable ? ', or "none"' : "";
  if (kind === "number") return `Comma-separated numbers, e.g. 100, 1000, 10000${none}.`;
  if (schema.type === "boolean") return `true, false${none}.`;
  if (kind === "enum") return `Comma-separated, of: ${schema.enum.join(", ")}${none}.`;
  if (kind === "string") return `Comma-separated values${none}.`;
  return "A JSON list of values, e.g. [[1, 2], [3]].";
}

export class SweepAxes {
  /** root: the form's details.sweep; fields: the job form's parameter fields (schema.js), by name. */
  constructor(root, fields) {
    this.root = root;
    this.fields = fields;
    this.eachStyle = root.querySelector("[data-testid=sweep-each-style]");
    this.eachStyleError = root.querySelector("#sweep-each-style-error");
    this.errorEl = root.querySelector(".sweep-error");
    this.axes = [];
    const container = root.querySelector(".axes");
    for (let i = 0; i < AXES; i += 1) {
      const axis = this.makeAxis(i);
      this.axes.push(axis);
      container.append(axis.element);
    }
  }

  makeAxis(i) {
    const id = `sweep-axis-${i}`;
    const options = [...this.fields.values()].map((field) =>
      h("option", { value: field.name }, field.name.replaceAll("_", " ")),
    );
    const name = h(
      "select",
      { id: `${id}-name`, dataset: { testid: `${id}-name` } },
      h("option", { value: "" }, "(none)"),
      options,
    );
    const values = h("input", {
      type: "text",
      id: `${id}-values`,
      dataset: { testid: `${id}-values` },
      "aria-describedby": `${id}-help ${id}-error`,
      spellcheck: "false",
      autocomplete: "off",
    });
    const help = h("small", { class: "help", id: `${id}-help` }, valuesHint(null));
    const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
    const axis = { name, values, help, error };
    name.addEventListener("change", () => {
      help.textContent = valuesHint(this.fields.get(name.value));
      values.placeholder = name.value ? `values of ${name.value.replaceAll("_", " ")}` : "";
    });
    const legend = `Axis ${i + 1} (${ROLE[i]})`;
    axis.element = h(
      "fieldset",
      { class: "axis", dataset: { axis: String(i) } },
      h("legend", {}, legend),
      h("div", { class: "field" }, h("label", { for: name.id }, "Parameter"), name),
      h("div", { class: "field" }, h("label", { for: values.id }, "Values"), values, help, error),
    );
    return axis;
  }

  /** {grid, eachStyle, errors}: grid maps each chosen parameter to its values, in axis order. */
  read() {
    const grid = {};
    const errors = [];
    this.axes.forEach((axis, i) => {
      const name = axis.name.value;
      const text = axis.values.value;
      if (!name) {
        const message = "choose the parameter these values are for";
        if (text.trim()) errors.push({ field: `axis ${i + 1}`, message });
        return;
      }
      if (name in grid) {
        errors.push({ field: `axis ${i + 1}`, message: `${name} is already the other axis` });
        return;
      }
      const read = parseValues(this.fields.get(name), text);
      if (read.error) errors.push({ field: `axis ${i + 1}`, message: read.error });
      else grid[name] = read.values;
    });
    const eachStyle = this.eachStyle.checked;
    if (Object.keys(grid).length === 0 && !eachStyle && errors.length === 0) {
      errors.push({ field: "grid", message: "choose a parameter to vary, or each style image on its own" });
    }
    return { grid, eachStyle, errors };
  }

  /** Whether this part of the form shows the error at `path` (the client's own or the server's). */
  showFieldError(path, message) {
    const own = /^axis (\d+)$/.exec(path); // the page's own checks
    if (own) return this.setError(this.axes[Number(own[1]) - 1], message);
    if (path === "each_style") return this.setError(null, message, this.eachStyleError, this.eachStyle);
    // The server's: "grid", "grid.style_weight" or one value of it, "grid.style_weight[2]" (then
    // ".0": an item of a value that is a list).
    const grid = /^grid(?:\.([^.[]+)(?:\[(\d+)\])?(?:\.(\d+))?)?(?=$|[.[])/.exec(path);
    if (!grid) return false;
    const axis = grid[1] && this.axes.find((a) => a.name.value === grid[1]);
    if (!axis) return this.setError(null, message, this.errorEl, null); // the grid as a whole
    const value = grid[2] === undefined ? "" : `value ${Number(grid[2]) + 1}`;
    const item = grid[3] === undefined ? "" : `, item ${Number(grid[3]) + 1}`;
    return this.setError(axis, value ? `${value + item}: ${message}` : message);
  }

  setError(axis, message, el = axis?.error, input = axis?.values) {
    if (!el) return false;
    el.textContent = el.hidden ? message : `${el.textContent}; ${message}`;
    el.hidden = false;
    input?.setAttribute("aria-invalid", "true");
    this.root.open = true;
    return true;
  }

  clearErrors() {
    for (const el of [this.errorEl, this.eachStyleError, ...this.axes.map((a) => a.error)]) {
      el.textContent = "";
      el.hidden = true;
    }
    for (const input of [this.eachStyle, ...this.axes.map((a) => a.values)]) input.removeAttribute("aria-invalid");
  }
}
