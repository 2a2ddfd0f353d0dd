// Bastion UI: the little behaviour the pages need beyond htmx. No data is ever written as
// HTML here: text goes in through textContent, and every row comes from the server, escaped.
(function () {
  "use strict";

  // Requests htmx makes carry the session's CSRF token (the page's <body data-csrf>).
  document.addEventListener("htmx:configRequest", function (event) {
    var token = document.body.dataset.csrf;
    if (token) {
      event.detail.headers["X-CSRF-Token"] = token;
    }
  });

  // -- the span tree ------------------------------------------------------------------------

  function removeRowsBelow(row) {
    var depth = Number(row.dataset.depth);
    var next = row.nextElementSibling;
    while (next && Number(next.dataset.depth) > depth) {
      var after = next.nextElementSibling;
      next.remove();
      next = after;
    }
  }

  function toggleRow(row) {
    if (!row || row.dataset.busy) {
      return;
    }
    if (row.getAttribute("aria-expanded") === "true") {
      removeRowsBelow(row);
      row.setAttribute("aria-expanded", "false");
      return;
    }
    var tree = row.closest("[data-children-url]");
    if (!tree || typeof htmx === "undefined") {
      return;
    }
    var url = tree.dataset.childrenUrl + "?parent=" + encodeURIComponent(row.dataset.span);
    row.dataset.busy = "1";
    row.setAttribute("aria-expanded", "true");
    htmx.ajax("GET", url, { target: row, swap: "afterend" }).finally(function () {
      delete row.dataset.busy;
    });
  }

  function select(link) {
    var row = link.closest(".row");
    document.querySelectorAll(".row.selected").forEach(function (other) {
      other.classList.remove("selected");
    });
    if (row) {
      row.classList.add("selected");
    }
  }

  // -- copying and folding ------------------------------------------------------------------

  function flash(button, label) {
    var before = button.dataset.label || button.textContent;
    button.dataset.label = before;
    button.textContent = label;
    window.setTimeout(function () {
      button.textContent = before;
    }, 1200);
  }

  function copyFrom(button) {
    var box = button.closest(".copyable");
    var source = box ? box.querySelector(".copy-source") : null;
    if (!source || !navigator.clipboard) {
      flash(button, "Cannot copy here");
      return;
    }
    navigator.clipboard.writeText(source.textContent).then(
      function () { flash(button, "Copied"); },
      function () { flash(button, "Copy failed"); }
    );
  }

  function unfold(button) {
    var box = button.closest(".fold");
    if (!box) {
      return;
    }
    var folded = box.classList.toggle("folded");
    if (!button.dataset.label) {
      button.dataset.label = button.textContent;
    }
    button.textContent = folded ? button.dataset.label : "Show less";
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) {
      return;
    }
    var button = target.closest("button");
    if (button && button.classList.contains("toggle")) {
      toggleRow(button.closest(".row"));
    } else if (button && button.classList.contains("copy")) {
      copyFrom(button);
    } else if (button && button.classList.contains("unfold")) {
      unfold(button);
    } else {
      var link = target.closest("a.span-link");
      if (link) {
        select(link);
      }
    }
  });

  // -- sign-in ------------------------------------------------------------------------------

  function safeNext(value) {
    return typeof value === "string" && value.charAt(0) === "/" && value.charAt(1) !== "/" &&
      value.indexOf("\\") < 0 ? value : "/ui/";
  }

  function signIn(form) {
    var error = document.getElementById("login-error");
    var fields = new FormData(form);
    var body = {
      name: fields.get("name"),
      password: fields.get("password"),
      next: fields.get("next") || "/ui/"
    };
    function refuse(message) {
      error.textContent = message;
      error.hidden = false;
    }
    fetch(form.action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (payload) {
        if (response.ok) {
          window.location.assign(safeNext(payload.next));
        } else if (payload.error && payload.error.message) {
          refuse(payload.error.message);
        } else {
          refuse("Sign-in failed (" + response.status + ").");
        }
      });
    }).catch(function () {
      refuse("The server did not answer. Try again.");
    });
  }

  var loginForm = document.getElementById("login-form");
  if (loginForm) {
    loginForm.addEventListener("submit", function (event) {
      event.preventDefault();
      signIn(loginForm);
    });
  }

  // -- the latency chart (uPlot) ------------------------------------------------------------

  function drawCharts() {
    if (typeof uPlot === "undefined") {
      return;
    }
    document.querySelectorAll("[data-latency-chart]").forEach(function (box) {
      if (box.dataset.drawn) {
        return;
      }
      box.dataset.drawn = "1";
      var data;
      try {
        data = JSON.parse(box.dataset.latencyChart);
      } catch (problem) {
        return;
      }
      if (!data.x || data.x.length === 0) {
        return;
      }
      var options = {
        width: Math.max(320, box.clientWidth || 800),
        height: 140,
        legend: { show: false },
        scales: { x: { time: true } },
        // The table's times are UTC: the chart's axis too.
        tzDate: function (seconds) { return uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"); },
        axes: [{}, { label: "latency (ms)", size: 60 }],
        series: [
          {},
          {
            label: "latency (ms)",
            stroke: "#3d5afe",
            width: 0,
            paths: function () { return null; },
            points: { show: true, size: 6, fill: "#3d5afe" }
          }
        ]
      };
      new uPlot(options, [data.x, data.y], box);
    });
    document.querySelectorAll("[data-series-chart]").forEach(drawSeries);
  }

  // -- the dashboards' charts: one line per series, gaps where a step has no value ----------

  var PALETTE = ["#3d5afe", "#e65100", "#2e7d32", "#8e24aa", "#00838f", "#c62828"];

  function drawSeries(box) {
    if (box.dataset.drawn) {
      return;
    }
    box.dataset.drawn = "1";
    var data;
    try {
      data = JSON.parse(box.dataset.seriesChart);
    } catch (problem) {
      return;
    }
    if (!data.x || data.x.length === 0 || !data.labels || data.labels.length === 0) {
      return;
    }
    var series = [{}];
    data.labels.forEach(function (label, i) {
      series.push({
        label: label,
        stroke: PALETTE[i % PALETTE.length],
        width: 2,
        spanGaps: false,
        points: { show: data.x.length < 40, size: 5 }
      });
    });
    var options = {
      width: Math.max(240, box.clientWidth || 600),
      height: 180,
      legend: { show: true },
      scales: { x: { time: true } },
      tzDate: function (seconds) { return uPlot.tzDate(new Date(seconds * 1000), "Etc/UTC"); },
      axes: [{}, { size: 60 }],
      series: series
    };
    new uPlot(options, [data.x].concat(data.values), box);
  }

  drawCharts();
  document.addEventListener("htmx:afterSettle", drawCharts);
})();
