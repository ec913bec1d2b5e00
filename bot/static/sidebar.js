// The sidebar page's script (bot/templates/sidebar.html): after wx.config and wx.agentConfig, the
// group the toolbar is open in gets its 「发送到本群」 button; a tap sends the card with sendChatMessage
// and records it. What Python rendered comes in as data (JSON blocks, a data- attribute), so the
// page's CSP can forbid inline script.
(function () {
  var cards = JSON.parse(document.getElementById('cards').textContent);
  var js = JSON.parse(document.getElementById('jsapi').textContent);
  var sentUrl = document.querySelector('main').getAttribute('data-sent-url') || null;
  function markSent(chatId) {
    if (!sentUrl) { var b = document.querySelector('button.send[data-chat="' + chatId + '"]'); if (b) b.textContent = '\u2713 已发送'; return; }
    var x = new XMLHttpRequest();
    x.open('POST', sentUrl); x.setRequestHeader('Content-Type', 'application/json');
    x.onload = function () { location.reload(); };
    x.send(JSON.stringify({chat_id: chatId}));
  }
  if (typeof wx === 'undefined' || !js) return;   // outside WeCom: the forms do the job
  var apis = ['sendChatMessage', 'getCurExternalChat', 'getContext'];
  wx.config({beta: true, debug: false, appId: js.corpid, timestamp: js.timestamp, nonceStr: js.nonceStr,
             signature: js.signature, jsApiList: apis});
  wx.ready(function () {
    wx.agentConfig({corpid: js.corpid, agentid: js.agentid, timestamp: js.timestamp, nonceStr: js.nonceStr,
                    signature: js.agentSignature, jsApiList: apis, success: function () {
      wx.invoke('getCurExternalChat', {}, function (res) {
        if (res.err_msg !== 'getCurExternalChat:ok') return;
        var cur = document.querySelector('.card[data-chat="' + res.chatId + '"]');
        if (cur) { cur.classList.add('current'); cur.scrollIntoView(); }
        var btn = document.querySelector('button.send[data-chat="' + res.chatId + '"]');
        if (btn) btn.hidden = false;   // sendChatMessage sends into the chat the toolbar is open in
      });
    }});
  });
  document.querySelectorAll('button.send').forEach(function (btn) {
    btn.addEventListener('click', function () {
      var card = cards.filter(function (c) { return c.chat_id === btn.dataset.chat; })[0];
      window.sendCard(card, function () { markSent(card.chat_id); });   // bot/static/chat_message.js
    });
  });
})();
