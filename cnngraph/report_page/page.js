
"use strict";
window.addEventListener("error", (e) => { document.body.dataset.error = String(e.message); });
const DATA = JSON.parse(document.getElementById("cnngraph-data").textContent);
const S = DATA.style;
const NS = "http://www.w3.org/2000/svg";
let graph = null;

function make(tag, attrs = {}, text = undefined, ns = null) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const svg = (tag, attrs, text) => make(tag, attrs, text, NS);

function si(value, unit = "") {
  for (const [scale, prefix] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]])
    if (value >= scale) return (value / scale).toFixed(2) + " " + prefix + unit;
  return String(value) + (unit ? " " + unit : "");
}

function fit(text, width) {  // cut a label to the box, by the same character width as the layout
  const n = Math.floor((width - 2 * S.pad) / S.char);
  return text.length > n ? text.slice(0, Math.max(n - 1, 1)) + "\u2026" : text;
}

function drawEdge(parent, edge) {
  // each leg is an S-curve with vertical ends: straight down when both ends share an x
  const p = edge.points;
  let d = `M${p[0][0]},${p[0][1]}`;
  for (let i = 1; i < p.length; i++) {
    const [x0, y0] = p[i - 1], [x1, y1] = p[i], ym = (y0 + y1) / 2;
    d += ` C${x0},${ym} ${x1},${ym} ${x1},${i === p.length - 1 ? y1 - 2 : y1}`;
  }
  const group = svg("g", {class: "edge", "data-from": edge.from, "data-to": edge.to});
  group.append(svg("path", {d: d, "marker-end": "url(#arrow)"}),
               svg("text", {x: edge.label_x, y: edge.label_y + 3, "text-anchor": edge.label_anchor}, edge.label));
  parent.append(group);
}

function drawNode(n) {
  const kind = n.fused ? "fused" : n.op === "input" ? "input" : "plain";
  const g = svg("g", {class: "node " + kind, "data-node": n.node, transform: `translate(${n.x},${n.y})`,
                      tabindex: "0"});
  g.append(svg("title", {}, n.node + (n.layers.length ? " (" + n.layers.join(", ") + ")" : "")));
  g.append(svg("rect", {class: "box", width: n.w, height: n.h, rx: 6}));
  let y = S.pad + S.line - 4;
  const line = (text, cls) => { g.append(svg("text", {x: S.pad, y: y, class: cls}, fit(text, n.w))); y += S.line; };
  if (n.fused) {
    line("fused " + n.op, "name");
    for (const m of n.members) {
      g.append(svg("rect", {class: "chip", x: S.pad, y: y - S.line + 6, width: n.w - 2 * S.pad,
                            height: S.chip - 3, rx: 3}));
      g.append(svg("text", {x: 2 * S.pad, y: y + 2}, fit(m.layer + " \u00b7 " + m.op, n.w - 2 * S.pad)));
      y += S.chip;
    }
  } else {
    line(n.node, "name");
    line(n.op, "");
  }
  line(n.shape.join("x") + (n.time ? ` \u00b7 ${n.time.ms.toFixed(3)} ms (${(100 * n.time.share).toFixed(0)}%)` : ""),
       "dim");
  g.addEventListener("click", () => select(n.node));
  g.addEventListener("keydown", (e) => { if (e.key === "Enter") select(n.node); });
  return g;
}

function draw(kind) {
  graph = DATA.graphs[kind];
  const root = document.getElementById("graph");
  root.replaceChildren();
  for (const [k, v] of Object.entries({width: graph.width, height: graph.height,
                                       viewBox: `0 0 ${graph.width} ${graph.height}`})) root.setAttribute(k, v);
  const defs = svg("defs");
  const marker = svg("marker", {id: "arrow", viewBox: "0 0 8 8", refX: 7, refY: 4, markerWidth: 7,
                                markerHeight: 7, orient: "auto"});
  marker.append(svg("path", {d: "M0,0 L8,4 L0,8 z", fill: "#8c959f"}));
  defs.append(marker);
  const edges = svg("g", {class: "edges"}), nodes = svg("g", {class: "nodes"});
  for (const e of graph.edges) drawEdge(edges, e);
  for (const n of graph.nodes) nodes.append(drawNode(n));
  root.append(defs, edges, nodes);
  for (const b of document.querySelectorAll(".toggle button"))
    b.setAttribute("aria-pressed", String(b.dataset.kind === kind));
  document.getElementById("summary").textContent = summary(graph);
  document.getElementById("details").replaceChildren(make("p", {class: "hint"},
    "Click a node to see its parameters, costs, fusion decisions and generated kernels."));
  document.body.dataset.graph = kind;
}

