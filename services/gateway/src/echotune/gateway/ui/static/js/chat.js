// The chat: a composer, messages, and answers streamed over EventSource.
//
// Each answer has a request id made here and put in the EventSource URL, so the browser's own
// reconnects (with Last-Event-ID) attach to the same answer instead of starting a new one. The
// server answers a reconnect after the final event with 204, which stops EventSource; we also
// close it ourselves when `done` or `error` arrives. A message too long for a URL starts its
// answer with a POST instead; EventSource then attaches to it by request id.

import { $, h, announce, fmtMs, prefersReducedMotion } from './dom.js';
import { api, ApiError, errorFromResponse, networkError } from './api.js';
import { toast } from './toast.js';
import { renderPanel, reasonText } from './panel.js';

const MAX_REOPENS = 3;
/** Longer start URLs go as a POST: proxies refuse long request lines (nginx: 8 KB), the
 * gateway past 64 KB, and a message URL-encodes to up to 9 bytes a character. */
const MAX_URL = 4096;

/** The browser's IANA time zone, if it knows one (listening hours are shown in it). */
export function browserTimeZone() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  return zone && zone !== 'Etc/Unknown' ? zone : null;
}

/** 32 hex characters from the browser's CSPRNG (works outside secure contexts too). */
export function newRequestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

let panelCount = 0;

/** One assistant answer: its stream, its state and its element. */
class Answer {
  constructor(chat, { message, conversationId, useContext, useProfile }) {
    this.chat = chat;
    this.message = message;
    this.conversationId = conversationId;
    this.useContext = useContext;
    this.useProfile = useProfile;
    this.timeZone = browserTimeZone();
    this.rid = newRequestId();
    this.state = 'waiting'; // waiting → streaming → done | stopped | error
    this.start = null;
    this.done = null;
    this.error = null; // the stream's `error` event
    this.httpError = null; // the stream could not be opened
    this.chain = []; // retry and failover events, in order
    this.text = '';
    this.pending = '';
    this.frame = 0;
    this.lastEventId = null;
    this.reconnects = 0;
    this.reconnecting = false;
    this.reopens = 0;
    this.stopping = false;
    this.cancelOnStart = false;
    this.posted = false; // started by POST: EventSource only attaches
    this.final = false;
    this.startedAt = performance.now();
    this.clientTtftMs = null;
    this.clientTotalMs = null;
    this.el = this.render();
  }

  // --- the stream -----------------------------------------------------------------------

  url(lastEventId) {
    const query = new URLSearchParams({ request_id: this.rid });
    if (!this.posted) {
      query.set('message', this.message);
      if (this.conversationId) query.set('conversation_id', this.conversationId);
      query.set('use_context', String(this.useContext));
      query.set('use_profile', String(this.useProfile));
      if (this.timeZone) query.set('time_zone', this.timeZone);
    }
    if (lastEventId) query.set('last_event_id', lastEventId);
    return `/api/chat/stream?${query}`;
  }

  /** The start as a JSON body (the POST's request id is its X-Request-Id). */
  startBody() {
    const options = { use_context: this.useContext, use_profile: this.useProfile };
    if (this.timeZone) options.time_zone = this.timeZone;
    const body = { message: this.message, options };
    if (this.conversationId) body.conversation_id = this.conversationId;
    return body;
  }

