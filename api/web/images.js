// Job images in <img> elements. Without an API key the element gets the image's URL, as ever
// (the browser fetches and caches it). With one it cannot: an <img> sends no Authorization
// header. The image is fetched with the key instead and shown through a blob: URL, which is
// revoked once the element shows another (or nothing), so the page does not keep them all.

import { apiKey } from "./key.js";
import { request } from "./api.js";

/** A blob: URL of the image at `url`, fetched with the API key (the caller revokes it). */
async function fetchImage(url) {
  const response = await request(url, { headers: { Accept: "image/*" } });
  return URL.createObjectURL(await response.blob());
}

/** One <img> showing the image at one URL at a time; `onShown(src)` hears the src it got. */
export class JobImage {
  constructor(img, onShown = () => {}) {
    this.img = img;
    this.onShown = onShown;
    this.url = null; // the image's API URL, asked for last
    this.blob = null; // the blob: URL on screen, if any
  }

  show(url) {
    if (url === this.url) return;
    this.url = url;
    if (!apiKey()) {
      this.release();
      this.img.src = url;
      this.onShown(url);
      return;
    }
    fetchImage(url).then(
      (blob) => {
        if (this.url !== url) return URL.revokeObjectURL(blob); // another image was asked for meanwhile
        this.release();
        this.blob = blob;
        this.img.src = blob;
        this.onShown(blob);
      },
      () => {
        if (this.url === url) this.url = null; // the next render tries again; the views show read errors
      },
    );
  }

  clear() {
    this.url = null;
    this.release();
    this.img.removeAttribute("src");
  }

  release() {
    if (this.blob) URL.revokeObjectURL(this.blob);
    this.blob = null;
  }
}

/** Blob URLs of images that never change (a snapshot's own URL), for lists redrawn often. */
export class ImageCache {
  constructor() {
    this.blobs = new Map(); // API URL -> promise of a blob: URL
  }

  /** Show the image at `url` in `img`: its URL without a key, else a cached blob URL. */
  show(img, url) {
    if (!apiKey()) {
      img.src = url;
      return;
    }
    if (!this.blobs.has(url)) {
      const loading = fetchImage(url);
      loading.catch(() => this.blobs.delete(url)); // tried again at the next redraw
      this.blobs.set(url, loading);
    }
    this.blobs.get(url).then(
      (blob) => {
        img.src = blob;
      },
      () => {},
    );
  }

  /** Revoke the blob URLs of the images not in `urls` (those no longer on the page). */
  keepOnly(urls) {
    const kept = new Set(urls);
    for (const [url, loading] of this.blobs) {
      if (kept.has(url)) continue;
      this.blobs.delete(url);
      loading.then((blob) => URL.revokeObjectURL(blob), () => {});
    }
  }
}
