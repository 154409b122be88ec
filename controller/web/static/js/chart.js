// Small live charts: an inline SVG sparkline of the last MAX_POINTS values (0..100).

import { h, setText, svg } from "./dom.js";

const MAX_POINTS = 120;
const W = 240;
const H = 48;

export class Spark {
  constructor(title) {
    this.values = [];
    this.line = svg("polyline", { points: "", fill: "none", "stroke-width": 2, class: "spark-line" });
    this.area = svg("polygon", { points: "", class: "spark-area" });
    this.value = h("span", { class: "spark-value" }, "—");
    this.el = h("figure", { class: "spark" },
      h("figcaption", null, title, " ", this.value),
      svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" }, this.area, this.line));
  }

  push(v, label) {
    if (typeof v !== "number" || !Number.isFinite(v)) return;
    this.values.push(Math.max(0, Math.min(100, v)));
    if (this.values.length > MAX_POINTS) this.values.shift();
    setText(this.value, label || `${v.toFixed(0)}%`);
    const n = this.values.length;
    const step = W / Math.max(1, MAX_POINTS - 1);
    const x0 = W - (n - 1) * step;
    const pts = this.values.map((y, i) => `${(x0 + i * step).toFixed(1)},${(H - 2 - (y / 100) * (H - 4)).toFixed(1)}`);
    this.line.setAttribute("points", pts.join(" "));
    this.area.setAttribute("points", `${x0.toFixed(1)},${H} ${pts.join(" ")} ${W},${H}`);
  }
}
