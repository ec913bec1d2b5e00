// The chat-toolbar sidebar (bot/templates/toolbar.html, bot/broadcast/toolbar.py): wx.config and
// wx.agentConfig (getCurExternalChat and sendChatMessage need the app's identity), getContext to check
// the page was opened from a group's toolbar (entry `group_chat_tools`), getCurExternalChat for the
// group's chatId, then the group's content from the bot (same origin, the session cookie). A tap sends
// it with sendChatMessage (bot/static/chat_message.js) and records it (CSRF token in a header).
// Everything from the server is set with textContent: nothing it says can become markup.
(function () {
  var main = document.querySelector('main');
  var js = JSON.parse(document.getElementById('jsapi').textContent);
  function $(id) { return document.getElementById(id); }
  function say(text, cls) {
    var m = $('message');
    m.textContent = text; m.className = cls || 'note'; m.hidden = false;
    $('status').hidden = true;
  }
  if (main.getAttribute('data-wecom') === '1' && !js) {   // inside WeCom, but WeCom gave the bot no ticket
    say('暂时连不上企业微信（JS-SDK 签名失败），请稍后重新打开本页。', 'error');
    return;
  }
  if (typeof wx === 'undefined' || !js) {          // a plain browser
    $('status').hidden = true;
    $('outside').hidden = false;
    return;
  }
  var LABELS = {image: '图片', video: '视频', file: '文件', link: '链接', miniprogram: '小程序',
                unavailable: '附件暂不可用'};

  function request(method, url, body, done) {
    var x = new XMLHttpRequest();
    x.open(method, url);
    x.setRequestHeader('Accept', 'application/json');
    if (body) {
      x.setRequestHeader('Content-Type', 'application/json');
      x.setRequestHeader('X-CSRF-Token', main.getAttribute('data-csrf'));
    }
    x.onload = function () {
      var data = null;
      try { data = JSON.parse(x.responseText); } catch (e) { /* not JSON: said below */ }
      if (!data) { say('服务器没有正常回应（HTTP ' + x.status + '），请稍后重新打开。', 'error'); return; }
      if (x.status !== 200) { say(data.error || ('出错了（HTTP ' + x.status + '）'), 'error'); return; }
      done(data);
    };
    x.onerror = function () { say('网络不通，请稍后重新打开本页。', 'error'); };
    x.send(body ? JSON.stringify(body) : null);
  }

  function sentMark(at) {
    $('send').hidden = true;
    var d = $('card-done');
    d.textContent = '\u2713 已发送' + (at ? '（' + at + '）' : '');
    d.hidden = false;
  }

  function render(data) {
    $('status').hidden = true;
    $('group-name').textContent = data.group.name + ' · ' + data.store.name;
    $('card').hidden = false;
    var card = data.card;
    if (!card) {
      $('card-text').hidden = true;
      $('card-note').textContent = data.note; $('card-note').hidden = false;
      return;
    }
    $('card-kind').textContent = data.title + ' · ' + card.kind;
    $('card-text').textContent = card.text;
    var list = $('card-attachments');
    card.attachments.forEach(function (a) {
      var li = document.createElement('li');
      var body = a[a.msgtype] || {};
      var label = (LABELS[a.msgtype] || a.msgtype) + (body.title ? '：' + body.title : '');
      if (a.msgtype === 'miniprogram') label += '（本页不能代发，请在群发里发送）';
      li.textContent = label;
      list.appendChild(li);
    });
    list.hidden = card.attachments.length === 0;
    if (data.note) { $('card-note').textContent = data.note; $('card-note').hidden = false; }
    if (card.sent) { sentMark(card.tapped_at); return; }
    if (!data.sendable) return;
    var btn = $('send');
    btn.hidden = false;
    btn.addEventListener('click', function () {
      btn.disabled = true;
      window.sendCard(card, function () {
        request('POST', main.getAttribute('data-sent'), {chat_id: data.group.chat_id, day: data.day, slot: data.slot},
                function (r) { sentMark(r.tapped_at); });
      }, function (err) {
        btn.disabled = false;
        say('没有发出（' + err + '），可以再点一次。', 'error');
      });
    });
  }

  var apis = ['sendChatMessage', 'getCurExternalChat', 'getContext'];
  wx.config({beta: true, debug: false, appId: js.corpid, timestamp: js.timestamp, nonceStr: js.nonceStr,
             signature: js.signature, jsApiList: apis});
  wx.ready(function () {
    wx.agentConfig({corpid: js.corpid, agentid: js.agentid, timestamp: js.timestamp, nonceStr: js.nonceStr,
                    signature: js.agentSignature, jsApiList: apis,
                    success: function () {
      wx.invoke('getContext', {}, function (ctx) {
        if (ctx.err_msg === 'getContext:ok' && ctx.entry && ctx.entry !== 'group_chat_tools') {
          say('请在门店客户群里，从聊天工具栏打开本页（现在的入口是 ' + ctx.entry + '）。');
          return;
        }
        wx.invoke('getCurExternalChat', {}, function (res) {
          if (res.err_msg !== 'getCurExternalChat:ok' || !res.chatId) {
            say('没有识别到当前客户群：请在门店客户群里，从聊天工具栏打开本页。');
            return;
          }
          request('GET', main.getAttribute('data-api') + '?chat_id=' + encodeURIComponent(res.chatId), null, render);
        });
      });
    }, fail: function (res) {
      say('企业微信 JS-SDK 初始化失败（' + ((res && (res.errMsg || res.err_msg)) || '') + '），请稍后重新打开。', 'error');
    }});
  });
})();
