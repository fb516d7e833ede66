// Lockstep console: live updates and inline JSON checks. No framework, no build step; the
// Content-Security-Policy allows only this file as script.
"use strict";

(function () {
  // JSON fields (data, payload) say what is wrong as you type, before anything is sent.
  function checkJson(field) {
    var text = field.value.trim();
    var message = "";
    if (text !== "") {
      try {
        var value = JSON.parse(text);
        if (value === null || typeof value !== "object" || Array.isArray(value)) {
          message = "must be a JSON object, like {\"amount\": 120}";
        }
      } catch (e) {
        message = "not valid JSON: " + e.message;
      }
    }
    field.setCustomValidity(message);
    var note = field.parentNode.querySelector(".field-error");
    if (!note) {
      note = document.createElement("span");
      note.className = "field-error";
      field.parentNode.appendChild(note);
    }
    note.textContent = message;
  }

  function wireForms(root) {
    root.querySelectorAll("textarea[name=payload], textarea[name=data]").forEach(function (f) {
      f.addEventListener("input", function () {
        f.dataset.dirty = "1";
        checkJson(f);
      });
    });
    root.querySelectorAll("input, select").forEach(function (f) {
      f.addEventListener("input", function () { f.dataset.dirty = "1"; });
    });
  }

  // Someone typing in a form keeps their text: the refresh waits until they submit or leave.
  function busy(main) {
    return main.querySelector("[data-dirty]") !== null ||
      (document.activeElement && main.contains(document.activeElement) &&
       /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName));
  }

  var updates = 0;
  var pending = null;

  function refresh(main) {
    if (busy(main)) {
      show("Changed: reload to see it (you are editing a form).");
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector("main");
        if (!fresh) { return; }
        main.innerHTML = fresh.innerHTML;
        wireForms(main);
        updates += 1;
        document.body.dataset.liveUpdates = String(updates);
        show("Updated " + new Date().toLocaleTimeString());
      })
      .catch(function () { show("Could not refresh; reload the page."); });
  }

  function show(text) {
    var status = document.getElementById("live-status");
    if (!status) { return; }
    status.hidden = false;
    status.textContent = text;
  }

  document.addEventListener("DOMContentLoaded", function () {
    var main = document.querySelector("main");
    if (!main) { return; }
    wireForms(main);
    var feed = main.dataset.live;
    if (!feed || !window.EventSource) { return; }
    // The browser reconnects by itself and sends Last-Event-ID, so the feed resumes.
    var source = new EventSource(feed);
    source.addEventListener("open", function () { document.body.dataset.live = "open"; });
    source.addEventListener("change", function () {
      if (pending) { clearTimeout(pending); }
      pending = setTimeout(function () { pending = null; refresh(main); }, 250);
    });
  });
})();
