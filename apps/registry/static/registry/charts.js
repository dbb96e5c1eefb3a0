// Draws the Plotly figures the server built (apps/registry/charts.py). Each `.plot[data-figure]` names a
// <script type="application/json"> with its figure. Clicking a lineage node opens its page.
(function () {
  "use strict";
  var config = { responsive: true, displaylogo: false, displayModeBar: false };
  document.querySelectorAll(".plot[data-figure]").forEach(function (element) {
    var figure = JSON.parse(document.getElementById(element.dataset.figure).textContent);
    Plotly.newPlot(element, figure.data, figure.layout, config).then(function () {
      element.on("plotly_click", function (event) {
        var point = event.points && event.points[0];
        var url = point && point.customdata && point.customdata[1];
        if (url) { window.location.href = url; }
      });
    });
  });
})();
