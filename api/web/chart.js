// A small line chart of the losses against the iteration, log-scale y axis, drawn on a <canvas>:
// legend, axes, a few labels. Own code rather than a library: the page loads nothing from
// elsewhere and needs no build step. `data-points` on the canvas says how many points it holds.

const SERIES = [
  { key: "total", label: "total", color: "#2563eb" },
  { key: "content", label: "content", color: "#16a34a" },
  { key: "style", label: "style", color: "#db2777" },
];
const PAD = { left: 56, right: 22, top: 30, bottom: 34 };
const FONT = "12px system-ui, sans-serif";

/** 1, 2 or 5 times a power of ten, near `raw`: tick steps people read easily. */
function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return power * (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10);
}

function decadeLabel(exponent) {
  return exponent >= -3 && exponent <= 4 ? String(10 ** exponent) : `1e${exponent}`;
}

export function shortNumber(value) {
  if (!Number.isFinite(value)) return "–";
  const size = Math.abs(value);
  return value !== 0 && (size < 1e-3 || size >= 1e5) ? value.toExponential(2) : value.toPrecision(3);
}

export class LossChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.points = [];
    this.xMax = 1;
    this.pending = false;
    // Redraw at the new size when the layout changes (the canvas is as wide as its column).
    new ResizeObserver(() => this.schedule()).observe(canvas);
  }

  /** points: [{iteration, total, content, style}] sorted; xMax: the job's total iterations. */
  update(points, xMax) {
    this.points = points;
    this.xMax = Math.max(1, xMax || 1, points.at(-1)?.iteration || 1);
    this.canvas.dataset.points = String(points.length);
    const last = points.at(-1);
    const values = last && SERIES.map((s) => `${s.label} ${shortNumber(last[s.key])}`).join(", ");
    const label = last ? `Losses at iteration ${last.iteration}: ${values}` : "No losses yet";
    this.canvas.setAttribute("aria-label", label);
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  /** The y range in decades: zeros and tiny values are clamped to the smallest positive one. */
  yRange() {
    let min = Infinity;
    let max = 0;
    for (const p of this.points) {
      for (const { key } of SERIES) {
        const v = p[key];
        if (v > 0 && Number.isFinite(v)) {
          min = Math.min(min, v);
          max = Math.max(max, v);
        }
      }
    }
    if (max === 0) return { floor: 1e-12, lo: -12, hi: -11 };
    const lo = Math.floor(Math.log10(min));
    const hi = Math.max(Math.ceil(Math.log10(max)), lo + 1);
    return { floor: min, lo, hi };
  }

  draw() {
    const canvas = this.canvas;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return; // hidden: drawn again when it is shown (ResizeObserver)
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;
    const ink = getComputedStyle(canvas).color; // follows the page's (light or dark) text colour

    const plot = { x: PAD.left, y: PAD.top, w: width - PAD.left - PAD.right };
    plot.h = height - PAD.top - PAD.bottom;
    const { floor, lo, hi } = this.yRange();
    const xOf = (it) => plot.x + (it / this.xMax) * plot.w;
    const yOf = (v) => {
      const clamped = Math.max(Number.isFinite(v) ? v : floor, floor);
      return plot.y + plot.h - ((Math.log10(clamped) - lo) / (hi - lo)) * plot.h;
    };

    this.drawAxes(ctx, plot, ink, lo, hi, xOf);
    this.drawLegend(ctx, plot, ink);
    if (this.points.length === 0) {
      ctx.fillStyle = ink;
      ctx.textAlign = "center";
      ctx.fillText("no losses yet", plot.x + plot.w / 2, plot.y + plot.h / 2);
      return;
    }
    ctx.save();
    ctx.beginPath();
    ctx.rect(plot.x, plot.y - 2, plot.w + 2, plot.h + 4);
    ctx.clip();
    for (const { key, color } of SERIES) {
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = 1.75;
      if (this.points.length === 1) {
        const p = this.points[0];
        ctx.beginPath();
        ctx.arc(xOf(p.iteration), yOf(p[key]), 3, 0, 2 * Math.PI);
        ctx.fill();
        continue;
      }
      ctx.beginPath();
      this.points.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, xOf(p.iteration), yOf(p[key])));
      ctx.stroke();
    }
    ctx.restore();
  }

  drawAxes(ctx, plot, ink, lo, hi, xOf) {
    ctx.strokeStyle = ink;
    ctx.fillStyle = ink;
    ctx.lineWidth = 1;
    // y: one label per decade, fewer when there are many decades; none before there is data
    const every = this.points.length ? Math.ceil((hi - lo) / 6) : Infinity;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let e = lo; e <= hi; e += every) {
      const y = plot.y + plot.h - ((e - lo) / (hi - lo)) * plot.h;
      ctx.globalAlpha = 0.15;
      ctx.beginPath();
      ctx.moveTo(plot.x, y);
      ctx.lineTo(plot.x + plot.w, y);
      ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.fillText(decadeLabel(e), plot.x - 6, y);
    }
    // x: about five round iteration numbers
    const step = niceStep(this.xMax / 5);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let it = 0; it <= this.xMax + 1e-9; it += step) {
      ctx.fillText(String(it), xOf(it), plot.y + plot.h + 5);
    }
    ctx.fillText("iteration", plot.x + plot.w / 2, plot.y + plot.h + 19);
    ctx.beginPath();
    ctx.moveTo(plot.x, plot.y);
    ctx.lineTo(plot.x, plot.y + plot.h);
    ctx.lineTo(plot.x + plot.w, plot.y + plot.h);
    ctx.stroke();
  }

  drawLegend(ctx, plot, ink) {
    const last = this.points.at(-1);
    let x = plot.x;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    for (const { key, label, color } of SERIES) {
      ctx.fillStyle = color;
      ctx.fillRect(x, 9, 12, 12);
      ctx.fillStyle = ink;
      const text = last ? `${label} ${shortNumber(last[key])}` : label;
      ctx.fillText(text, x + 16, 15);
      x += ctx.measureText(text).width + 34;
    }
  }
}
