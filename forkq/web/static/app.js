/* forkq dashboard: confirmations, bulk selection, live charts (uPlot, vendored). */
(function () {
  "use strict";

  // Confirmation for every button that asks for it; bulk buttons need a selection.
  document.addEventListener("submit", function (ev) {
    var btn = ev.submitter;
    if (!btn) return;
    if (btn.hasAttribute("data-needs-selection")) {
      var picked = btn.form.querySelectorAll("input.pick:checked").length;
      if (!picked) { ev.preventDefault(); window.alert("Select at least one job first."); return; }
    }
    var msg = btn.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.pick").forEach(function (c) { c.checked = all.checked; });
    });
  }

  var charts = document.getElementById("charts");
  if (!charts || typeof uPlot === "undefined") return;
  var poll = parseFloat(document.body.getAttribute("data-poll")) || 5;
  var points = [];       // {t, p, f, b, e, q: {name: [size, latency]}}, oldest first
  var MAX_POINTS = 60 + Math.ceil(3600 / poll);
  var plots = {};
  var PALETTE = ["#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#00838f", "#d53f8c", "#4a5568"];

  function fromSnapshot(s) {
    var q = {};
    Object.keys(s.queues).forEach(function (n) { q[n] = [s.queues[n].size, s.queues[n].latency]; });
    return { t: s.t, p: s.processed, f: s.failed, b: s.busy, e: s.enqueued, q: q };
  }
  function width(el) { return Math.max(300, el.clientWidth - 4); }

  function draw(id, series, data) {
    var el = document.getElementById(id);
    var key = id + "|" + series.map(function (s) { return s.label; }).join(",");
    var p = plots[id];
    if (p && p.key === key) { p.plot.setData(data); return; }
    if (p) p.plot.destroy();
    var opts = { width: width(el), height: 220, series: [{}].concat(series),
                 scales: { x: { time: true } }, axes: [{}, { size: 60 }], legend: { live: true } };
    plots[id] = { key: key, plot: new uPlot(opts, data, el) };
  }

  function line(label, i) { return { label: label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false }; }

  function render() {
    var ts = [], rp = [], rf = [], busy = [], enq = [];
    for (var i = 0; i < points.length; i++) {
      var pt = points[i];
      ts.push(pt.t);
      busy.push(pt.b); enq.push(pt.e);
      if (i === 0) { rp.push(null); rf.push(null); continue; }
      var prev = points[i - 1], dt = pt.t - prev.t;
      var dp = pt.p - prev.p, df = pt.f - prev.f;
      rp.push(dt > 0 && dp >= 0 ? dp / dt : null);
      rf.push(dt > 0 && df >= 0 ? df / dt : null);
    }
    draw("chart-rate", [line("processed/s", 0), line("failed/s", 1)], [ts, rp, rf]);
    draw("chart-busy", [line("busy", 2), line("enqueued", 0)], [ts, busy, enq]);
    // The biggest queues of the latest point, at most 8 lines per chart.
    var last = points.length ? points[points.length - 1].q : {};
    var names = Object.keys(last).sort(function (a, b) { return last[b][0] - last[a][0] || (a < b ? -1 : 1); }).slice(0, 8);
    var sizes = [ts], lats = [ts];
    names.forEach(function (n) {
      sizes.push(points.map(function (pt) { return pt.q[n] ? pt.q[n][0] : null; }));
      lats.push(points.map(function (pt) { return pt.q[n] ? pt.q[n][1] : null; }));
    });
    draw("chart-qsize", names.map(line), sizes);
    draw("chart-qlat", names.map(line), lats);
  }

  var days = [];
  function drawDays() {
    var ts = [], p = [], f = [];
    days.forEach(function (d) { ts.push(Date.parse(d[0] + "T00:00:00Z") / 1000); p.push(d[1]); f.push(d[2]); });
    var bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
    draw("chart-days", [
      { label: "processed", stroke: PALETTE[0], fill: "rgba(43,108,176,0.35)", paths: bars },
      { label: "failed", stroke: PALETTE[1], fill: "rgba(197,48,48,0.45)", paths: bars }], [ts, p, f]);
  }

  function setText(id, v) { var el = document.getElementById(id); if (el) el.textContent = Number(v).toLocaleString("en-US"); }

  function tick() {
    fetch(charts.getAttribute("data-stats"), { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (s) {
        ["processed", "failed", "busy", "enqueued", "scheduled", "retry", "dead", "processes"].forEach(function (k) { setText("stat-" + k, s[k]); });
        setText("stat-processed-today", s.processed_today); setText("stat-failed-today", s.failed_today);
        points.push(fromSnapshot(s));
        if (days.length) {  // today's bar follows the live counters
          days[days.length - 1][1] = s.processed_today;
          days[days.length - 1][2] = s.failed_today;
          drawDays();
        }
        while (points.length > MAX_POINTS) points.shift();
        render();
      })
      .catch(function (err) { console.warn("forkq: poll failed", err); })
      .then(function () { window.setTimeout(tick, poll * 1000); });
  }

  fetch(charts.getAttribute("data-history"), { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (h) {
      points = h.samples.map(function (s) { return { t: s.t, p: s.p, f: s.f, b: s.b, e: s.e, q: s.q || {} }; });
      days = h.days;
      drawDays();
      render();
      tick();
    });
  window.addEventListener("resize", function () {
    Object.keys(plots).forEach(function (id) { var el = document.getElementById(id); plots[id].plot.setSize({ width: width(el), height: 220 }); });
  });
})();
