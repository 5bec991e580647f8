// The submit form: content and style pickers, the parameters built from GET /parameters (main
// ones up front, every other one under "Advanced"), and errors shown next to what caused them.
// The same form starts a sweep (sweep-form.js adds its axes): one upload, one set of parameters.

import { getParameters, submitJob, submitSweep, asProblem } from "./api.js";
import { FilePicker } from "./files.js";
import { SweepAxes } from "./sweep-form.js";
import { buildField, readField, isDefault, reset, setFieldError } from "./schema.js";
import { showError, clearError } from "./notice.js";

// Shown up front, in this order; the page knows their names, never their defaults or limits.
const MAIN = ["iterations", "height", "width", "keep_aspect", "style_weight", "preserve_colors", "seed"];
// Set through each style image's weight instead of a field of its own.
const HIDDEN = ["style_blend_weights"];

const megabytes = (bytes) => `${Math.round(bytes / 1e5) / 10} MB`;

export class JobForm {
  /** root: the <form>; onSubmitted(job) runs with the accepted job (202), onSweep(sweep) with a sweep. */
  constructor(root, onSubmitted, onSweep = () => {}) {
    this.root = root;
    this.onSubmitted = onSubmitted;
    this.onSweep = onSweep;
    this.fields = new Map();
    this.button = root.querySelector("[data-testid=submit]");
    this.sweepRoot = root.querySelector(".sweep");
    this.sweepButton = root.querySelector("[data-testid=submit-sweep]");
    root.addEventListener("submit", (event) => {
      event.preventDefault();
      // Enter in an input of the sweep's part starts the sweep; anywhere else, the job.
      this.submit(this.sweepRoot.contains(document.activeElement));
    });
    this.sweepButton.addEventListener("click", () => this.submit(true));
    root.querySelector(".reset-params").addEventListener("click", () => {
      for (const field of this.fields.values()) reset(field);
      this.clearErrors();
    });
    this.ready = this.build();
  }

  async build() {
    let answer;
    try {
      answer = await getParameters();
    } catch (error) {
      showError(asProblem(error));
      return;
    }
    const { parameters, limits } = answer;
    this.limits = limits;
    const properties = parameters.properties || {};
    const main = this.root.querySelector(".main-params");
    const advanced = this.root.querySelector(".advanced-params");
    for (const name of MAIN) {
      if (properties[name]) this.addField(name, properties[name], main);
    }
    for (const [name, prop] of Object.entries(properties)) {
      if (!MAIN.includes(name) && !HIDDEN.includes(name)) this.addField(name, prop, advanced);
    }
    const blend = properties.style_blend_weights;
    const weightMin = (blend?.anyOf || []).find((b) => b.type === "array")?.items?.minimum;
    this.content = new FilePicker(this.root.querySelector(".content-picker"), { multiple: false });
    this.styles = new FilePicker(this.root.querySelector(".style-picker"), { multiple: true, weightMin });
    const size = megabytes(limits.max_upload_bytes);
    this.root.querySelector(".content-limits").textContent = `one image, up to ${size}`;
    this.root.querySelector(".style-limits").textContent = `up to ${limits.max_styles} images, ${size} each`;
    this.sweep = new SweepAxes(this.sweepRoot, this.fields);
    this.button.disabled = false;
    this.sweepButton.disabled = false;
  }

  addField(name, prop, container) {
    const field = buildField(name, prop);
    this.fields.set(name, field);
    container.append(field.element);
  }

  /** {params, errors}: only the values that differ from the schema's defaults are sent. */
  readParams() {
    const params = {};
    const errors = [];
    for (const field of this.fields.values()) {
      const read = readField(field);
      if (read.error) errors.push({ field: `params.${field.name}`, message: read.error });
      else if (!read.skip && !isDefault(field, read.value)) params[field.name] = read.value;
    }
    const weights = this.styles.weights();
    if (weights) {
      weights.forEach((w, i) => {
        if (Number.isNaN(w)) {
          errors.push({ field: `params.style_blend_weights.${i}`, message: "a number is needed" });
        }
      });
      params.style_blend_weights = weights;
    }
    return { params, errors };
  }

