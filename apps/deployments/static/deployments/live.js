// The forms outside the live part of a deployment's page (scale, roll out) post the generation their change is
// based on. The page shows the current state, so after each swap they take the current generation, and the
// rollout form hides while a rollout is in progress, as the server renders it.
(function () {
  "use strict";

  htmx.onLoad(function () {
    var header = document.querySelector("#deployment-live [data-generation]");
    if (!header) return;
    document.querySelectorAll("form input[name=generation]").forEach(function (input) {
      input.value = header.dataset.generation;
    });
    document.querySelectorAll("[data-hidden-during-rollout]").forEach(function (element) {
      element.hidden = header.dataset.rolloutActive === "true";
    });
  });
})();
