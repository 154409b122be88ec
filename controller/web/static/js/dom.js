// Safe DOM building. Rule: text from the network only ever becomes a Text node or an
// attribute value set with setAttribute; nothing here parses HTML, and event handler
// attributes ("on...") and non-local links are refused, so a node's labels, output or
// monitor packets can never run script in an operator's browser.

const SAFE_HREF = /^(#|\/(?!\/))/; // same-document fragments and same-origin paths only

/** h("div", {class: "x", dataset: {nodeId: id}}, child, "text", [more]) -> Element */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "dataset") {
        for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
      } else if (name === "on") {
        for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
      } else if (name.toLowerCase().startsWith("on")) {
        throw new Error(`refused handler attribute ${name}`);
      } else if (name === "href" && !SAFE_HREF.test(String(value))) {
        throw new Error("refused a link outside this dashboard");
      } else if (value === true) {
        el.setAttribute(name, "");
      } else {
        el.setAttribute(name, String(value));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace el's children with the given ones. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Set el's text if it changed (cheap for live updates). */
export function setText(el, text) {
  const s = text === undefined || text === null ? "" : String(text);
  if (el.textContent !== s) el.textContent = s;
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element with numeric/text attributes only. */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.toLowerCase().startsWith("on")) throw new Error(`refused ${name}`);
    el.setAttribute(name, String(value));
  }
  for (const c of children) if (c) el.appendChild(c);
  return el;
}
