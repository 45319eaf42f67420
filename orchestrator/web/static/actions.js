// The dashboard's buttons: each is a form whose submit becomes a POST to the token-protected API
// (orchestrator/web/actions.py), with the token in the Authorization header.
//
// The token is kept in sessionStorage: this tab only, gone when it closes, never in a cookie (so no
// other site's page can make the browser send it) and never in a URL. Every answer is shown with
// textContent, never as markup. The page's Content-Security-Policy lets only this file run.
(function () {
  "use strict";
  var TOKEN = "orchestrator.apiToken";
  var ACTOR = "orchestrator.apiActor";
  var FLASH = "orchestrator.flash";

  function say(text, ok) {
    var out = document.getElementById("api-status");
    if (out) {
      out.textContent = text;
      out.className = ok ? "ok" : "bad";
    }
  }

  function showTokenState() {
    var state = document.getElementById("api-token-state");
    if (state) {
      var actor = sessionStorage.getItem(ACTOR);
      state.textContent = sessionStorage.getItem(TOKEN)
        ? "Token set for this tab" + (actor ? " (acting as api:" + actor + ")" : "") + "."
        : "No token set.";
    }
  }

  // "/api/apps/{app}/{env}/lock" with the form's app and env fields; those leave the body.
  function target(form, body) {
    return form.dataset.api.replace(/\{(\w+)\}/g, function (_, name) {
      var value = body[name] || "";
      delete body[name];
      return encodeURIComponent(value);
    });
  }

  function fields(form) {
    var body = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name) return;
      if (el.type === "checkbox") body[el.name] = el.checked;
      else if (el.value !== "") body[el.name] = el.value;
    });
    return body;
  }

  async function submit(form) {
    var token = sessionStorage.getItem(TOKEN);
    if (!token) {
      say("Enter the API token first (the server's ORCH_API_TOKEN).", false);
      return;
    }
    var body = fields(form);
    var url = target(form, body);
    var headers = { "Authorization": "Bearer " + token, "Content-Type": "application/json" };
    var actor = sessionStorage.getItem(ACTOR);
    if (actor) headers["X-Orchestrator-Actor"] = actor;
    try {
      var response = await fetch(url, {
        method: "POST", headers: headers, body: JSON.stringify(body), credentials: "omit",
      });
      var answer = await response.json().catch(function () { return {}; });
      if (response.ok) {
        sessionStorage.setItem(FLASH, form.dataset.done || "Done.");
        window.location.reload();
        return;
      }
      say(response.status + ": " + (answer.message || answer.error || "refused"), false);
    } catch (err) {
      say("The server did not answer: " + err, false);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var tokenForm = document.getElementById("api-token");
    if (tokenForm) {
      tokenForm.addEventListener("submit", function (ev) {
        ev.preventDefault();
        sessionStorage.setItem(TOKEN, tokenForm.elements.token.value.trim());
        sessionStorage.setItem(ACTOR, tokenForm.elements.actor.value.trim());
        tokenForm.elements.token.value = "";
        showTokenState();
        say("Token kept for this tab.", true);
      });
      tokenForm.querySelector("button.forget").addEventListener("click", function () {
        sessionStorage.removeItem(TOKEN);
        sessionStorage.removeItem(ACTOR);
        showTokenState();
        say("Token forgotten.", true);
      });
    }
    document.querySelectorAll("form[data-api]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
        submit(form);
      });
    });
    var flash = sessionStorage.getItem(FLASH);
    if (flash) {
      sessionStorage.removeItem(FLASH);
      say(flash, true);
    }
    showTokenState();
  });
})();
