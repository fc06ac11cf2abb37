// The console's only script besides htmx: live streams (Server-Sent
// Events) for the queue and for diagnostic runs, and the diagnostic form's
// parameter fields. Every page works without it.
(function () {
  "use strict";

  // Ticket changes refresh the live part of the queue, at most a few
  // times a second.
  function watchTickets(el) {
    var pending = null;
    var source = new EventSource("/events/tickets");
    source.addEventListener("ticket", function () {
      if (pending) return;
      pending = setTimeout(function () {
        pending = null;
        htmx.trigger(el, "refresh");
      }, 150);
    });
    source.onerror = function () {
      // Closed for good (signed out, session expired): reload, which
      // leads to the sign-in page and back here.
      if (source.readyState === EventSource.CLOSED) window.location.reload();
    };
  }

  // A diagnostic run: progress lines, then the rendered result.
  function followRun(el) {
    var url = el.getAttribute("data-events");
    if (!url || el.getAttribute("data-following")) return;
    el.setAttribute("data-following", "1");
    var list = el.querySelector(".progress");
    var result = el.querySelector(".result");
    var heading = el.querySelector("h3");
    var source = new EventSource(url);
    source.addEventListener("progress", function (e) {
      var li = document.createElement("li");
      li.textContent = e.data;
      list.appendChild(li);
    });
    source.addEventListener("result", function (e) {
      // Server-rendered and escaped by the console's template.
      result.innerHTML = e.data;
      heading.hidden = true;
      list.hidden = true;
    });
    source.addEventListener("end", function () {
      source.close();
    });
    source.onerror = function () {
      if (source.readyState !== EventSource.CLOSED) return;
      if (!result.firstChild) result.textContent = "The connection to the console was lost.";
    };
  }

  // Shows only the parameter fields of the chosen diagnostic.
  function diagForm(form) {
    var kind = form.querySelector("select[name=kind]");
    if (!kind) return;
    function show() {
      var opt = kind.options[kind.selectedIndex];
      var wanted = (opt.getAttribute("data-params") || "").split(" ");
      form.querySelectorAll("[data-param]").forEach(function (l) {
        l.hidden = wanted.indexOf(l.getAttribute("data-param")) < 0;
      });
      var fs = form.querySelector("fieldset.params");
      if (fs) fs.hidden = wanted.join("") === "";
    }
    kind.addEventListener("change", show);
    show();
  }

  function scan(root) {
    root.querySelectorAll("[data-live=tickets]").forEach(watchTickets);
    root.querySelectorAll("[data-events]").forEach(followRun);
    root.querySelectorAll("form.diag").forEach(diagForm);
  }

  document.documentElement.classList.add("js");
  document.addEventListener("DOMContentLoaded", function () {
    scan(document);
    document.body.addEventListener("htmx:afterSwap", function (e) {
      e.detail.target.querySelectorAll("[data-events]").forEach(followRun);
    });
  });
})();
