// Draws each time series of a dashboard page with uPlot (vendor/uplot, MIT): drag to zoom, double-click
// to reset, hover for values, click a legend entry to hide or show its series. The data is the JSON the
// server put beside each chart (<script type="application/json" id="CHART-data">).
(function () {
  "use strict";
  var COLOURS = ["#1f6fb2", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490"];

  function rows(payload) {
    // risk charts carry [t, y] points per series; operator charts one shared x axis
    if (payload.x && payload.series.length && payload.series[0].values) {
      return [payload.x].concat(payload.series.map(function (s) { return s.values; }));
    }
    var xs = payload.x;
    var index = {};
    xs.forEach(function (x, i) { index[x] = i; });
    return [xs].concat(payload.series.map(function (s) {
      var ys = xs.map(function () { return null; });
      s.points.forEach(function (p) { ys[index[p[0]]] = p[1]; });
      return ys;
    }));
  }

  function draw(el) {
    var payload = JSON.parse(document.getElementById(el.id + "-data").textContent);
    var unit = el.dataset.unit || "";
    var series = [{ label: "time" }].concat(payload.series.map(function (s, i) {
      return {
        label: s.label,
        stroke: COLOURS[i % COLOURS.length],
        width: 2,
        spanGaps: true,
        points: { show: true, size: 5 },
        value: function (u, v) { return v == null ? "-" : (Math.round(v * 1000) / 1000) + (unit ? " " + unit : ""); },
      };
    }));
    var width = Math.max(320, el.clientWidth || 720);
    var plot = new uPlot(
      {
        width: width,
        height: 240,
        series: series,
        cursor: { drag: { x: true, y: false } },
        legend: { live: true },
      },
      rows(payload),
      el
    );
    el.dataset.ready = "1";
    window.addEventListener("resize", function () {
      plot.setSize({ width: Math.max(320, el.clientWidth || 720), height: 240 });
    });
  }

  document.querySelectorAll(".plot").forEach(draw);
})();
