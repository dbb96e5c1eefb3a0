// Draws the Plotly figures the server built (see apps/datasets/charts.py). Each `.plot[data-figure]`
// names a <script type="application/json"> holding its figure; plots are drawn as they scroll into
// view, so a page with a chart per column stays quick.
(function () {
  "use strict";
  var config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  function draw(element) {
    if (element.dataset.drawn) return;
    element.dataset.drawn = "1";
    var figure = JSON.parse(document.getElementById(element.dataset.figure).textContent);
    Plotly.newPlot(element, figure.data, figure.layout, config);
  }

  var plots = document.querySelectorAll(".plot[data-figure]");
  if (!("IntersectionObserver" in window)) {
    plots.forEach(draw);
    return;
  }
  var observer = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) {
        observer.unobserve(entry.target);
        draw(entry.target);
      }
    });
  }, { rootMargin: "300px" });
  plots.forEach(function (element) { observer.observe(element); });
})();
