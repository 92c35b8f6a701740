/* affstream report: the interactive timeline. Hand-written, no library, no network.
 *
 * Reads the JSON in <script id="affstream-data"> (written by affstream.pictures.report)
 * and draws, per face, one SVG: valence/arousal lines, the expression lanes (colour per
 * class, opacity = probability; the top lane shows the most probable class) and the AU
 * heatmap (cividis). Hover shows the values under the cursor on every face; drag selects
 * a time range to zoom into; double-click or "Reset zoom" shows the whole video; a key
 * frame's "show on timeline" pins its time.
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var node = document.getElementById("affstream-data");
  var host = document.getElementById("timeline");
  if (!node || !host) { return; }
  var data = JSON.parse(node.textContent);
  var faces = data.faces;
  var edges = data.edges_s;
  var nBins = edges.length - 1;
  var full = [edges[0], edges[nBins]];
  var view = full.slice();
  var pinned = null;
  var MARGIN = { left: 92, right: 14 };
  var BANDS = { va: 110, gap: 8, lane: 11, au: 10, axis: 22 };
  var nExpr = data.expr_labels.length;
  var nAu = data.au_labels.length;

  function el(name, attrs, parent) {
    var e = document.createElementNS(SVG, name);
    for (var key in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, key)) { e.setAttribute(key, attrs[key]); } }
    if (parent) { parent.appendChild(e); }
    return e;
  }

  function hexRgb(hex) {
    return [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)];
  }

  function cividis(p) {
    var table = data.cividis;
    var v = Math.max(0, Math.min(1, p)) * (table.length - 1);
    var lo = Math.floor(v), hi = Math.min(lo + 1, table.length - 1), f = v - lo;
    var a = hexRgb(table[lo]), b = hexRgb(table[hi]);
    return [0, 1, 2].map(function (i) { return Math.round(a[i] + (b[i] - a[i]) * f); });
  }

  /* Heat strips as pictures: one pixel per bin and lane, scaled by the SVG. */
  function strip(lanes, pixel) {
    var canvas = document.createElement("canvas");
    canvas.width = nBins;
    canvas.height = lanes;
    var ctx = canvas.getContext("2d");
    var img = ctx.createImageData(nBins, lanes);
    for (var k = 0; k < lanes; k++) {
      for (var i = 0; i < nBins; i++) {
        var c = pixel(k, i), o = 4 * (k * nBins + i);
        img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = c[3];
      }
    }
    ctx.putImageData(img, 0, 0);
    return canvas.toDataURL("image/png");
  }

  var exprColours = data.expr_colours.map(hexRgb);
  faces.forEach(function (face) {
    face.exprImage = strip(nExpr + 1, function (k, i) {
      var probs = face.expr[i];
      if (!probs) { return [255, 255, 255, 0]; }
      if (k === 0) {
        var top = 0;
        for (var j = 1; j < nExpr; j++) { if (probs[j] > probs[top]) { top = j; } }
        return exprColours[top].concat([255]);
      }
      return exprColours[k - 1].concat([Math.round(255 * Math.max(0, Math.min(1, probs[k - 1])))]);
    });
    face.auImage = strip(nAu, function (k, i) {
      var probs = face.au[i];
      if (!probs) { return [242, 242, 242, 255]; }
      return cividis(probs[k]).concat([255]);
    });
  });

  function niceStep(span, count) {
    var raw = span / Math.max(1, count), power = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (raw <= steps[i] * power) { return steps[i] * power; } }
    return 10 * power;
  }

  function clock(t, step) {
    if (full[1] - full[0] >= 120) {
      var m = Math.floor(t / 60), s = t - 60 * m;
      return m + ":" + (s < 10 ? "0" : "") + s.toFixed(step < 1 ? 1 : 0);
    }
    return t.toFixed(step < 0.1 ? 2 : step < 1 ? 1 : 0);
  }

  function binAt(t) {
    var width = (full[1] - full[0]) / nBins;
    return Math.max(0, Math.min(nBins - 1, Math.floor((t - full[0]) / width)));
  }

  var charts = [];

  function render() {
    host.textContent = "";
    charts = [];
    if (!faces.length) {
      var empty = document.createElement("p");
      empty.className = "note";
      empty.textContent = "No face was found in any frame, so there is no timeline.";
      host.appendChild(empty);
      return;
    }
    var width = Math.max(420, host.clientWidth);
    faces.forEach(function (face) { charts.push(chart(face, width)); });
    drawCursor(null);
  }

  function chart(face, width) {
    var plotW = width - MARGIN.left - MARGIN.right;
    var yExpr = BANDS.va + BANDS.gap;
    var exprH = (nExpr + 1) * BANDS.lane;
    var yAu = yExpr + exprH + BANDS.gap;
    var auH = nAu * BANDS.au;
    var height = yAu + auH + BANDS.axis;
    var wrap = document.createElement("div");
    wrap.className = "face-chart";
    var heading = document.createElement("h3");
    heading.textContent = face.title;
    wrap.appendChild(heading);
    var svg = el("svg", { width: width, height: height, "class": "timeline-chart", "data-face": face.id,
                          role: "img", "aria-label": "timeline of face " + face.id });
    wrap.appendChild(svg);
    host.appendChild(wrap);
    var x = function (t) { return MARGIN.left + (t - view[0]) / (view[1] - view[0]) * plotW; };
    var clipId = "clip-" + face.id;
    var defs = el("defs", {}, svg);
    var clip = el("clipPath", { id: clipId }, defs);
    el("rect", { x: MARGIN.left, y: 0, width: plotW, height: height }, clip);
    var yVa = function (v) { return 6 + (1 - v) / 2 * (BANDS.va - 12); };

    [-1, 0, 1].forEach(function (v) {
      el("line", { x1: MARGIN.left, x2: MARGIN.left + plotW, y1: yVa(v), y2: yVa(v),
                   "class": v === 0 ? "zero" : "grid" }, svg);
      var label = el("text", { x: MARGIN.left - 6, y: yVa(v) + 4, "text-anchor": "end", "class": "tick" }, svg);
      label.textContent = v;
    });
    ["valence", "arousal"].forEach(function (name, k) {
      var label = el("text", { x: 4, y: BANDS.va / 2 - 4 + 12 * k, "class": "band-label" }, svg);
      label.textContent = name;
    });
    var plot = el("g", { "clip-path": "url(#" + clipId + ")" }, svg);
    [["valence", data.valence_colour, ""], ["arousal", data.arousal_colour, "5 3"]].forEach(function (spec) {
      var values = face[spec[0]], d = "", run = 0;
      for (var i = 0; i <= nBins; i++) {
        if (i === nBins || values[i] === null) {
          if (run === 1) { d += "l0.01 0"; } /* a lone value: the round cap draws it as a dot */
          run = 0;
          continue;
        }
        var px = x((edges[i] + edges[i + 1]) / 2), py = yVa(values[i]);
        d += (run ? "L" : "M") + px.toFixed(1) + " " + py.toFixed(1);
        run += 1;
      }
      el("path", { d: d || "M0 0", fill: "none", stroke: spec[1], "stroke-width": 1.6, "stroke-dasharray": spec[2],
                   "stroke-linecap": "round", "class": "line-" + spec[0] }, plot);
    });

    var left = x(full[0]), right = x(full[1]);
    el("image", { href: face.exprImage, x: left, y: yExpr, width: right - left, height: exprH,
                  preserveAspectRatio: "none", "class": "heat" }, plot);
    el("image", { href: face.auImage, x: left, y: yAu, width: right - left, height: auH,
                  preserveAspectRatio: "none", "class": "heat" }, plot);
    ["top"].concat(data.expr_labels).forEach(function (name, k) {
      var t = el("text", { x: MARGIN.left - 6, y: yExpr + k * BANDS.lane + BANDS.lane - 2, "text-anchor": "end",
                           "class": "lane" }, svg);
      t.textContent = name;
    });
    data.au_labels.forEach(function (name, k) {
      var t = el("text", { x: MARGIN.left - 6, y: yAu + k * BANDS.au + BANDS.au - 1, "text-anchor": "end",
                           "class": "lane" }, svg);
      t.textContent = name;
    });
    el("rect", { x: MARGIN.left, y: yExpr, width: plotW, height: exprH, "class": "frame" }, svg);
    el("rect", { x: MARGIN.left, y: yAu, width: plotW, height: auH, "class": "frame" }, svg);

    var step = niceStep(view[1] - view[0], plotW / 90);
    for (var t = Math.ceil(view[0] / step) * step; t <= view[1] + 1e-9; t += step) {
      var px = x(t);
      el("line", { x1: px, x2: px, y1: yAu + auH, y2: yAu + auH + 4, "class": "axis" }, svg);
      var label = el("text", { x: px, y: yAu + auH + 15, "text-anchor": "middle", "class": "tick" }, svg);
      label.textContent = clock(t, step);
    }
    var unit = el("text", { x: MARGIN.left - 6, y: yAu + auH + 15, "text-anchor": "end", "class": "tick" }, svg);
    unit.textContent = full[1] - full[0] >= 120 ? "time (min:s)" : "time (s)";
    data.key_moments.forEach(function (m) {
      if (m.face !== face.id || m.time_s < view[0] || m.time_s > view[1]) { return; }
      var px = x(m.time_s);
      var mark = el("path", { d: "M" + (px - 5) + " " + yExpr + "L" + (px + 5) + " " + yExpr + "L" + px + " " + (yExpr + 7) + "Z",
                              fill: data.expr_colours[m.expr], stroke: "#000", "class": "key-mark" }, svg);
      var tip = el("title", {}, mark);
      tip.textContent = "key frame: " + data.expr_labels[m.expr] + " " + Math.round(100 * m.p) + "% at " + m.time_s.toFixed(2) + " s";
    });
    var cursor = el("line", { y1: 0, y2: yAu + auH, "class": "cursor", visibility: "hidden" }, svg);
    var pin = el("line", { y1: 0, y2: yAu + auH, "class": "pin", visibility: "hidden" }, svg);
    var band = el("rect", { y: 0, height: yAu + auH, "class": "selection", visibility: "hidden" }, svg);
    var state = { face: face, svg: svg, x: x, cursor: cursor, pin: pin, band: band, plotW: plotW };
    attach(state);
    return state;
  }

  var tooltip = document.createElement("div");
  tooltip.className = "tooltip";
  tooltip.hidden = true;
  document.body.appendChild(tooltip);

  function timeAt(state, clientX) {
    var box = state.svg.getBoundingClientRect();
    var frac = (clientX - box.left - MARGIN.left) / state.plotW;
    return view[0] + Math.max(0, Math.min(1, frac)) * (view[1] - view[0]);
  }

  function describe(face, t) {
    var i = binAt(t), lines = ["<b>" + clock(t, 0.01) + " s</b> \u00b7 face " + face.id];
    if (face.expr[i] === null && face.valence[i] === null && face.au[i] === null) {
      lines.push("not in view");
      return lines.join("<br>");
    }
    if (face.valence[i] !== null) { lines.push("valence " + face.valence[i].toFixed(2) + ", arousal " + face.arousal[i].toFixed(2)); }
    if (face.expr[i]) {
      var probs = face.expr[i], top = 0;
      for (var j = 1; j < nExpr; j++) { if (probs[j] > probs[top]) { top = j; } }
      lines.push(data.expr_labels[top] + " " + Math.round(100 * probs[top]) + "%");
    }
    if (face.au[i]) {
      var on = data.au_labels.filter(function (_, k) { return face.au[i][k] >= data.au_threshold; });
      lines.push("AUs \u2265 " + data.au_threshold + ": " + (on.length ? on.join(" ") : "none"));
    }
    return lines.join("<br>");
  }

  function drawCursor(t) {
    charts.forEach(function (c) {
      if (t === null || t < view[0] || t > view[1]) { c.cursor.setAttribute("visibility", "hidden"); }
      else { c.cursor.setAttribute("x1", c.x(t)); c.cursor.setAttribute("x2", c.x(t)); c.cursor.setAttribute("visibility", "visible"); }
      if (pinned === null || pinned < view[0] || pinned > view[1]) { c.pin.setAttribute("visibility", "hidden"); }
      else { c.pin.setAttribute("x1", c.x(pinned)); c.pin.setAttribute("x2", c.x(pinned)); c.pin.setAttribute("visibility", "visible"); }
    });
  }

  var drag = null; /* {state, from}: a time range being selected */

  function attach(state) {
    state.svg.addEventListener("mousemove", function (ev) {
      var t = timeAt(state, ev.clientX);
      drawCursor(t);
      tooltip.innerHTML = describe(state.face, t);
      tooltip.hidden = false;
      tooltip.style.left = Math.min(window.innerWidth - 240, ev.pageX + 14) + "px";
      tooltip.style.top = (ev.pageY + 14) + "px";
      if (drag !== null && drag.state === state) {
        var a = state.x(Math.min(drag.from, t)), b = state.x(Math.max(drag.from, t));
        state.band.setAttribute("x", a);
        state.band.setAttribute("width", Math.max(0, b - a));
        state.band.setAttribute("visibility", "visible");
      }
    });
    state.svg.addEventListener("mouseleave", function () { drawCursor(null); tooltip.hidden = true; });
    state.svg.addEventListener("mousedown", function (ev) {
      drag = { state: state, from: timeAt(state, ev.clientX) };
      ev.preventDefault();
    });
    state.svg.addEventListener("dblclick", function () { zoom(full.slice()); });
  }

  window.addEventListener("mouseup", function (ev) {
    if (drag === null) { return; }
    var state = drag.state, t = timeAt(state, ev.clientX);
    var lo = Math.min(drag.from, t), hi = Math.max(drag.from, t);
    drag = null;
    state.band.setAttribute("visibility", "hidden");
    if (hi - lo >= 2 * (full[1] - full[0]) / nBins) { zoom([lo, hi]); }
  });

  function zoom(range) {
    view = range;
    var reset = document.getElementById("reset-zoom");
    if (reset) { reset.disabled = view[0] === full[0] && view[1] === full[1]; }
    render();
  }

  var resetButton = document.getElementById("reset-zoom");
  if (resetButton) { resetButton.addEventListener("click", function () { zoom(full.slice()); }); }

  Array.prototype.forEach.call(document.querySelectorAll("[data-time]"), function (button) {
    button.addEventListener("click", function () {
      pinned = parseFloat(button.getAttribute("data-time"));
      if (pinned < view[0] || pinned > view[1]) { view = full.slice(); render(); }
      drawCursor(null);
      host.scrollIntoView({ behavior: "smooth", block: "start" });
    });
  });

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(render, 150);
  });
  render();
  document.documentElement.setAttribute("data-timeline", "ready");
})();
