// The conversation list (read side proxied by the gateway from the analytics service).

import { $, h, fmtRelative } from './dom.js';
import { api } from './api.js';
import { toast } from './toast.js';

/** Field names: camelCase or snake_case, `conversationId` or `id`. */
function normalise(item) {
  return {
    id: item.conversationId ?? item.conversation_id ?? item.id,
    summary: item.summary,
    messageCount: item.messageCount ?? item.message_count,
    lastActivity: item.lastActivity ?? item.last_activity,
    turns: item.turns || [],
  };
}

export class Conversations {
  constructor(app) {
    this.app = app;
    this.list = $('#conversation-list');
    this.status = $('#conversations-status');
    this.current = null;
    this.loading = null;
    $('#new-conversation').addEventListener('click', () => this.app.chat.newConversation());
    const details = $('#conversations');
    if (matchMedia('(max-width: 48rem)').matches) details.open = false;
  }

  async refresh() {
    if (this.loading) return this.loading;
    this.loading = this.load().finally(() => { this.loading = null; });
    return this.loading;
  }

  async load() {
    let response;
    try {
      response = await api('/api/conversations?limit=50');
    } catch (error) {
      if (error.status === 401) return;
      this.list.replaceChildren();
      this.setStatus(
        error.unavailable
          ? 'Conversations unavailable right now.'
          : `Conversations could not be loaded: ${error.message}`,
        'unavailable',
      );
      return;
    }
    const items = (Array.isArray(response) ? response : (response && response.data) || []).map(normalise);
    this.render(items);
    this.setStatus(items.length ? '' : 'No conversations yet.', items.length ? 'ok' : 'empty');
  }

  setStatus(text, state) {
    this.status.textContent = text;
    this.status.dataset.state = state;
  }

  render(items) {
    this.list.replaceChildren(
      ...items.filter((item) => item.id).map((item) => {
        const title = item.summary || 'Untitled conversation';
        const meta = [
          Number.isFinite(item.messageCount) ? `${item.messageCount} messages` : null,
          item.lastActivity ? fmtRelative(item.lastActivity) : null,
        ].filter(Boolean).join(' · ');
        const button = h('button', { type: 'button', class: 'conversation', dataset: { conversationId: item.id } },
          h('span', { class: 'conversation-title' }, title),
          meta ? h('span', { class: 'conversation-meta' }, meta) : null);
        if (item.id === this.current) button.setAttribute('aria-current', 'true');
        button.addEventListener('click', () => this.open(item.id));
        return h('li', null, button);
      }),
    );
  }

  markCurrent(id) {
    this.current = id;
    for (const button of this.list.querySelectorAll('button.conversation')) {
      if (button.dataset.conversationId === id) button.setAttribute('aria-current', 'true');
      else button.removeAttribute('aria-current');
    }
  }

  async open(id) {
    let response;
    try {
      response = await api(`/api/conversations/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error.status === 401) return;
      const why = error.status === 404 ? 'it was not found' : error.unavailable ? 'conversations are unavailable right now' : error.message;
      toast(`Could not open the conversation: ${why}.`, { kind: 'error' });
      return;
    }
    const conversation = normalise((response && response.data) || response || {});
    this.app.chat.showConversation(conversation.id || id, conversation.turns);
  }
}
