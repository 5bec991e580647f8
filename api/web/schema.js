// One form field per job parameter, built from its JSON Schema (GET /parameters): a parameter the
// server adds appears here without editing the page, and defaults and limits are never copied.

import { h } from "./dom.js";

/** `anyOf [X, null]` (or `type: [X, "null"]`) is X where an empty input means null. */
function unwrapNullable(prop) {
  const branches = prop.anyOf || prop.oneOf;
  if (Array.isArray(branches) && branches.length === 2) {
    const others = branches.filter((b) => b.type !== "null");
    if (others.length === 1) return { schema: others[0], nullable: true };
  }
  if (Array.isArray(prop.type) && prop.type.length === 2 && prop.type.includes("null")) {
    return { schema: { ...prop, type: prop.type.find((t) => t !== "null") }, nullable: true };
  }
  return { schema: prop, nullable: false };
}

/** Which input a schema gets; anything not understood is edited as JSON text. */
function kindOf(schema, nullable) {
  if (Array.isArray(schema.enum)) return "enum";
  if (schema.type === "boolean") return nullable ? "enum" : "boolean";
  if (schema.type === "integer" || schema.type === "number") return "number";
  if (schema.type === "string") return "string";
  const items = schema.items?.type;
  if (schema.type === "array" && ["string", "number", "integer"].includes(items)) return "list";
  return "json";
}

/** The input's value as the default looks: what the user sees before changing anything. */
function defaultText(field) {
  const value = field.prop.default;
  if (value === undefined || value === null) return "";
  if (field.kind === "list") return value.join(", ");
  if (field.kind === "json") return JSON.stringify(value);
  return String(value);
}

function numberInput(schema) {
  const min = schema.minimum ?? schema.exclusiveMinimum;
  const max = schema.maximum ?? schema.exclusiveMaximum;
  const input = h("input", { type: "number", min, max, step: schema.type === "integer" ? 1 : "any" });
  // HTML has no exclusive bounds: a custom validity keeps :invalid styling honest (the server decides).
  input.addEventListener("input", () => {
    const v = input.valueAsNumber;
    const low = schema.exclusiveMinimum !== undefined && v <= schema.exclusiveMinimum;
    const high = schema.exclusiveMaximum !== undefined && v >= schema.exclusiveMaximum;
    input.setCustomValidity(low ? `must be more than ${schema.exclusiveMinimum}` : high ? "too large" : "");
  });
  return input;
}

function makeInput(field) {
  const { schema, kind, nullable } = field;
  if (kind === "number") return numberInput(schema);
  if (kind === "boolean") return h("input", { type: "checkbox" });
  if (kind === "enum") {
    const values = schema.enum ?? [true, false];
    const options = values.map((v) => h("option", { value: JSON.stringify(v) }, String(v)));
    if (nullable) options.unshift(h("option", { value: "null" }, "(none)"));
    return h("select", {}, options);
  }
  // Without a default in the schema, an empty input leaves the value to the server.
  const placeholder = nullable ? "none" : field.prop.default === undefined ? "server default" : null;
  return h("input", { type: "text", placeholder });
}

/** A bound as people read it: 9223372036854775807 (a 64-bit limit) as 9.2e18. */
const bound = (n) => (Number.isSafeInteger(n) || !Number.isInteger(n) ? String(n) : n.toExponential(1));

function limitsText(field) {
  const { schema, prop } = field;
  const { minimum, maximum, exclusiveMinimum: exMin, exclusiveMaximum: exMax } = schema;
  const low = minimum !== undefined ? bound(minimum) : exMin !== undefined ? `>${bound(exMin)}` : undefined;
  const high = maximum !== undefined ? bound(maximum) : exMax !== undefined ? `<${bound(exMax)}` : undefined;
  const parts = [];
  if (field.kind === "list") parts.push("comma-separated");
  if (field.kind === "json") parts.push("JSON");
  if (prop.default !== undefined) {
    parts.push(`default ${prop.default === null ? "none" : defaultText(field)}`);
  }
  if (low !== undefined && high !== undefined) parts.push(`${low} to ${high}`);
  else if (low !== undefined) parts.push(`min ${low}`);
  else if (high !== undefined) parts.push(`max ${high}`);
  return parts.join(", ");
}

/** The field of parameter `name`: {element, input, errorEl, ...}; readField() gives its value. */
export function buildField(name, prop) {
  const { schema, nullable } = unwrapNullable(prop);
  const field = { name, prop, schema, nullable, kind: kindOf(schema, nullable) };
  const id = `param-${name}`;
  const input = makeInput(field);
  Object.assign(input, { id, name });
  input.dataset.testid = id;
  const title = prop.title || name.replaceAll("_", " ");
  const description = prop.description || "";
  const helpText = [description, limitsText(field)].filter(Boolean).join(" · ");
  const help = h("small", { class: "help", id: `${id}-help` }, helpText);
  const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  input.setAttribute("aria-describedby", `${id}-help ${id}-error`);
  const label = h("label", { for: id, title: description }, title);
  field.input = input;
  field.errorEl = error;
  // A checkbox goes before its label; every other input below it.
  const row = field.kind === "boolean" ? [h("div", { class: "check-row" }, input, label)] : [label, input];
  field.element = h("div", { class: "field", dataset: { param: name } }, ...row, help, error);
  reset(field);
  return field;
}

