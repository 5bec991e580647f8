// A job's loss history, merged from GET /jobs/{id}/losses and live progress events in whatever
// order they arrive: one point per iteration, kept sorted by iteration.

export class LossHistory {
  constructor() {
    this.points = []; // [{iteration, total, content, style}], ascending iteration
  }

  get length() {
    return this.points.length;
  }

  /** Insert or replace the point at `iteration` (binary search: histories get long). */
  add(iteration, losses) {
    if (!Number.isFinite(iteration) || !losses) return;
    const point = { iteration, total: losses.total, content: losses.content, style: losses.style };
    let lo = 0;
    let hi = this.points.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.points[mid].iteration < iteration) lo = mid + 1;
      else hi = mid;
    }
    if (this.points[lo]?.iteration === iteration) this.points[lo] = point;
    else this.points.splice(lo, 0, point);
  }

  /** The columns of GET /jobs/{id}/losses: {iteration: [..], total: [..], content: [..], style: [..]}. */
  addColumns(columns) {
    const { iteration = [], total = [], content = [], style = [] } = columns || {};
    iteration.forEach((it, i) => this.add(it, { total: total[i], content: content[i], style: style[i] }));
  }
}
