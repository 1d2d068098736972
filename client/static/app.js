// Enhancements only: every page works without this script.
(function () {
  "use strict";

  // Drill buttons ask first. Without JavaScript the server asks on a page of its own; with it,
  // a dialog does, and the form says it was confirmed.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question) {
      if (!window.confirm(question)) {
        event.preventDefault();
        return;
      }
      var confirmed = form.querySelector("input[name=confirmed]");
      if (confirmed) confirmed.value = "yes";
    }
    var button = form.querySelector("button[data-busy]");
    if (button) {
      button.disabled = true;
      button.textContent = button.getAttribute("data-busy");
    }
  });

  // "5 s ago" next to every time the page shows.
  function ages() {
    var now = Date.now();
    document.querySelectorAll(".ago[data-at-ms]").forEach(function (el) {
      var secs = Math.max(0, Math.round((now - Number(el.getAttribute("data-at-ms"))) / 1000));
      el.textContent = secs < 120 ? "(" + secs + " s ago)" : secs < 7200 ? "(" + Math.round(secs / 60) + " min ago)"
        : "(" + Math.round(secs / 3600) + " h ago)";
    });
  }
  ages();
  setInterval(ages, 1000);

  // The cluster page: fetch its live part every 500 ms and swap it in when it changed.
  var live = document.getElementById("live");
  if (!live) return;
  var stamp = document.getElementById("updated");
  var last = null;
  function tick() {
    fetch("/cluster/live", { cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        if (html !== last) {
          live.innerHTML = html;
          last = html;
          ages();
        }
        if (stamp) {
          stamp.textContent = "Live: updated " + new Date().toISOString().substring(11, 19) + " UTC";
          stamp.className = "ok";
        }
      })
      .catch(function () {
        if (stamp) {
          stamp.textContent = "This client is not answering; still trying.";
          stamp.className = "bad";
        }
      })
      .then(function () {
        setTimeout(tick, 500);
      });
  }
  tick();
})();