  /** Start the answer with a POST, then attach to it: once the response begins, the answer
   * is stored and goes on without this connection (the resume window). */
  async startByPost() {
    const got = await this.fetchStream('/api/chat/stream', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Request-Id': this.rid },
      body: JSON.stringify(this.startBody()),
    });
    if (!got) return;
    const { response, controller } = got;
    if (!response.ok) {
      this.failToOpen(await errorFromResponse(response));
      return;
    }
    controller.abort();
    this.posted = true;
    this.open();
  }

  open(lastEventId = null) {
    if (!this.posted && this.url(lastEventId).length > MAX_URL) {
      this.startByPost();
      return;
    }
    const source = new EventSource(this.url(lastEventId));
    this.source = source;
    for (const type of ['start', 'delta', 'retry', 'failover', 'done']) {
      source.addEventListener(type, (event) => this.onEvent(type, event));
    }
    // `error` is both the server's final error event (a MessageEvent with data) and
    // EventSource's own connection error (a plain Event).
    source.addEventListener('error', (event) => {
      if (event instanceof MessageEvent && event.data) this.onEvent('error', event);
      else this.onConnectionError(source);
    });
    source.addEventListener('open', () => this.onOpen());
  }

  onEvent(type, event) {
    if (this.final) return;
    if (event.lastEventId) this.lastEventId = event.lastEventId;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (type === 'start') this.onStart(data);
    else if (type === 'delta') this.onDelta(data);
    else if (type === 'retry') this.onRetry(data);
    else if (type === 'failover') this.onFailover(data);
    else if (type === 'done') this.onDone(data);
    else if (type === 'error') this.onServerError(data);
  }

  onStart(data) {
    this.start = data;
    if (data.conversation_id) {
      this.conversationId = data.conversation_id;
      this.chat.adoptConversation(this, data.conversation_id);
    }
    this.setVia(data.provider, data.model);
    if (this.cancelOnStart) this.sendCancel();
    this.updatePanel();
  }

  onDelta(data) {
    if (this.clientTtftMs === null) {
      this.clientTtftMs = Math.round(performance.now() - this.startedAt);
      this.typing.hidden = true;
      this.setState('streaming');
    }
    this.text += data.delta;
    this.pending += data.delta;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (!this.pending) return;
    const stick = this.chat.nearBottom();
    this.textNode.appendData(this.pending);
    this.pending = '';
    if (stick) this.chat.scrollToEnd();
  }

  onRetry(data) {
    this.chain.push({ type: 'retry', ...data });
    this.note(
      'retry',
      `${data.provider} ${reasonText(data.reason)}; trying again in ${fmtMs(data.delay_ms)} (attempt ${data.attempt + 1})`,
    );
    this.updatePanel();
  }

  onFailover(data) {
    this.chain.push({ type: 'failover', ...data });
    let text = `${data.from_provider} ${reasonText(data.reason)}; switched to ${data.to_provider}`;
    if (data.discard_partial) {
      this.pending = '';
      this.text = '';
      this.textNode.data = '';
      text += ', starting the answer again';
    }
    this.note('failover', text);
    this.setVia(data.to_provider, data.to_model);
    this.updatePanel();
  }

  onDone(data) {
    this.done = data;
    this.finish(data.finish_reason === 'cancelled' ? 'stopped' : 'done');
    this.setVia(data.provider, data.model);
    if (data.finish_reason === 'cancelled') this.status('Stopped');
    else if (data.finish_reason === 'length') this.status('Cut short: the length limit was reached');
    else if (data.finish_reason !== 'stop') this.status(`Ended: ${reasonText(data.finish_reason)}`);
    const spoken = this.text.trim() || 'no text';
    announce(data.finish_reason === 'cancelled' ? `Answer stopped. ${spoken}` : `echotune answered: ${spoken}`);
  }

  onServerError(data) {
    this.error = data;
    this.finish('error');
    const partial = data.partial ? ' The text above is incomplete.' : '';
    this.status(`Failed: ${data.message}${partial}`);
    toast(`The answer failed: ${data.message}`, {
      detail: `${reasonText(data.code)} · request ${this.rid}`,
      action: { label: 'Retry', run: () => this.chat.retry(this) },
    });
  }

  onConnectionError(source) {
    if (this.final || source !== this.source) return;
    if (source.readyState === EventSource.CONNECTING) {
      // A network blip: the browser reconnects by itself and sends Last-Event-ID.
      if (!this.reconnecting) {
        this.reconnecting = true;
        this.reconnects += 1;
        this.note('connection', 'Connection lost; reconnecting…');
      }
      return;
    }
    // CLOSED: the server refused the stream (an HTTP error, or 204): find out why.
    source.close();
    this.diagnose();
  }

  onOpen() {
    if (this.reconnecting) {
      this.reconnecting = false;
      this.note('connection', 'Reconnected; the answer continues where it stopped.');
    }
  }

  /** A stream as fetch sees it, status included; null after a network failure (said to the
   * user). Abort the controller to drop the body. */
  async fetchStream(url, init = {}) {
    const controller = new AbortController();
    const headers = { Accept: 'text/event-stream', ...init.headers };
    const options = { ...init, headers, credentials: 'same-origin', cache: 'no-store' };
    try {
      return { response: await fetch(url, { ...options, signal: controller.signal }), controller };
    } catch {
      this.failToOpen(networkError());
      return null;
    }
  }

  /** EventSource hides HTTP statuses: ask again with fetch (same URL, same request id, so it
   * attaches to the same answer rather than starting another), then act on the status. */
  async diagnose() {
    if (this.final) return;
    const got = await this.fetchStream(this.url(this.lastEventId));
    if (!got) return;
    const { response, controller } = got;
    if (response.status === 200) {
      controller.abort();
      if (++this.reopens > MAX_REOPENS) {
        this.failToOpen(new ApiError(0, 'stream_failed', 'The answer stream keeps failing.'));
      } else {
        this.open(this.lastEventId);
      }
      return;
    }
    if (response.status === 204) {
      // It had already ended and we missed its last event.
      this.finish(this.text ? 'done' : 'error');
      this.status('The answer ended while the connection was lost.');
      return;
    }
    this.failToOpen(await errorFromResponse(response));
  }

  failToOpen(error) {
    if (this.final) return;
    this.httpError = { status: error.status, code: error.code, message: error.message, retry_after: error.retryAfter };
    this.finish('error');
    if (error.status === 401) {
      this.status('Not sent: you are signed out.');
      this.chat.app.requireLogin('Your session has ended. Sign in again, then resend your message.');
      return;
    }
    this.status(`Not sent: ${error.message}`);
    const options = { detail: error.status ? `${error.message} (HTTP ${error.status}, ${error.code})` : null };
    if (error.retryable) {
      options.action = { label: 'Retry', run: () => this.chat.retry(this) };
      options.retryAfter = error.retryAfter;
    }
    let message = 'Your message could not be sent.';
    if (error.status === 0) message = error.message;
    else if (error.status === 429) {
      message = 'Too many requests.';
      if (error.retryAfter) message += ` You can retry in ${error.retryAfter} s.`;
    } else if (error.status >= 500) message = 'echotune could not start the answer.';
    toast(message, options);
  }

  // --- stop -----------------------------------------------------------------------------

  stop() {
    if (this.final || this.stopping) return;
    this.stopping = true;
    this.status('Stopping…');
    this.sendCancel();
  }

  async sendCancel() {
    if (!this.start) {
      this.cancelOnStart = true; // the job may not exist yet: cancel once it has started
      return;
    }
    this.cancelOnStart = false;
    try {
      await api(`/api/chat/${this.rid}/cancel`, { method: 'POST' });
    } catch (error) {
      if (this.final) return;
      this.stopping = false;
      this.status('');
      if (error.status !== 401) toast(`Could not stop the answer: ${error.message}`);
    }
  }

  finish(state) {
    const stick = this.chat.nearBottom();
    this.final = true;
    this.flush();
    if (this.source) this.source.close();
    this.clientTotalMs = Math.round(performance.now() - this.startedAt);
    this.typing.hidden = true;
    this.setState(state);
    this.updatePanel();
    this.chat.answerEnded(this);
    if (stick) requestAnimationFrame(() => this.chat.scrollToEnd());
  }

  // --- the element ----------------------------------------------------------------------

  render() {
    const panelId = `panel-${++panelCount}`;
    this.textNode = document.createTextNode('');
    this.typing = h('div', { class: 'typing' },
      h('span', { class: 'visually-hidden' }, 'echotune is writing…'),
      h('span', { class: 'typing-dot', 'aria-hidden': 'true' }),
      h('span', { class: 'typing-dot', 'aria-hidden': 'true' }),
      h('span', { class: 'typing-dot', 'aria-hidden': 'true' }),
    );
    if (prefersReducedMotion()) this.typing.classList.add('still');
    this.via = h('span', { class: 'msg-via' });
    this.body = h('div', { class: 'msg-text', 'aria-busy': 'true' }, this.textNode);
    this.notes = h('ul', { class: 'msg-notes', 'aria-label': 'Delivery notes', hidden: true });
    this.statusEl = h('p', { class: 'msg-status', hidden: true });
    this.panel = h('section', { class: 'panel', id: panelId, 'aria-label': 'Details of this answer', hidden: true });
    this.toggle = h('button', {
      type: 'button', class: 'btn btn-small btn-quiet details-toggle',
      'aria-expanded': 'false', 'aria-controls': panelId,
    }, 'Details');
    this.toggle.addEventListener('click', () => this.togglePanel());
    return h('article', {
      class: 'msg msg-assistant', 'data-request-id': this.rid, 'data-state': this.state,
      'aria-label': 'echotune answer',
    },
    h('p', { class: 'msg-head' }, h('span', { class: 'msg-who' }, 'echotune'), this.via),
    this.typing, this.body, this.notes, this.statusEl,
    h('div', { class: 'msg-actions' }, this.toggle), this.panel);
  }

  setState(state) {
    this.state = state;
    this.el.dataset.state = state;
    if (this.final) this.body.setAttribute('aria-busy', 'false');
  }

  setVia(provider, model) {
    this.via.textContent = provider ? `${provider} · ${model}` : '';
  }

  note(kind, text) {
    this.notes.hidden = false;
    this.notes.append(h('li', { 'data-kind': kind }, text));
  }

  status(text) {
    this.statusEl.textContent = text;
    this.statusEl.hidden = !text;
  }

  togglePanel() {
    const open = this.panel.hidden;
    this.panel.hidden = !open;
    this.toggle.setAttribute('aria-expanded', String(open));
    if (open) renderPanel(this, this.panel);
  }

  updatePanel() {
    if (!this.panel.hidden) renderPanel(this, this.panel);
  }
}

