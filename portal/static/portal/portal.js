// Portal scripts: progressive enhancement only; every page works without.
(function () {
  "use strict";

  function tickAll() {
    var all = document.getElementById("select-all");
    if (!all) { return; }
    all.addEventListener("change", function () {
      document.querySelectorAll(".row-check").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }

  var LABELS = {
    queued: "Queued", running: "Running", succeeded: "Succeeded",
    failed: "Failed", cancelled: "Cancelled"
  };

  function pollJob() {
    var root = document.querySelector("[data-job-url]");
    if (!root) { return; }
    var url = root.getAttribute("data-job-url");
    var bar = root.querySelector("progress");
    var status = root.querySelector('[data-field="status"]');
    var message = root.querySelector('[data-field="message"]');
    var download = root.querySelector(".job-download");
    var last = null;

    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (job) {
          if (!job) { return; }
          if (job.percent !== null) { bar.value = job.percent; }
          if (job.status !== last) {
            status.textContent = LABELS[job.status] || job.status;
            last = job.status;
          }
          message.textContent = job.message ? " — " + job.message : "";
          if (job.status === "succeeded") {
            bar.value = 100;
            if (job.download_url) {
              var link = download.querySelector('[data-field="download"]');
              if (link && job.result && job.result.filename) {
                link.textContent = "Download " + job.result.filename;
              }
              download.hidden = false;
            }
          }
          if (job.status === "queued" || job.status === "running") {
            window.setTimeout(tick, 1000);
          }
        })
        .catch(function () { window.setTimeout(tick, 3000); });
    }
    tick();
  }

  // SAML HTTP-POST binding: forms marked data-autosubmit post themselves
  // (the button stays for browsers without script).
  function autoSubmit() {
    var form = document.querySelector("form[data-autosubmit]");
    if (form) { form.submit(); }
    var link = document.querySelector("a[data-autonavigate]");
    if (link) { window.location.assign(link.href); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    tickAll();
    pollJob();
    autoSubmit();
  });
})();