/** Back to the schema's default. */
export function reset(field) {
  if (field.kind === "boolean") field.input.checked = Boolean(field.prop.default);
  else if (field.kind === "enum") field.input.value = JSON.stringify(field.prop.default ?? null);
  else field.input.value = defaultText(field);
}

/** An integer past 2^53 keeps its digits (JSON.rawJSON) instead of being rounded by Number. */
function integerValue(text) {
  const n = Number(text);
  if (/^-?\d+$/.test(text) && !Number.isSafeInteger(n) && typeof JSON.rawJSON === "function") {
    return JSON.rawJSON(text);
  }
  return n;
}

function parseNumber(text, type) {
  const n = type === "integer" ? integerValue(text) : Number(text);
  if (typeof n === "number" && !Number.isFinite(n)) throw new Error(`"${text}" is not a number`);
  return n;
}

/** What an empty text means: null where allowed, the server's default where none is shown. */
function emptyValue(field) {
  if (field.nullable) return { value: null };
  if (field.prop.default === undefined) return { skip: true };
  if (field.kind === "list") return { value: [] };
  return { error: "a value is needed" };
}

/** {value} to send, {skip} to leave to the server, or {error} to show next to the input. */
export function readField(field) {
  const { kind, input, schema } = field;
  if (kind === "boolean") return { value: input.checked };
  if (kind === "enum") return { value: JSON.parse(input.value) };
  if (kind === "number" && input.validity.badInput) return { error: "not a number" };
  const text = input.value.trim();
  if (text === "") return emptyValue(field);
  try {
    if (kind === "number") return { value: parseNumber(text, schema.type) };
    if (kind === "string") return { value: input.value };
    if (kind === "list") {
      const parts = text.split(",").map((p) => p.trim()).filter((p) => p !== "");
      const type = schema.items.type;
      return { value: type === "string" ? parts : parts.map((p) => parseNumber(p, type)) };
    }
    return { value: JSON.parse(text) };
  } catch (error) {
    return { error: error instanceof SyntaxError ? "not valid JSON" : error.message };
  }
}

/** One value of a sweep's axis from its text: numbers for a numeric field, true/false, an enum's
 *  own value, "none" for null where allowed; anything else is kept as the text. */
function parseOne(field, text) {
  const { kind, schema, nullable } = field;
  if (nullable && /^(none|null)$/i.test(text)) return null;
  if (kind === "number") return parseNumber(text, schema.type);
  if (schema.type === "boolean") {
    if (/^(true|false)$/i.test(text)) return text.toLowerCase() === "true";
    throw new Error(`"${text}" is not true or false`);
  }
  if (kind === "enum") {
    const match = schema.enum.find((v) => String(v) === text);
    if (match === undefined) throw new Error(`"${text}" is not one of ${schema.enum.join(", ")}`);
    return match;
  }
  if (kind === "string") return text;
  throw new Error("write this parameter's values as a JSON list, e.g. [[...], [...]]");
}

/**
 * The values of a sweep's axis over parameter `field`, from comma-separated text ("100, 1000") or
 * a JSON list ("[[1, 2], [3, 4]]", for values that are lists themselves). {values} or {error}.
 */
export function parseValues(field, text) {
  const trimmed = text.trim();
  if (trimmed === "") return { error: "give one or more values" };
  try {
    if (trimmed.startsWith("[")) {
      const values = JSON.parse(trimmed);
      if (!Array.isArray(values) || values.length === 0) return { error: "a JSON list of one or more values" };
      return { values };
    }
    const parts = trimmed.split(",").map((p) => p.trim());
    if (parts.some((p) => p === "")) return { error: "an empty value between commas" };
    return { values: parts.map((p) => parseOne(field, p)) };
  } catch (error) {
    return { error: error instanceof SyntaxError ? "not a valid JSON list" : error.message };
  }
}

/** Whether a value is the schema's default (then it is not sent: the server fills it in). */
export function isDefault(field, value) {
  return field.prop.default !== undefined && JSON.stringify(value) === JSON.stringify(field.prop.default);
}

export function setFieldError(field, message) {
  field.errorEl.textContent = message || "";
  field.errorEl.hidden = !message;
  if (message) field.input.setAttribute("aria-invalid", "true");
  else field.input.removeAttribute("aria-invalid");
}
