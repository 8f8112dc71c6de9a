// Settlement upload with progress: the file itself is the request body (no multipart), so the console
// streams it through to finance as it arrives. Without this script the form posts as multipart.
"use strict";
(function () {
  var TYPES = { csv: "text/csv", jsonl: "application/x-ndjson", ndjson: "application/x-ndjson" };

  function announce(text) {
    var region = document.getElementById("announcer");
    if (region) { region.textContent = text; }
  }

  function upload(event) {
    var form = event.target;
    var input = form.querySelector('input[type="file"]');
    var file = input && input.files && input.files[0];
    var suffix = file ? file.name.split(".").pop().toLowerCase() : "";
    if (!file || !TYPES[suffix]) { return; } // the server explains what is wrong
    event.preventDefault();
    var progress = document.getElementById("upload-progress");
    var result = document.getElementById("import-result");
    var button = form.querySelector('button[type="submit"]');
    var token = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("action"));
    xhr.setRequestHeader("Content-Type", TYPES[suffix]);
    xhr.setRequestHeader("X-CSRF-Token", token);
    xhr.setRequestHeader("HX-Request", "true"); // answer with the result fragment only
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) {
        progress.value = Math.round((e.loaded / e.total) * 100);
        progress.textContent = progress.value + " %";
      }
    };
    xhr.upload.onload = function () { announce("File sent; importing."); };
    xhr.onload = function () {
      progress.value = 100;
      result.innerHTML = xhr.responseText;
      button.disabled = false;
      announce(xhr.status < 300 ? "Import finished." : "Import refused: see the rows listed.");
    };
    xhr.onerror = function () {
      button.disabled = false;
      result.textContent = "The upload failed: the connection broke. Nothing was imported; try again.";
      announce(result.textContent);
    };
    button.disabled = true;
    progress.value = 0;
    announce("Uploading " + file.name);
    xhr.send(file);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload-form");
    if (form) { form.addEventListener("submit", upload); }
  });
})();
