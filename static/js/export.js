/* The export form: show only the fields of the chosen kind of export (and the
 * OpenAI image option only with the OpenAI format). Without this script every
 * field shows, each marked with the kinds it applies to; hidden fields are still
 * sent, and the server ignores those that do not apply. */
(function () {
  "use strict";

  const form = document.getElementById("export-form");
  if (!form) {
    return;
  }
  const kind = form.querySelector("select[name=kind]");
  const openai = form.querySelector("input[name=formats][value=openai]");

  function update() {
    form.querySelectorAll("[data-kinds]").forEach(function (field) {
      field.hidden = field.dataset.kinds.split(" ").indexOf(kind.value) < 0;
    });
    form.querySelectorAll("[data-needs-format=openai]").forEach(function (field) {
      field.hidden = field.hidden || !(openai && openai.checked);
    });
  }

  kind.addEventListener("change", update);
  if (openai) {
    openai.addEventListener("change", update);
  }
  update();
})();
