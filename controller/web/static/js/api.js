// The REST API with the tab's token. Errors come back as ApiError with the server's
// {"error": {code, message}} (docs/protocol.md), or a network error's text.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let token = null;
let onUnauthorized = null;

export function setToken(value, unauthorized) {
  token = value;
  onUnauthorized = unauthorized;
}

export async function call(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach the controller: ${err.message}`);
  }
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const e = (data && data.error) || {};
    if (response.status === 401 && onUnauthorized) onUnauthorized();
    throw new ApiError(response.status, e.code || `http_${response.status}`,
      e.message || `${method} ${path}: HTTP ${response.status}`);
  }
  return { status: response.status, data };
}

export const get = (path) => call("GET", path).then((r) => r.data);
export const post = (path, body) => call("POST", path, body);
export const del = (path) => call("DELETE", path);

export const enc = encodeURIComponent;
