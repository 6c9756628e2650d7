// The node's HTTP API, as the page uses it. Errors become exceptions with the node's message.

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function call(method, path, body) {
  const options = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  const token = sessionStorage.getItem('sn-token');
  if (token) options.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = response.statusText;
    try {
      const doc = await response.json();
      message = doc.error || (typeof doc.detail === 'string' ? doc.detail : message);
    } catch { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return response.json();
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body);

export async function signIn(token) {
  await post('/api/session', { token });   // HttpOnly cookie: images and OHIF use it
  sessionStorage.setItem('sn-token', token);  // for the page's own POSTs (jobs, sends)
}

export const enc = encodeURIComponent;