/** The chat view. */
export class Chat {
  constructor(app) {
    this.app = app;
    this.messages = $('#messages');
    this.empty = $('#empty-chat');
    this.form = $('#composer');
    this.input = $('#message');
    this.sendButton = $('#send');
    this.stopButton = $('#stop');
    this.useContext = $('#use-context');
    this.useProfile = $('#use-profile');
    this.conversationId = null;
    this.current = null;
    this.generation = 0; // bumped by "new conversation": late events of older answers are ignored

    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    this.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && !event.altKey) {
        event.preventDefault();
        this.submit();
      }
    });
    this.stopButton.addEventListener('click', () => this.stop());
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && this.current && !$('#chat-view').hidden) {
        event.preventDefault();
        this.stop();
      }
    });
  }

  submit() {
    const message = this.input.value;
    if (!message.trim()) {
      this.input.focus();
      return;
    }
    if (this.current) return; // one answer at a time: Stop it first
    this.input.value = '';
    this.addMessage('user', message);
    this.ask(message, this.conversationId);
  }

  ask(message, conversationId) {
    const answer = new Answer(this, {
      message, conversationId, useContext: this.useContext.checked, useProfile: this.useProfile.checked,
    });
    answer.generation = this.generation;
    this.current = answer;
    this.empty.hidden = true;
    this.messages.append(answer.el);
    this.setBusy(true);
    this.scrollToEnd();
    answer.open();
    return answer;
  }

  /** Ask the same message again as a new answer (new request id). */
  retry(answer) {
    if (this.current) {
      toast('Wait for the current answer to end, or stop it, before retrying.', { kind: 'info' });
      return;
    }
    this.ask(answer.message, answer.conversationId);
  }

  stop() {
    if (this.current) this.current.stop();
  }

  adoptConversation(answer, conversationId) {
    if (answer.generation !== this.generation) return;
    this.conversationId = conversationId;
    this.app.conversations.markCurrent(conversationId);
  }

  answerEnded(answer) {
    if (this.current !== answer) return;
    this.current = null;
    this.setBusy(false);
    this.app.conversations.refresh();
  }

  setBusy(busy) {
    const stopHadFocus = document.activeElement === this.stopButton;
    this.sendButton.hidden = busy;
    this.stopButton.hidden = !busy;
    if (!busy && stopHadFocus) this.input.focus();
  }

  addMessage(role, text) {
    this.empty.hidden = true;
    const label = role === 'user' ? 'You' : 'echotune';
    const el = h('article', { class: `msg msg-${role}`, 'aria-label': role === 'user' ? 'Your message' : 'echotune answer' },
      h('p', { class: 'msg-head' }, h('span', { class: 'msg-who' }, label)),
      h('div', { class: 'msg-text' }, text));
    this.messages.append(el);
    this.scrollToEnd();
    return el;
  }

  /** Start afresh (the server makes a new conversation id with the next message). */
  newConversation() {
    this.generation += 1;
    if (this.current) this.current.stop();
    this.current = null;
    this.setBusy(false);
    this.conversationId = null;
    this.messages.replaceChildren(this.empty);
    this.empty.hidden = false;
    this.app.conversations.markCurrent(null);
    this.input.focus();
  }

  /** Show a stored conversation and continue it. */
  showConversation(id, turns) {
    this.newConversation();
    this.conversationId = id;
    for (const turn of turns) {
      if (turn.role === 'user' || turn.role === 'assistant') this.addMessage(turn.role, turn.content || '');
    }
    this.app.conversations.markCurrent(id);
  }

  nearBottom() {
    const box = this.messages;
    if (box.scrollHeight > box.clientHeight + 2 && getComputedStyle(box).overflowY !== 'visible') {
      return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    }
    const doc = document.scrollingElement;
    return doc.scrollHeight - doc.scrollTop - doc.clientHeight < 120;
  }

  scrollToEnd() {
    const last = this.messages.lastElementChild;
    if (last) last.scrollIntoView({ block: 'end', behavior: 'instant' });
  }
}
