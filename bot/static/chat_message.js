// What both sidebar pages (bot/templates/sidebar.html, toolbar.html) send into the chat the toolbar
// is open in: the card's text, then each attachment sendChatMessage can carry (image / video / file
// by media id, a link as `news`; doc https://developer.work.weixin.qq.com/document/path/96935),
// one wx.invoke after the other. `done` runs when all answered ok, `failed` (optional) at the first
// that did not (cancelled, no permission, ...), with WeCom's err_msg.
(function () {
  function messages(card) {
    return [{msgtype: 'text', text: {content: card.text}}].concat(card.attachments.map(function (a) {
      if (a.msgtype === 'image' || a.msgtype === 'video' || a.msgtype === 'file') {
        var m = {msgtype: a.msgtype}; m[a.msgtype] = {mediaid: a[a.msgtype].media_id}; return m; }
      if (a.msgtype === 'link') return {msgtype: 'news', news: {link: a.link.url, title: a.link.title,
                                                                desc: a.link.desc || '', imgUrl: a.link.picurl || ''}};
      return null;
    }).filter(Boolean));
  }
  window.sendCard = function (card, done, failed) {
    var msgs = messages(card);
    (function next(i) {
      if (i >= msgs.length) { done(); return; }
      var m = msgs[i]; m.enterChat = false;
      wx.invoke('sendChatMessage', m, function (res) {
        if (res.err_msg === 'sendChatMessage:ok') next(i + 1);
        else if (failed) failed(res.err_msg || '');
      });
    })(0);
  };
})();
