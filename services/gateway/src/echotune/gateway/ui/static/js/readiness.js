// Whether any worker is running: without one, answers cannot start (GET /readyz).

import { $ } from './dom.js';

const EVERY_MS = 10000;

export class Readiness {
  constructor() {
    this.timer = null;
  }

  start() {
    this.stop();
    this.check();
    this.timer = setInterval(() => this.check(), EVERY_MS);
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  async check() {
    const notice = $('#workers-status');
    try {
      const response = await fetch('/readyz', { headers: { Accept: 'application/json' } });
      const body = await response.json();
      notice.hidden = body.status !== 'no_workers';
    } catch {
      notice.hidden = true; // the other parts say when echotune cannot be reached
    }
  }
}
