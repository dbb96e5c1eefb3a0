// Draws the Plotly figures the server built (apps/deployments/charts.py). Each `.plot[data-figure]` names a
// <script type="application/json"> holding its figure.
(function () {
  "use strict";
  var config = { responsive: true, displaylogo: false, displayModeBar: false };
  document.querySelectorAll(".plot[data-figure]").forEach(function (element) {
    var figure = JSON.parse(document.getElementById(element.dataset.figure).textContent);
    Plotly.newPlot(element, figure.data, figure.layout, config);
  });
})();
