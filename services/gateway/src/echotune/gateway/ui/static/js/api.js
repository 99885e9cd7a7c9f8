// JSON calls to the gateway: same origin, authenticated by the session cookie.
// Every error of the API is {"error": {"code", "message", "details"}, "request_id"}.

export class ApiError extends Error {
  constructor(status, code, message, { retryAfter = null, details = null, requestId = null } = {}) {
    super(message);
    this.status = status; // 0: the server could not be reached
    this.code = code;
    this.retryAfter = retryAfter; // seconds, from Retry-After
    this.details = details;
    this.requestId = requestId;
  }

  /** The analytics read side is down or not deployed (proxy answers 502/503/504, or 404). */
  get unavailable() {
    return this.status === 0 || [404, 502, 503, 504].includes(this.status);
  }

  /** Worth trying again as is. */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

let onUnauthorized = () => {};

/** Called with the ApiError whenever a call answers 401 (session missing or expired). */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

/** Seconds from a Retry-After header (delta-seconds or HTTP date), or null. */
export function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Math.ceil(Number(value));
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

/** An ApiError from a failed fetch Response (reads its JSON error body if any). */
export async function errorFromResponse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = (body && body.error) || {};
  return new ApiError(
    response.status,
    error.code || `http_${response.status}`,
    error.message || `The server answered HTTP ${response.status}.`,
    {
      retryAfter: parseRetryAfter(response.headers.get('Retry-After')),
      details: error.details ?? null,
      requestId: (body && body.request_id) || response.headers.get('X-Request-Id'),
    },
  );
}

export function networkError() {
  return new ApiError(0, 'network_error', 'echotune cannot be reached. Check your connection.');
}

/**
 * Call the API; resolves with the parsed JSON (null for 204), rejects with an ApiError.
 * `quiet401`: a 401 is expected (e.g. "am I signed in?") and does not trigger the handler.
 */
export async function api(path, { method = 'GET', body, signal, quiet401 = false } = {}) {
  const init = { method, credentials: 'same-origin', cache: 'no-store', signal, headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error && error.name === 'AbortError') throw error;
    throw networkError();
  }
  if (!response.ok) {
    const error = await errorFromResponse(response);
    if (response.status === 401 && !quiet401) onUnauthorized(error);
    throw error;
  }
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}