  /** Checks the server would make too, made before uploading megabytes for nothing. */
  checkFiles() {
    const errors = [];
    const max = this.limits.max_upload_bytes;
    const contents = this.content.files();
    const styles = this.styles.files();
    if (contents.length === 0) errors.push({ field: "content", message: "choose a content image" });
    if (styles.length === 0) errors.push({ field: "style", message: "choose at least one style image" });
    if (styles.length > this.limits.max_styles) {
      errors.push({ field: "style", message: `at most ${this.limits.max_styles} style images` });
    }
    if (contents[0]?.size > max) errors.push({ field: "content", message: `larger than ${megabytes(max)}` });
    styles.forEach((file, i) => {
      if (file.size > max) errors.push({ field: `style[${i}]`, message: `larger than ${megabytes(max)}` });
    });
    return errors;
  }

  /** Submit a job, or with `sweep` a sweep of it (POST /sweeps: the same fields, and the axes). */
  async submit(sweep = false) {
    await this.ready;
    if (!this.limits) return; // the schema did not load: the error box says why
    this.clearErrors();
    const { params, errors } = this.readParams();
    errors.push(...this.checkFiles());
    const axes = sweep ? this.sweep.read() : null;
    if (axes) {
      errors.push(...axes.errors);
      if (axes.eachStyle) delete params.style_blend_weights; // one style a cell: nothing to blend
    }
    if (errors.length) {
      const detail = errors.map((e) => `${e.field}: ${e.message}`).join("; ");
      this.showProblem({ title: "Check the form", detail, errors });
      return;
    }
    const form = new FormData();
    form.append("content", this.content.files()[0]);
    for (const file of this.styles.files()) form.append("style", file); // the field repeats per file
    form.append("params", JSON.stringify(params));
    if (axes && Object.keys(axes.grid).length) form.append("grid", JSON.stringify(axes.grid));
    if (axes?.eachStyle) form.append("each_style", "true");
    const button = sweep ? this.sweepButton : this.button;
    const label = button.textContent;
    this.button.disabled = this.sweepButton.disabled = true;
    button.textContent = "Uploading…";
    try {
      if (sweep) this.onSweep(await submitSweep(form));
      else this.onSubmitted(await submitJob(form));
    } catch (error) {
      this.showProblem(asProblem(error));
    } finally {
      this.button.disabled = this.sweepButton.disabled = false;
      button.textContent = label;
    }
  }

  clearErrors() {
    clearError();
    for (const field of this.fields.values()) setFieldError(field, "");
    this.content?.clearErrors();
    this.styles?.clearErrors();
    this.sweep?.clearErrors();
  }

  /** The detail in the error box, and each of `errors` next to the input it names. */
  showProblem(problem) {
    showError(problem);
    for (const { field, message } of problem.errors || []) this.showFieldError(field || "", message);
    const first = this.root.querySelector("[aria-invalid=true]");
    if (first) {
      first.closest("details")?.setAttribute("open", "");
      first.focus({ preventScroll: true });
      first.scrollIntoView({ block: "center" });
    }
  }

  showFieldError(path, message) {
    if (this.sweep?.showFieldError(path, message)) return;
    const [head, name, ...rest] = path.split(".");
    const style = /^style(?:\[(\d+)\])?$/.exec(head);
    if (head === "params" && name === "style_blend_weights") {
      this.styles.setError(rest.length ? Number(rest[0]) : null, `weight: ${message}`);
    } else if (head === "params" && this.fields.has(name)) {
      const field = this.fields.get(name);
      const item = rest.length ? `item ${Number(rest[0]) + 1}: ` : ""; // e.g. params.style_layers.0
      const previous = field.errorEl.hidden ? "" : `${field.errorEl.textContent}; `;
      setFieldError(field, previous + item + message);
    } else if (head === "content") {
      this.content.setError(null, message);
    } else if (style) {
      this.styles.setError(style[1] === undefined ? null : Number(style[1]), message);
    }
    // anything else ("params", "request", an unknown parameter) is in the detail above
  }
}
