// DOM, money and the shop's API. Data is only ever put on the page as text, never as HTML.

import { tr } from "./i18n.js";

/** h("p", {class: "x", onclick: f}, "text", child): an element; strings become text nodes. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child != null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Money: "25.00" strings from the shop become integer cents here, for comparing and for asking. The
// shop formats every amount a shopper reads (the API sends "price_text" next to "price").
export function cents(text) {
  const m = /^(-?)(\d+)(?:\.(\d{1,2}))?$/.exec(String(text));
  if (!m) return NaN;
  const value = Number(m[2]) * 100 + Number((m[3] || "").padEnd(2, "0"));
  return m[1] ? -value : value;
}

/** 123450 -> "1234.50": an amount as the shop's API reads it (no grouping, no sign). */
export function plainAmount(c) {
  return `${Math.floor(c / 100)}.${String(c % 100).padStart(2, "0")}`;
}

/** "20", "20.5", "20,50", "1,234.50", "1.234,50", "1 234" -> cents, or NaN. */
export function parseAmount(text) {
  let t = String(text).replace(/[\s\u00a0\u202f]/g, "");
  if (/^\d{1,3}(,\d{3})+(\.\d{1,2})?$/.test(t)) t = t.replace(/,/g, "");
  else if (/^\d{1,3}(\.\d{3})+(,\d{1,2})?$/.test(t)) t = t.replace(/\./g, "");
  const m = /^(\d{1,7})(?:[.,](\d{1,2}))?$/.exec(t);
  return m ? Number(m[1]) * 100 + Number((m[2] || "").padEnd(2, "0")) : NaN;
}

/** 16 lowercase hex digits: one checkout's request_id. */
export function requestId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

let initData = "";
export function setInitData(value) {
  initData = value;
}

async function request(path, { method = "GET", body, auth = true } = {}) {
  const headers = {};
  if (auth) headers["X-Telegram-Init-Data"] = initData;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    return await fetch(path, { method, headers, cache: "no-store",
                               body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(tr("The shop cannot be reached. Please check your connection and try again."), 0);
  }
}

/** Call the shop's JSON API; throws ApiError with the shop's own message. */
export async function api(path, options) {
  const r = await request(path, options);
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON: the message below */ }
  if (!r.ok) {
    const message = data && typeof data.error === "string" && data.error;
    throw new ApiError(message || tr("The shop answered with an error ({status}). Please try again.", { status: r.status }), r.status);
  }
  return data;
}

/** An authenticated image (QR code, delivered photo) as a blob: URL; revoke it when done. */
export async function blobUrl(path) {
  const r = await request(path);
  if (!r.ok) throw new ApiError(tr("Could not load the image ({status}).", { status: r.status }), r.status);
  return URL.createObjectURL(await r.blob());
}

export function toast(message) {
  let box = document.querySelector(".toasts");
  if (!box) document.body.append(box = h("div", { class: "toasts", role: "status", "aria-live": "polite" }));
  const item = h("div", { class: "toast" }, message);
  box.append(item);
  setTimeout(() => item.remove(), 2000);
}

/** Copy text; done: what the toast then says ("Address copied"). */
export async function copyText(text, done) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {
    // Some Telegram web views refuse the Clipboard API; the old way still works there.
    const area = h("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (!ok) { toast(tr("Copying is not allowed here; press and hold to select it.")); return; }
  }
  toast(done);
}
