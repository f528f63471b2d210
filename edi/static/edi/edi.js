// Employee data pages: progressive enhancement only; every form works without.
(function () {
  "use strict";

  var POLL_MS = 1000;
  var RETRY_MS = 3000;

  function formatBytes(n) {
    if (n < 1024) { return n + " B"; }
    var units = ["KB", "MB", "GB"];
    var value = n / 1024;
    var unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return (value < 10 ? value.toFixed(1) : Math.round(value)) + " " + units[unit];
  }

  function getStatus(url) {
    return fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" }
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    });
  }

  function showErrors(box, messages) {
    box.textContent = "";
    if (!messages.length) { return; }
    var div = document.createElement("div");
    div.className = "form-errors";
    div.setAttribute("role", "alert");
    messages.forEach(function (text) {
      var p = document.createElement("p");
      p.textContent = text;
      div.appendChild(p);
    });
    box.appendChild(div);
  }

  function failureMessage(status) {
    if (status === 0) { return "The upload was interrupted. Check the connection and try again."; }
    if (status === 403) { return "Your session expired or the form is stale. Reload the page and try again."; }
    if (status === 413) { return "This file is larger than the limit. Nothing was received."; }
    return "The upload failed (HTTP " + status + "). Try again.";
  }

  // The upload form: drag and drop, a bar for the transfer, then one for
  // the processing, polled every second until the file waits or is done.
  function enhanceUpload() {
    var form = document.getElementById("edi-upload");
    if (!form || !window.FormData || !window.XMLHttpRequest) { return; }
    var input = form.querySelector("input[type=file]");
    var zone = form.querySelector("[data-dropzone]");
    var chosen = form.querySelector("[data-chosen]");
    var errors = form.querySelector("[data-upload-errors]");
    var button = form.querySelector("[data-upload-button]");
    var panel = form.querySelector("[data-progress]");
    var upBar = panel.querySelector('[data-bar="upload"]');
    var upText = panel.querySelector('[data-text="upload"]');
    var procBar = panel.querySelector('[data-bar="process"]');
    var procText = panel.querySelector('[data-text="process"]');
    var maxBytes = parseInt(form.getAttribute("data-max-bytes"), 10);
    var maxSize = form.getAttribute("data-max-size");
    var dropped = null;
    var busy = false;

    function current() {
      return dropped || (input.files && input.files[0]) || null;
    }

    function describe() {
      var file = current();
      chosen.textContent = file ? "Chosen: " + file.name + " (" + formatBytes(file.size) + ")" : "";
      zone.classList.toggle("has-file", !!file);
    }

    input.addEventListener("change", function () {
      dropped = null;
      showErrors(errors, []);
      describe();
    });

    function over(event) {
      event.preventDefault();
      if (!busy) { zone.classList.add("is-over"); }
    }
    function leave() { zone.classList.remove("is-over"); }
    zone.addEventListener("dragenter", over);
    zone.addEventListener("dragover", over);
    zone.addEventListener("dragleave", leave);
    zone.addEventListener("dragend", leave);
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      leave();
      if (busy) { return; }
      var files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) { return; }
      if (files.length > 1) {
        showErrors(errors, ["Drop one file at a time."]);
        return;
      }
      dropped = files[0];
      try { input.files = files; dropped = null; } catch (ignored) { /* kept in `dropped` */ }
      showErrors(errors, []);
      describe();
      button.focus();
    });
    // A file dropped beside the zone must not replace the page.
    ["dragover", "drop"].forEach(function (name) {
      window.addEventListener(name, function (event) {
        if (!zone.contains(event.target)) { event.preventDefault(); }
      });
    });

    function setBar(bar, text, percent, message) {
      bar.value = percent;
      bar.textContent = percent + " %";
      text.textContent = message;
    }

    // While a file is on its way its options are fixed.
    function lock(locked) {
      form.querySelectorAll("input, select, button").forEach(function (field) {
        field.disabled = locked;
      });
    }

    function fail(message) {
      busy = false;
      lock(false);
      panel.hidden = true;
      showErrors(errors, [message]);
    }

    function follow(state) {
      setBar(procBar, procText, state.percent, state.phase_label + " · " + state.percent + " %");
      if (state.settled) {
        procText.textContent = state.status_label + ": opening the file…";
        window.setTimeout(function () { window.location.assign(state.url); }, 600);
        return;
      }
      window.setTimeout(function () {
        getStatus(state.status_url).then(function (next) {
          next.status_url = state.status_url;
          follow(next);
        }).catch(function () {
          procText.textContent = "Lost contact with the server; retrying…";
          window.setTimeout(function () { follow(state); }, RETRY_MS);
        });
      }, POLL_MS);
    }

    function send(file) {
      var data = new FormData(form);
      data.set("file", file, file.name);
      busy = true;
      lock(true);
      panel.hidden = false;
      setBar(upBar, upText, 0, "0 % of " + formatBytes(file.size));
      setBar(procBar, procText, 0, "Waits for the upload");
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (event) {
        if (!event.lengthComputable || !event.total) { return; }
        var percent = Math.min(100, Math.floor(event.loaded * 100 / event.total));
        var sent = Math.min(file.size, Math.round(file.size * event.loaded / event.total));
        setBar(upBar, upText, percent, percent + " % · " + formatBytes(sent) + " of " + formatBytes(file.size));
      });
      xhr.upload.addEventListener("load", function () {
        setBar(upBar, upText, 100, "100 % · " + formatBytes(file.size) + " sent");
        procText.textContent = "Storing the file safely…";
      });
      xhr.addEventListener("load", function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (ignored) { body = null; }
        if (xhr.status === 202 && body && body.status_url) {
          setBar(upBar, upText, 100, "100 % · " + formatBytes(file.size) + " received");
          follow(body);
          return;
        }
        if ((xhr.responseURL || "").indexOf("/accounts/login/") !== -1) {
          fail("Your session has ended. Sign in again (reload the page), then upload the file.");
          return;
        }
        fail(body && body.error && body.error.message ? body.error.message : failureMessage(xhr.status));
      });
      xhr.addEventListener("error", function () { fail(failureMessage(0)); });
      xhr.send(data);
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (busy) { return; }
      var file = current();
      var problems = [];
      if (!file) {
        problems.push("Choose a CSV file to upload.");
      } else if (file.size === 0) {
        problems.push("The file is empty.");
      } else if (file.size > maxBytes) {
        problems.push("This file (" + formatBytes(file.size) + ") is larger than the limit of " + maxSize + ". Nothing was sent.");
      }
      if (problems.length) {
        showErrors(errors, problems);
        input.focus();
        return;
      }
      showErrors(errors, []);
      send(file);
    });
  }

  // A file still being processed: follow it, then show its outcome.
  function followFile() {
    var root = document.querySelector("[data-edi-status-url]");
    if (!root) { return; }
    var url = root.getAttribute("data-edi-status-url");
    var bar = root.querySelector("progress");
    var phase = root.querySelector('[data-field="phase"]');
    var percent = root.querySelector('[data-field="percent"]');

    function tick() {
      getStatus(url).then(function (state) {
        bar.value = state.percent;
        phase.textContent = state.phase_label;
        percent.textContent = state.percent;
        if (state.settled) {
          window.location.replace(window.location.href);
          return;
        }
        window.setTimeout(tick, POLL_MS);
      }).catch(function () { window.setTimeout(tick, RETRY_MS); });
    }
    window.setTimeout(tick, POLL_MS);
  }

  // Apply, discard, apply anyway: one click sends one request.
  function submitOnce() {
    document.querySelectorAll("form[data-submit-once]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (form.getAttribute("data-sent")) { event.preventDefault(); return; }
        form.setAttribute("data-sent", "1");
        window.setTimeout(function () {
          document.querySelectorAll("form[data-submit-once] button").forEach(function (b) {
            b.disabled = true;
          });
        }, 0);
      });
    });
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var field = document.getElementById(button.getAttribute("data-copy"));
        var note = button.parentNode.querySelector("[data-copied]");
        function done() { if (note) { note.textContent = "Copied."; } }
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(done, function () {
            field.select();
          });
        } else {
          field.select();
          if (document.execCommand && document.execCommand("copy")) { done(); }
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    enhanceUpload();
    followFile();
    submitOnce();
    copyButtons();
  });
})();
