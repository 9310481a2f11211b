// BoxedClaw web chat.
//
// Plain JavaScript, no framework, nothing external. Everything the agent or a user wrote is
// untrusted: it is only ever put on the page with `textContent`, never parsed as HTML.
//
// The server is the single source of truth: the page shows what the event stream
// (/api/chat/events, Server-Sent Events) says, including the user's own messages, so a
// reload or a second tab shows the same conversation.
(function () {
  'use strict';

  var MAX_BYTES = 16 * 1024;

  var scroller, messages, typing, statusEl, errorEl, form, input;
  var source = null;
  var progressEl = null;
  var cards = new Map();
  var renewDelay = 1000;
  var renewTimer = null;
  var sending = Promise.resolve();

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function nearBottom() {
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 120;
  }

  function append(node) {
    var stick = nearBottom();
    messages.appendChild(node);
    if (stick) scroller.scrollTop = scroller.scrollHeight;
  }

  function setStatus(text, state) {
    statusEl.textContent = text;
    statusEl.className = 'status ' + state;
  }

  function setTyping(on) {
    var stick = nearBottom();
    typing.hidden = !on;
    if (stick) scroller.scrollTop = scroller.scrollHeight;
  }

  function showError(text) {
    errorEl.textContent = text;
    errorEl.hidden = !text;
  }

  function addMessage(kind, text) {
    append(el('li', 'msg ' + kind, text));
  }

  function clearProgress() {
    if (progressEl) {
      progressEl.remove();
      progressEl = null;
    }
  }

  function showProgress(text) {
    if (!progressEl) {
      progressEl = el('li', 'msg msg-progress');
      append(progressEl);
    }
    progressEl.textContent = text;
  }

  function resetView() {
    messages.replaceChildren();
    progressEl = null;
    cards.clear();
    setTyping(false);
  }

  // ---- approvals ----------------------------------------------------------------------

  function setDisabled(card, disabled) {
    card.querySelectorAll('button').forEach(function (b) { b.disabled = disabled; });
  }

  function decide(id, approve, card) {
    setDisabled(card, true);
    showError('');
    post('/api/chat/decisions', { approval: id, approve: approve })
      .catch(function (err) { showError('Decision not sent: ' + err.message); })
      .finally(function () {
        // The `resolved` event removes the buttons; if the decision did not count (not an
        // approver, already decided), a notice says so and the buttons stay usable.
        setDisabled(card, false);
      });
  }

  function newCard(id) {
    var card = el('li', 'approval');
    card.setAttribute('data-approval', id);
    card.appendChild(el('p', 'approval-title', 'Approval ' + id));
    var old = cards.get(id);
    if (old) old.replaceWith(card); else append(card);
    cards.set(id, card);
    return card;
  }

  function addApproval(ev) {
    var id = String(ev.approval);
    var card = newCard(id);
    card.firstChild.textContent = 'Approval needed: ' + id;
    var minutes = Math.max(1, Math.ceil(Number(ev.expires_in_secs || 0) / 60));
    card.appendChild(el('p', 'approval-meta',
      'Requested by ' + ev.requester + ' · expires in ' + minutes + ' min'));
    card.appendChild(el('pre', 'approval-action', ev.action));
    card.appendChild(el('p', 'approval-reason', ev.reason));
    var buttons = el('div', 'approval-buttons');
    var approve = el('button', 'approve', 'Approve');
    var deny = el('button', 'deny', 'Deny');
    approve.type = 'button';
    deny.type = 'button';
    approve.addEventListener('click', function () { decide(id, true, card); });
    deny.addEventListener('click', function () { decide(id, false, card); });
    buttons.appendChild(approve);
    buttons.appendChild(deny);
    card.appendChild(buttons);
  }

  function resolveApproval(ev) {
    var id = String(ev.approval);
    // A prompt shown before this page loaded its history may be unknown: show the outcome
    // on a card of its own.
    var card = cards.get(id) || newCard(id);
    card.querySelectorAll('.approval-buttons').forEach(function (b) { b.remove(); });
    var outcome = String(ev.outcome);
    var out = card.querySelector('.approval-outcome');
    if (!out) {
      out = el('p', 'approval-outcome');
      card.appendChild(out);
    }
    out.textContent = ev.by ? outcome + ' by ' + ev.by : outcome;
    card.classList.add('resolved');
    if (/^[a-z]+$/.test(outcome)) card.classList.add('outcome-' + outcome);
  }

  // ---- events from the server -----------------------------------------------------------

  function handle(ev) {
    switch (ev.kind) {
      case 'user':
        addMessage('msg-user', ev.text);
        break;
      case 'post':
        clearProgress();
        addMessage('msg-agent', ev.text);
        setTyping(false);
        break;
      case 'typing':
        setTyping(true);
        break;
      case 'progress':
        showProgress(ev.text);
        setTyping(true);
        break;
      case 'approval':
        addApproval(ev);
        setTyping(false);
        break;
      case 'resolved':
        resolveApproval(ev);
        break;
      case 'notice':
        addMessage('msg-notice', ev.text);
        setTyping(false);
        break;
      default:
        break;
    }
  }

  function connect() {
    if (source) source.close();
    var es = new EventSource('/api/chat/events');
    var fresh = true;
    source = es;
    setStatus('connecting…', 'connecting');
    es.onopen = function () {
      // A new stream replays the whole history: start from a clean view. (Reconnects of
      // the same stream send Last-Event-ID and get only what they missed.)
      if (fresh) {
        resetView();
        fresh = false;
      }
      renewDelay = 1000;
      setStatus('connected', 'connected');
    };
    es.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev && typeof ev === 'object') handle(ev);
    };
    es.onerror = function () {
      if (es !== source) return;
      setStatus('reconnecting…', 'reconnecting');
      // CLOSED: the server refused the stream (no session any more, or shutting down).
      // The browser does not retry that by itself: get a session again, then reconnect.
      if (es.readyState === EventSource.CLOSED) scheduleRenew();
    };
  }

  function scheduleRenew() {
    if (renewTimer) return;
    renewTimer = setTimeout(function () {
      renewTimer = null;
      renewSession().catch(function () {
        renewDelay = Math.min(renewDelay * 2, 30000);
        scheduleRenew();
      });
    }, renewDelay);
  }

  // Loading the page again sets a new session cookie when the old session is gone.
  function renewSession() {
    return fetch('/', { credentials: 'same-origin', cache: 'no-store' }).then(function (res) {
      if (!res.ok) throw new Error('HTTP ' + res.status);
      connect();
    });
  }

  // ---- posting --------------------------------------------------------------------------

  function post(path, body, retried) {
    return fetch(path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      credentials: 'same-origin',
      body: JSON.stringify(body)
    }).then(function (res) {
      if (res.status === 401 && !retried) {
        return renewSession().then(function () { return post(path, body, true); });
      }
      return res.json().catch(function () { return {}; }).then(function (answer) {
        if (!res.ok) throw new Error(answer.error || ('HTTP ' + res.status));
        return answer;
      });
    });
  }

  function send() {
    var text = input.value;
    if (!text.trim()) return;
    if (new TextEncoder().encode(text).length > MAX_BYTES) {
      showError('That message is too long (at most 16 KiB).');
      return;
    }
    input.value = '';
    showError('');
    // One post at a time, so messages arrive in the order they were sent.
    sending = sending.then(function () {
      return post('/api/chat/messages', { text: text }).catch(function (err) {
        if (!input.value) input.value = text;
        showError('Not sent: ' + err.message);
      });
    });
  }

  function start() {
    scroller = document.getElementById('scroller');
    messages = document.getElementById('messages');
    typing = document.getElementById('typing');
    statusEl = document.getElementById('status');
    errorEl = document.getElementById('error');
    form = document.getElementById('composer');
    input = document.getElementById('input');

    form.addEventListener('submit', function (e) {
      e.preventDefault();
      send();
      input.focus();
    });
    input.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        send();
      }
    });
    connect();
    input.focus();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
