// Draws the Plotly figures the server built (apps/experiments/charts.py). Each `.plot[data-figure]`
// names a <script type="application/json"> holding its figure. Parts of a page that htmx swaps in
// (the live pipeline view) are drawn again after each swap.
(function () {
  "use strict";
  var config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  function draw(root) {
    (root || document).querySelectorAll(".plot[data-figure]").forEach(function (element) {
      if (element.dataset.drawn) return;
      var source = document.getElementById(element.dataset.figure);
      if (!source) return;
      element.dataset.drawn = "1";
      var figure = JSON.parse(source.textContent);
      Plotly.newPlot(element, figure.data, figure.layout, config);
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.body.addEventListener("htmx:afterSettle", function (event) { draw(event.target); });
})();
