// The /docs page: Swagger UI over /openapi.json, fetched with the ?token= of this page's URL (sent
// as a bearer header, and pre-filled in Swagger UI's Authorize dialog for "Try it out").
(function () {
  "use strict";
  var token = new URLSearchParams(location.search).get("token");
  if (token) {
    var q = "?token=" + encodeURIComponent(token);
    ["chart-link", "ws-link"].forEach(function (id) {
      var a = document.getElementById(id);
      a.href = a.getAttribute("href") + q;
    });
  }
  function banner(html) {
    var el = document.getElementById("auth");
    el.innerHTML = html;
    el.hidden = false;
  }
  fetch("/openapi.json", { headers: token ? { Authorization: "Bearer " + token } : {} })
    .then(function (r) {
      if (r.status === 401) {
        banner(token
          ? "The token in this page's address was refused. Open it as <code>/docs?token=TOKEN</code> with the token " +
            "given to <code>--api-token</code> or <code>DELTAFEED_API_TOKEN</code>."
          : "This deltafeed needs its API token. Open this page as <code>/docs?token=TOKEN</code>, with the token " +
            "given to <code>--api-token</code> or <code>DELTAFEED_API_TOKEN</code>.");
        return null;
      }
      return r.json();
    })
    .then(function (spec) {
      if (!spec) return;
      var ui = SwaggerUIBundle({
        spec: spec,
        dom_id: "#swagger",
        validatorUrl: null,
        deepLinking: true,
        tryItOutEnabled: false,
        onComplete: function () {
          if (token) ui.preauthorizeApiKey("bearer", token);
          document.body.setAttribute("data-ready", "true");
        },
      });
      window.deltafeedDocs = ui;
    })
    .catch(function (e) { banner("Cannot load /openapi.json: " + String(e)); });
})();
