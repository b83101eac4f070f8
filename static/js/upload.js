/* The import page: refuse, before sending a byte, an upload over the limit the
 * server enforces (SEKE_MAX_UPLOAD_MB, given in the file input's data-max-bytes).
 * The server checks again; this only spares a long upload that would be refused. */
(function () {
  "use strict";

  const form = document.getElementById("upload-form");
  const input = form && form.querySelector("input[type=file][data-max-bytes]");
  const message = document.getElementById("upload-too-large");
  if (!form || !input || !message) {
    return;
  }
  const limit = Number(input.dataset.maxBytes);
  const MIB = 1024 * 1024;

  function mib(bytes) {
    return (Math.round((bytes / MIB) * 100) / 100).toString() + " MiB";
  }

  form.addEventListener("submit", function (event) {
    const total = Array.from(input.files || []).reduce(function (sum, file) {
      return sum + file.size;
    }, 0);
    if (total <= limit) {
      message.hidden = true;
      return;
    }
    event.preventDefault();
    message.textContent =
      "The upload is " + mib(total) + ", over the limit of " + mib(limit) +
      " (SEKE_MAX_UPLOAD_MB). Import a larger set on the server with" +
      " python manage.py import_faces PATH --dataset NAME, or upload it in parts.";
    message.hidden = false;
  });
})();
