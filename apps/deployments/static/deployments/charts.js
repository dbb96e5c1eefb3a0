// Draws the Plotly figures the server built (apps/deployments/charts.py). Each `.plot[data-figure]` names a
// <script type="application/json"> holding its figure. htmx swaps the live part of the page in while keeping
// the plot elements (hx-preserve), so a figure is redrawn in place with Plotly.react, and only when its JSON
// changed: a tab left open on an idle deployment does no drawing.
(function () {
  "use strict";
  var config = { responsive: true, displaylogo: false, displayModeBar: false };
  var drawn = new WeakMap();

  htmx.onLoad(function (root) {
    root.querySelectorAll(".plot[data-figure]").forEach(function (element) {
      var text = document.getElementById(element.dataset.figure).textContent;
      if (drawn.get(element) === text) return;
      var figure = JSON.parse(text);
      Plotly.react(element, figure.data, figure.layout, config);
      drawn.set(element, text);
    });
  });
})();
