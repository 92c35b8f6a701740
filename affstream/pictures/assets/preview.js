/* affstream live preview: the page's script. Hand-written, no library, no network.
 *
 * Reads the JSON in <script id="affstream-live"> (labels, colours, window length; written
 * by affstream.pictures.preview.server) and listens to the server's events (/events):
 *   rows   a list of frame records {f, t, lat, faces: [{id, v, a, e, au, on}]}
 *   stats  counts, frames/s in / analysed / shown, latency (ms) of the last window
 *   frame  a new overlaid picture {seq, f, t, w, h}: fetched from /frame.jpg and drawn on
 *          the canvas, one request at a time (a newer picture replaces a waiting one)
 *   end    the session ended {text}: the page says so and stops listening
 * Per face it draws valence and arousal over the last window (SVG; valence solid, arousal
 * dashed), the current expression probabilities (bars) and the action units (present ones
 * filled). Records of a frame already seen (after a reconnection) are skipped.
 *
 * For tests the root element carries data-state (connecting, live, lost, ended),
 * data-records (records received) and data-pictures (pictures drawn).
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var config = JSON.parse(document.getElementById("affstream-live").textContent);
  var WINDOW = config.window_s;
  var MAX_FACES = 8;
  var GONE_S = 1.0; /* a face not in a record for this long is shown as not in view */
  var CHART = { width: 480, height: 150, left: 30, right: 10, top: 8, bottom: 22 };
  var root = document.documentElement;
  var statusNode = document.getElementById("status");
  var facesNode = document.getElementById("faces");
  var noFace = document.getElementById("no-face");
  var canvas = document.getElementById("video");
  var context = canvas.getContext("2d");
  var caption = document.getElementById("video-caption");
  var faces = {};
  var latest = null; /* source time (s) of the newest record */
  var lastFrame = 0;
  var records = 0;
  var ended = false;
  var renderTimer = null;
  var picture = { busy: false, want: null, drawn: 0, times: [] }; /* times: when the last pictures were drawn (ms) */

  function svg(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var key in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, key)) { node.setAttribute(key, attrs[key]); } }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function tag(name, className, parent, text) {
    var node = document.createElement(name);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function signed(v) { return (v >= 0 ? "+" : "\u2212") + Math.abs(v).toFixed(2); }
  function percent(p) { return Math.round(100 * p) + "%"; }

  function setStatus(state, text) {
    root.setAttribute("data-state", state);
    statusNode.className = "status status-" + state;
    statusNode.textContent = text;
  }

  /* ------------------------------------------------------------------ stats tiles */

  var TILES = [
    ["fps_in", "frames/s in"], ["fps_out", "frames/s analysed"], ["fps_shown", "pictures/s on this page"],
    ["frames", "frames received"], ["dropped", "dropped (newest wins)"], ["latency", "latency median \u00b7 p95"]
  ];
  var tiles = {};
  TILES.forEach(function (spec) {
    var tile = tag("div", "tile", document.getElementById("stats"));
    tile.setAttribute("data-key", spec[0]);
    tiles[spec[0]] = tag("div", "tile-value", tile, "\u2013");
    tag("div", "tile-label", tile, spec[1]);
  });

  function showStats(s) {
    tiles.fps_in.textContent = s.fps_in.toFixed(1);
    tiles.fps_out.textContent = s.fps_out.toFixed(1);
    tiles.fps_shown.textContent = shownRate().toFixed(1);
    tiles.frames.textContent = String(s.frames);
    tiles.dropped.textContent = s.dropped + (s.frames ? " (" + percent(s.dropped / s.frames) + ")" : "");
    var lat = s.latency_ms;
    tiles.latency.textContent = lat.median === null ? "\u2013" : Math.round(lat.median) + " \u00b7 " + Math.round(lat.p95) + " ms";
  }

  /* ------------------------------------------------------------------ the picture */

  function shownRate() {
    var now = performance.now(), times = picture.times;
    while (times.length && times[0] < now - 5000) { times.shift(); }
    return times.length < 2 ? 0 : (times.length - 1) / Math.max(0.001, (times[times.length - 1] - times[0]) / 1000);
  }

  function fetchPicture() {
    if (picture.busy || picture.want === null) { return; }
    var meta = picture.want;
    picture.want = null;
    picture.busy = true;
    fetch("/frame.jpg?seq=" + meta.seq, { cache: "no-store" }).then(function (response) {
      if (!response.ok) { throw new Error("frame " + response.status); }
      var frame = response.headers.get("X-Frame-Index"), time = response.headers.get("X-Frame-Time");
      return response.blob().then(function (blob) { return createImageBitmap(blob); }).then(function (bitmap) {
        if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
          canvas.width = bitmap.width;
          canvas.height = bitmap.height;
        }
        context.drawImage(bitmap, 0, 0);
        if (bitmap.close) { bitmap.close(); }
        picture.drawn += 1;
        picture.times.push(performance.now());
        root.setAttribute("data-pictures", String(picture.drawn));
        canvas.setAttribute("data-frame", frame);
        document.getElementById("video-wait").hidden = true;
        caption.textContent = "frame " + frame + " \u00b7 " + parseFloat(time).toFixed(2) + " s of the source";
      });
    }).catch(function (error) {
      caption.textContent = "a picture was lost (" + error.message + "); the next one follows";
    }).then(function () {
      picture.busy = false;
      fetchPicture();
    });
  }

  /* ------------------------------------------------------------------ per face */

  function faceCard(id) {
    var colour = config.track_colours[id % config.track_colours.length];
    var card = tag("article", "face-live");
    card.setAttribute("data-face", String(id));
    var head = tag("h2", "", card);
    tag("span", "face-chip", head).style.background = colour;
    tag("span", "", head, "face " + id);
    var state = tag("span", "face-state", head, "");
    var now = tag("div", "face-now", card);

    var vaFigure = tag("figure", "", card);
    var vaCaption = tag("figcaption", "legend", vaFigure);
    vaCaption.innerHTML = '<span><span class="va-line" style="border-color:' + config.valence_colour + '"></span>valence</span>' +
      '<span><span class="va-line dashed" style="border-color:' + config.arousal_colour + '"></span>arousal</span>' +
      "<span>last " + WINDOW + " s</span>";
    var chart = svg("svg", { viewBox: "0 0 " + CHART.width + " " + CHART.height, "class": "live-va", role: "img",
                             "aria-label": "valence and arousal of face " + id + ", last " + WINDOW + " s" }, vaFigure);
    var plotW = CHART.width - CHART.left - CHART.right, plotH = CHART.height - CHART.top - CHART.bottom;
    var y = function (v) { return CHART.top + (1 - v) / 2 * plotH; };
    [-1, -0.5, 0, 0.5, 1].forEach(function (v) {
      svg("line", { x1: CHART.left, x2: CHART.left + plotW, y1: y(v), y2: y(v), "class": v === 0 ? "zero" : "grid" }, chart);
      if (v === Math.round(v)) {
        svg("text", { x: CHART.left - 5, y: y(v) + 3.5, "text-anchor": "end", "class": "tick" }, chart).textContent =
          v < 0 ? "\u2212" + Math.abs(v) : String(v);
      }
    });
    for (var s = 0; s <= WINDOW; s += WINDOW / 6) {
      var px = CHART.left + plotW - s / WINDOW * plotW;
      svg("line", { x1: px, x2: px, y1: CHART.top + plotH, y2: CHART.top + plotH + 4, "class": "axis" }, chart);
      svg("text", { x: px, y: CHART.top + plotH + 15, "text-anchor": s === 0 ? "end" : "middle", "class": "tick" }, chart)
        .textContent = s === 0 ? "now" : "\u2212" + Math.round(s) + " s";
    }
    var valence = svg("path", { d: "", fill: "none", stroke: config.valence_colour, "stroke-width": 1.8,
                                "stroke-linejoin": "round", "stroke-linecap": "round", "class": "line-valence" }, chart);
    var arousal = svg("path", { d: "", fill: "none", stroke: config.arousal_colour, "stroke-width": 1.8,
                                "stroke-dasharray": "5 3", "stroke-linejoin": "round", "class": "line-arousal" }, chart);
    var dotV = svg("circle", { r: 3.2, fill: config.valence_colour, "class": "dot", visibility: "hidden" }, chart);
    var dotA = svg("circle", { r: 3.2, fill: config.arousal_colour, "class": "dot", visibility: "hidden" }, chart);

    var exprFigure = tag("figure", "", card);
    tag("figcaption", "", exprFigure, "expression probabilities");
    var bars = tag("div", "expr-bars", exprFigure);
    var expr = config.expr_labels.map(function (name, k) {
      var label = tag("span", "label", bars, name);
      var track = tag("span", "track", bars);
      var fill = tag("span", "fill", track);
      fill.style.background = config.expr_colours[k];
      var value = tag("span", "value", bars, "\u2013");
      return { label: label, fill: fill, value: value };
    });

    var auFigure = tag("figure", "", card);
    tag("figcaption", "", auFigure, "action units (filled: present)");
    var grid = tag("div", "au-grid", auFigure);
    var aus = config.au_labels.map(function (name) {
      var chip = tag("span", "au", grid);
      tag("span", "name", chip, name);
      var p = tag("span", "p", chip, "\u2013");
      var bar = tag("span", "bar", chip);
      return { chip: chip, p: p, bar: bar };
    });
    return {
      id: id, card: card, state: state, now: now, chart: chart, valence: valence, arousal: arousal, dotV: dotV,
      dotA: dotA, expr: expr, exprFigure: exprFigure, aus: aus, auFigure: auFigure, vaFigure: vaFigure,
      points: [], last: null, lastT: null, plotW: plotW, y: y
    };
  }

  function take(list) {
    list.forEach(function (record) {
      if (record.f <= lastFrame) { return; } /* seen before a reconnection */
      lastFrame = record.f;
      records += 1;
      latest = latest === null ? record.t : Math.max(latest, record.t);
      record.faces.forEach(function (face) {
        var state = faces[face.id];
        if (!state) {
          if (Object.keys(faces).length >= MAX_FACES) { return; }
          state = faces[face.id] = faceCard(face.id);
        }
        if (face.v !== undefined) { state.points.push([record.t, face.v, face.a]); }
        state.last = face;
        state.lastT = record.t;
      });
    });
    root.setAttribute("data-records", String(records));
    renderSoon();
  }

  function path(points, k, x, y) {
    var d = "", previous = null;
    points.forEach(function (p) {
      d += (previous === null || p[0] - previous > GONE_S ? "M" : "L") + x(p[0]).toFixed(1) + " " + y(p[k]).toFixed(1);
      previous = p[0];
    });
    return d;
  }

  function renderFace(state) {
    var from = latest - WINDOW;
    while (state.points.length && state.points[0][0] < from) { state.points.shift(); }
    var x = function (t) { return CHART.left + (t - from) / WINDOW * state.plotW; };
    state.valence.setAttribute("d", path(state.points, 1, x, state.y));
    state.arousal.setAttribute("d", path(state.points, 2, x, state.y));
    state.chart.setAttribute("data-points", String(state.points.length));
    var away = latest - state.lastT;
    var gone = away > GONE_S;
    state.card.classList.toggle("gone", gone);
    state.state.textContent = gone ? "not in view for " + away.toFixed(0) + " s" : "";
    var face = state.last, lastPoint = state.points[state.points.length - 1];
    [[state.dotV, 1], [state.dotA, 2]].forEach(function (spec) {
      if (gone || !lastPoint) { spec[0].setAttribute("visibility", "hidden"); return; }
      spec[0].setAttribute("cx", x(lastPoint[0]).toFixed(1));
      spec[0].setAttribute("cy", state.y(lastPoint[spec[1]]).toFixed(1));
      spec[0].setAttribute("visibility", "visible");
    });
    state.vaFigure.hidden = face.v === undefined && !state.points.length;

    var now = [];
    if (face.e) {
      var top = 0;
      face.e.forEach(function (p, k) { if (p > face.e[top]) { top = k; } });
      now.push('<span class="swatch" style="background:' + config.expr_colours[top] + '"></span><b>' +
               config.expr_labels[top] + "</b> " + percent(face.e[top]));
      state.expr.forEach(function (bar, k) {
        bar.fill.style.width = (100 * Math.max(0, Math.min(1, face.e[k]))).toFixed(1) + "%";
        bar.value.textContent = percent(face.e[k]);
        bar.label.classList.toggle("top", k === top);
        bar.value.classList.toggle("top", k === top);
      });
    }
    state.exprFigure.hidden = !face.e;
    if (face.v !== undefined) { now.push("valence <b>" + signed(face.v) + "</b>", "arousal <b>" + signed(face.a) + "</b>"); }
    if (face.on) {
      var present = config.au_labels.filter(function (_, k) { return face.on[k]; });
      now.push("AUs " + (present.length ? present.join(" ") : "none"));
      state.aus.forEach(function (au, k) {
        au.chip.classList.toggle("on", !!face.on[k]);
        au.p.textContent = face.au ? face.au[k].toFixed(2) : "";
        au.bar.style.width = face.au ? (100 * face.au[k]).toFixed(0) + "%" : "0";
      });
    }
    state.auFigure.hidden = !face.on;
    state.now.innerHTML = now.join('<span class="sep">\u00b7</span>');
  }

  function render() {
    renderTimer = null;
    if (latest === null) { return; }
    var ids = Object.keys(faces).map(Number).sort(function (a, b) { return a - b; });
    ids.forEach(function (id) {
      var state = faces[id];
      if (latest - state.lastT > WINDOW) { /* out of view for the whole window: forget it */
        if (state.card.parentNode) { state.card.parentNode.removeChild(state.card); }
        delete faces[id];
        return;
      }
      if (!state.card.parentNode) { insertCard(state); }
      renderFace(state);
    });
    noFace.hidden = Object.keys(faces).length > 0;
  }

  function insertCard(state) {
    var after = null;
    Array.prototype.forEach.call(facesNode.children, function (card) {
      if (after === null && Number(card.getAttribute("data-face")) > state.id) { after = card; }
    });
    facesNode.insertBefore(state.card, after);
  }

  function renderSoon() {
    if (renderTimer === null) { renderTimer = window.setTimeout(render, 200); }
  }

  /* ------------------------------------------------------------------ events */

  var events = new EventSource("/events");
  events.addEventListener("open", function () { if (!ended) { setStatus("live", "live"); } });
  events.addEventListener("error", function () {
    if (!ended) { setStatus("lost", "connection lost \u2013 retrying"); }
  });
  events.addEventListener("rows", function (event) { take(JSON.parse(event.data)); });
  events.addEventListener("stats", function (event) { showStats(JSON.parse(event.data)); });
  events.addEventListener("frame", function (event) {
    picture.want = JSON.parse(event.data);
    fetchPicture();
  });
  events.addEventListener("end", function (event) {
    var message = JSON.parse(event.data);
    ended = true;
    events.close();
    render();
    setStatus("ended", "session ended");
    var box = document.getElementById("ended");
    var text = message.text ? ": " + message.text.replace(/\.?$/, ".") : ".";
    box.textContent = "The session ended" + text + " This page no longer updates.";
    box.hidden = false;
    ["fps_in", "fps_out", "fps_shown"].forEach(function (key) { tiles[key].textContent = "\u2013"; });
  });
})();
