// echotune web UI: sign-in, views (chat, dashboard) and the parts they share.

import { $ } from './dom.js';
import { api, setUnauthorizedHandler } from './api.js';
import { clearToasts, toast } from './toast.js';
import { Chat } from './chat.js';
import { Providers, mountChips } from './providers.js';
import { Conversations } from './conversations.js';
import { Dashboard } from './dashboard.js';
import { Readiness } from './readiness.js';

const VIEWS = ['chat', 'dashboard'];

class App {
  constructor() {
    this.user = null;
    this.view = null;
    this.providers = new Providers();
    this.chat = new Chat(this);
    this.conversations = new Conversations(this);
    this.dashboard = new Dashboard(this);
    this.readiness = new Readiness();
    mountChips(this.providers);

    setUnauthorizedHandler(() => this.requireLogin('Your session has ended. Sign in again.'));
    $('#login-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.login();
    });
    $('#logout').addEventListener('click', () => this.logout());
    window.addEventListener('hashchange', () => this.route(true));
  }

  async boot() {
    try {
      const me = await api('/api/auth/me', { quiet401: true });
      this.signedIn(me.user_id, false);
    } catch (error) {
      this.showLogin(error.status === 401 ? '' : `echotune cannot be reached: ${error.message}`);
    } finally {
      $('#boot-status').remove();
    }
  }

  // --- sign-in --------------------------------------------------------------------------

  async login() {
    const input = $('#api-key');
    const error = $('#login-error');
    const key = input.value.trim();
    if (!key) {
      this.loginError('Enter your API key.');
      return;
    }
    const button = $('#login-form button[type=submit]');
    button.disabled = true;
    try {
      const me = await api('/api/auth/session', { method: 'POST', body: { api_key: key }, quiet401: true });
      input.value = '';
      error.textContent = '';
      input.removeAttribute('aria-invalid');
      this.signedIn(me.user_id, true);
    } catch (failure) {
      this.loginError(failure.status === 401 ? 'This API key is not valid.' : `Sign-in failed: ${failure.message}`);
    } finally {
      button.disabled = false;
    }
  }

  loginError(message) {
    $('#login-error').textContent = message;
    const input = $('#api-key');
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }

  signedIn(userId, focus) {
    this.user = userId;
    $('#account-name').textContent = userId;
    $('.account').hidden = false;
    $('.mainnav').hidden = false;
    $('#login-view').hidden = true;
    this.providers.start();
    this.readiness.start();
    this.conversations.refresh();
    this.route(false);
    if (focus) (this.view === 'chat' ? $('#message') : $('#dashboard-title')).focus();
  }

  async logout() {
    try {
      await api('/api/auth/session', { method: 'DELETE', quiet401: true });
    } catch (error) {
      toast(`Sign-out failed: ${error.message}`);
      return;
    }
    this.showLogin('You are signed out.');
  }

  requireLogin(message) {
    if (this.user === null && !$('#login-view').hidden) return;
    this.showLogin(message);
  }

  showLogin(message) {
    this.user = null;
    this.providers.stop();
    this.readiness.stop();
    if (this.chat.current) this.chat.current.finish('error');
    clearToasts();
    for (const view of VIEWS) $(`#${view}-view`).hidden = true;
    $('.account').hidden = true;
    $('.mainnav').hidden = true;
    $('#login-view').hidden = false;
    $('#login-error').textContent = message || '';
    this.view = null;
    $('#api-key').focus();
  }

  // --- views ----------------------------------------------------------------------------

  /** `#dashboard` or `/dashboard` shows the dashboard; anything else the chat. */
  wanted() {
    const hash = location.hash.replace('#', '');
    if (VIEWS.includes(hash)) return hash;
    return location.pathname.replace(/\/+$/, '') === '/dashboard' ? 'dashboard' : 'chat';
  }

  route(focus) {
    if (this.user === null) return;
    const view = this.wanted();
    const changed = view !== this.view;
    this.view = view;
    for (const name of VIEWS) $(`#${name}-view`).hidden = name !== view;
    for (const link of document.querySelectorAll('[data-view-link]')) {
      if (link.dataset.viewLink === view) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = view === 'dashboard' ? 'Dashboard · echotune' : 'echotune';
    if (view === 'dashboard' && changed) {
      this.dashboard.renderLive(this.providers);
      this.dashboard.load();
    }
    if (focus && changed) $(`#${view}-title`).focus();
  }

  visible(view) {
    return this.view === view;
  }
}

const app = new App();
app.boot();
