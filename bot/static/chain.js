// The chain page's script (bot/templates/chain.html): the countdown, and sign-up by fetch with the
// answer shown in place. A file, not inline, so the page's CSP forbids inline script. Without
// JavaScript the form posts as it is and the server answers with the page.
(function () {
  var el = document.getElementById("countdown");
  if (el) {
    var end = Number(el.getAttribute("data-deadline")) * 1000;
    var tick = function () {
      var s = Math.max(0, Math.floor((end - Date.now()) / 1000));
      var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
      el.textContent = s ? "还剩 " + (d ? d + "天" : "") + h + "小时" + m + "分" + (s % 60) + "秒" : "已截止";
    };
    tick(); setInterval(tick, 1000);
  }
  var form = document.getElementById("order");
  if (!form || !window.fetch) return;
  var button = document.getElementById("submit");

  // The server's own words, as text: never put into the URL (the page shows no text from its URL).
  function show(text) {
    var box = document.getElementById("message");
    if (!box) {
      box = document.createElement("div");
      box.id = "message";
      var first = document.querySelector("main > section.card");
      first.parentNode.insertBefore(box, first.nextSibling);
    }
    box.className = "msg err";
    box.textContent = text;
    box.scrollIntoView({block: "nearest"});
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var data = {};
    new FormData(form).forEach(function (v, k) { data[k] = v; });
    button.disabled = true;
    fetch(form.getAttribute("action"), {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(data)})
      .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
      .then(function (res) {
        var status = res[0], body = res[1];
        if (status === 201 || status === 200) {
          location.href = location.pathname + "?g=" + encodeURIComponent(data.g || "") +
                          "&mine=" + encodeURIComponent(body.order_token);
          return;
        }
        if (typeof body.remaining === "number") document.getElementById("left").textContent = body.remaining;
        show(body.message || "提交失败，请稍后再试。");
        button.disabled = false;
      })
      .catch(function () { form.submit(); });
  });
})();