function summary(g) {
  const t = g.totals, parts = [`${kindName(g)} graph`, `${t.nodes} nodes`, `${t.params.toLocaleString()} params`,
                               si(t.flops, "FLOPs")];
  if (g.memory) parts.push(`peak activations ${si(g.memory.planned_bytes, "B")} with memory planning, ` +
                           `${si(g.memory.unplanned_bytes, "B")} without`);
  const fusedCount = g.fusion.filter((e) => e.fused).length;
  parts.push(g.optimized ? (g.fusion.length ? `${fusedCount} of ${g.fusion.length} fusion opportunities taken`
                                            : "no fusion opportunities") : "not optimized");
  return parts.join(" \u00b7 ");
}
const kindName = (g) => g.optimized ? "optimized" : "raw";

function select(name) {
  const n = graph.nodes.find((m) => m.node === name);
  if (!n) return;
  for (const e of document.querySelectorAll(".node.selected")) e.classList.remove("selected");
  for (const e of document.querySelectorAll(".node"))
    if (e.getAttribute("data-node") === name) e.classList.add("selected");
  document.getElementById("details").replaceChildren(...details(n));
  document.body.dataset.selected = name;
}

function details(n) {
  const out = [make("h2", {}, n.node)];
  const facts = make("dl");
  const offset = n.offset_bytes === null ? "not planned" : n.offset_bytes.toLocaleString() + " B";
  for (const [k, v] of [["op", n.op], ["layers", n.layers.join(", ") || "(network input)"], ["spec path", n.path],
                        ["inputs", n.inputs.join(", ") || "-"], ["output shape", n.shape.join(" x ")],
                        ["params", n.params.toLocaleString()], ["FLOPs", n.flops.toLocaleString()],
                        ["bytes read", n.bytes_read.toLocaleString()],
                        ["bytes written", n.bytes_written.toLocaleString()], ["arena offset", offset],
                        ...(n.time ? [["time", `${n.time.ms.toFixed(3)} ms on ${n.time.device}, ` +
                                               `${(100 * n.time.share).toFixed(1)}% of the total`]] : [])])
    facts.append(make("dt", {}, k), make("dd", {}, v));
  out.push(facts, make("h3", {}, "Parameters (spec)"));
  for (const [layer, params] of Object.entries(n.params_by_layer))
    out.push(make("h4", {}, layer), make("pre", {class: "params"}, JSON.stringify(params, null, 2)));
  out.push(make("h3", {}, "Fusion decisions"));
  const list = make("ul");
  for (const e of n.fusion) {
    const why = e.fused ? "" : `: ${e.reason} (${DATA.reasons[e.reason] || "see the fusion pass"})`;
    list.append(make("li", {class: e.fused ? "fusion-yes" : "fusion-no"},
                     `${e.fused ? "fused" : "not fused"} ${e.pattern} [${e.layers.join(", ")}]${why}`));
  }
  out.push(n.fusion.length ? list : make("p", {class: "hint"}, graph.optimized ? "none involve this node"
                                                                               : "the raw graph is not optimized"));
  out.push(make("h3", {}, "Generated CUDA kernels"));
  if (graph.kernel_error) out.push(make("p", {class: "hint"}, "not lowered: " + graph.kernel_error));
  else if (!n.kernels.length) out.push(make("p", {class: "hint"}, n.op === "input" ? "none (network input)" : "none (an alias of its input: no kernel)"));
  n.kernels.forEach((k, i) => {
    const box = make("details", i === 0 ? {open: ""} : {});
    box.append(make("summary", {}, `${k.kernel}  grid [${k.grid}]  block [${k.block}]`),
               make("pre", {class: "kernel", "data-kernel": k.kernel}, k.source));
    out.push(box);
  });
  return out;
}

for (const b of document.querySelectorAll(".toggle button")) b.addEventListener("click", () => draw(b.dataset.kind));
document.getElementById("title").textContent = DATA.name;
const wanted = new URLSearchParams(location.hash.slice(1));
draw(DATA.graphs[wanted.get("graph")] ? wanted.get("graph") : DATA.initial);
if (wanted.get("node")) select(wanted.get("node"));
document.body.dataset.ready = "1";
