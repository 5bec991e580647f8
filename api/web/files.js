// The content and style pickers: choose or drop files, see thumbnails (object URLs), remove them,
// and (styles) give each image a blend weight. The files stay in JS: an <input type=file> cannot
// hold a list that grows or loses one file.

import { h } from "./dom.js";

function size(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

export class FilePicker {
  /** root: the .picker element: a .drop label holding the file input, a .thumbs list, a .field-error. */
  constructor(root, { multiple, weightMin }) {
    this.root = root;
    this.input = root.querySelector("input[type=file]");
    this.list = root.querySelector(".thumbs");
    this.errorEl = root.querySelector(".field-error");
    this.multiple = multiple;
    this.weightMin = weightMin;
    this.items = [];
    this.input.addEventListener("change", () => {
      this.add(this.input.files);
      this.input.value = ""; // so choosing the same file again fires change again
    });
    const zone = root.querySelector(".drop");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault(); // allows the drop
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault(); // the browser would open the file instead
      zone.classList.remove("over");
      this.add(event.dataTransfer.files);
    });
  }

  add(fileList) {
    const files = [...fileList];
    if (files.length === 0) return;
    if (!this.multiple) this.clear();
    for (const file of this.multiple ? files : files.slice(0, 1)) this.items.push(this.makeItem(file));
    this.render();
  }

  makeItem(file) {
    // Only images get an <img>: a broken image from another file type would only confuse.
    const isImage = file.type.startsWith("image/");
    const item = { file, url: isImage ? URL.createObjectURL(file) : null };
    item.errorEl = h("p", { class: "field-error", hidden: true });
    const preview = isImage
      ? h("img", { src: item.url, alt: file.name })
      : h("div", { class: "no-preview" }, file.type || "unknown type");
    const remove = h(
      "button",
      { type: "button", class: "remove", title: "Remove", "aria-label": `Remove ${file.name}` },
      "×",
    );
    remove.addEventListener("click", () => this.remove(item));
    const parts = [
      preview,
      remove,
      h("span", { class: "name", title: file.name }, file.name),
      h("span", { class: "size" }, size(file.size)),
    ];
    if (this.multiple) {
      item.weight = h("input", { type: "number", min: this.weightMin, step: "any", value: "1", class: "weight" });
      const title = "blend weight of this style image";
      parts.push(h("label", { class: "weight-label", title }, "weight ", item.weight));
    }
    item.element = h("li", { class: "thumb" }, ...parts, item.errorEl);
    return item;
  }

  remove(item) {
    if (item.url) URL.revokeObjectURL(item.url);
    this.items = this.items.filter((i) => i !== item);
    this.render();
  }

  clear() {
    for (const item of this.items) if (item.url) URL.revokeObjectURL(item.url);
    this.items = [];
    this.render();
  }

  render() {
    this.list.replaceChildren(...this.items.map((i) => i.element));
    this.root.classList.toggle("has-files", this.items.length > 0);
  }

  files() {
    return this.items.map((i) => i.file);
  }

  /** The blend weights, or null while every one is still 1 (the server then mixes equally). */
  weights() {
    if (this.items.length < 2) return null; // one style image has the whole style, whatever its weight
    const values = this.items.map((i) => (i.weight.value.trim() === "" ? NaN : Number(i.weight.value)));
    return values.every((v) => v === 1) ? null : values;
  }

  /** index null: the picker as a whole; otherwise that file's thumbnail. */
  setError(index, message) {
    const target = index === null ? this.errorEl : this.items[index]?.errorEl ?? this.errorEl;
    target.textContent = message;
    target.hidden = false;
    if (index === null) this.input.setAttribute("aria-invalid", "true");
  }

  clearErrors() {
    for (const el of [this.errorEl, ...this.items.map((i) => i.errorEl)]) {
      el.textContent = "";
      el.hidden = true;
    }
    this.input.removeAttribute("aria-invalid");
  }
}
