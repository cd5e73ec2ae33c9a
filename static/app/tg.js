// The Telegram side of the Mini App: theme, MainButton, BackButton, alerts, haptics, invoices.
// Outside Telegram (a plain browser, or telegram.org unreachable) every piece falls back to
// something on the page, so the sandbox preview works the same way.

import { h } from "./ui.js";
import { tr } from "./i18n.js";

const W = (window.Telegram && window.Telegram.WebApp) || null;
// The script exists outside Telegram too; only initData says we are really inside it.
export const inTelegram = !!(W && W.initData);
export const initData = inTelegram ? W.initData : "";

/** Telegram's language for the shopper ("de", "pt-br"), or "" (not in Telegram, or not told). */
export function languageCode() {
  const user = inTelegram && W.initDataUnsafe && W.initDataUnsafe.user;
  return (user && typeof user.language_code === "string" && user.language_code) || "";
}

function safe(fn) {
  try { return fn(); } catch (e) { return undefined; }
}

export function applyTheme() {
  if (!inTelegram) return;   // a plain browser keeps its own light/dark preference
  const root = document.documentElement;
  const params = W.themeParams || {};
  // telegram-web-app.js sets these too; doing it here keeps the page right if it is late or stubbed.
  for (const [key, value] of Object.entries(params)) {
    if (typeof value === "string" && /^#[0-9a-f]{3,8}$/i.test(value)) {
      root.style.setProperty("--tg-theme-" + key.replace(/_/g, "-"), value);
    }
  }
  if (W.colorScheme === "dark" || W.colorScheme === "light") root.dataset.scheme = W.colorScheme;
}

/** Telegram's safe areas (a notch; in full screen, Telegram's own buttons over the top) as CSS
 * variables. telegram-web-app.js sets them too; doing it here keeps them right if it is stubbed. */
function applyInsets() {
  const root = document.documentElement;
  for (const [name, inset] of [["safe-area", W.safeAreaInset], ["content-safe-area", W.contentSafeAreaInset]]) {
    for (const side of ["top", "bottom"]) {
      const px = inset && Number(inset[side]);
      if (Number.isFinite(px)) root.style.setProperty(`--tg-${name}-inset-${side}`, `${px}px`);
    }
  }
  root.classList.toggle("fullscreen", !!W.isFullscreen);
}

// One handler each, registered once; screens only change what they do.
let mainAction = null;
let backAction = null;
let fallbackMain = null;
let fallbackBack = null;
let mainMoved = null;
const listeners = [];

export function startTelegram({ onBack }) {
  backAction = onBack;
  applyTheme();
  if (inTelegram) {
    safe(() => W.ready());
    safe(() => W.expand());
    safe(() => W.onEvent("themeChanged", applyTheme));
    safe(() => W.MainButton.onClick(() => mainAction && mainAction()));
    safe(() => W.BackButton.onClick(() => backAction && backAction()));
    safe(applyInsets);
    for (const event of ["fullscreenChanged", "fullscreenFailed", "homeScreenAdded", "safeAreaChanged", "contentSafeAreaChanged"]) {
      safe(() => W.onEvent(event, (data) => {
        safe(applyInsets);
        listeners.forEach((fn) => fn(event, data || {}));
      }));
    }
  }
}

/** fn(event, data) on Telegram's fullscreenChanged, fullscreenFailed and homeScreenAdded. */
export function onAppEvent(fn) {
  listeners.push(fn);
}

// Bot API 8.0: full screen and home screen shortcuts, where the shopper's Telegram has them.
const since8 = () => inTelegram && safe(() => W.isVersionAtLeast("8.0")) === true;
export const canFullscreen = () => since8() && typeof W.requestFullscreen === "function" && typeof W.exitFullscreen === "function";
export const isFullscreen = () => !!(inTelegram && W.isFullscreen);
export const canAddToHomeScreen = () => since8() && typeof W.addToHomeScreen === "function";

export function setFullscreen(on) {
  safe(() => (on ? W.requestFullscreen() : W.exitFullscreen()));
}

export function addToHomeScreen() {
  safe(() => W.addToHomeScreen());
}

/** Resolves to "unsupported", "unknown", "added" or "missed" (Telegram's checkHomeScreenStatus). */
export function homeScreenStatus() {
  return new Promise((resolve) => {
    if (!canAddToHomeScreen() || typeof W.checkHomeScreenStatus !== "function") { resolve("unsupported"); return; }
    try { W.checkHomeScreenStatus((status) => resolve(String(status || "unknown"))); } catch (e) { resolve("unknown"); }
  });
}

/** The page's own main and back buttons, used when not in Telegram. onMove() runs when the main
 * button shows, hides or changes, so the page can keep its content clear of it. */
export function fallbackButtons(onMove) {
  mainMoved = onMove;
  fallbackMain = h("button", { class: "main-button", type: "button", hidden: true,
                               onclick: () => mainAction && mainAction() });
  fallbackBack = h("button", { class: "back", type: "button", hidden: true, onclick: () => backAction && backAction() },
    h("span", { "aria-hidden": "true" }, "‹ "), tr("Back"));
  return { main: fallbackMain, back: fallbackBack };
}

/** spec: null (hidden) or {text, onClick, disabled, busy}. */
export function setMainButton(spec) {
  mainAction = spec && !spec.disabled && !spec.busy ? spec.onClick : null;
  if (inTelegram) {
    const b = W.MainButton;
    safe(() => {
      if (!spec) { b.hideProgress(); b.hide(); return; }
      b.setText(spec.text);
      if (spec.disabled) b.disable(); else b.enable();
      if (spec.busy) b.showProgress(false); else b.hideProgress();
      b.show();
    });
  } else if (fallbackMain) {
    const was = `${fallbackMain.hidden}${fallbackMain.textContent}`;
    fallbackMain.hidden = !spec;
    if (spec) {
      fallbackMain.textContent = spec.text;
      fallbackMain.disabled = !!(spec.disabled || spec.busy);
      fallbackMain.classList.toggle("busy", !!spec.busy);
    }
    if (mainMoved && was !== `${fallbackMain.hidden}${fallbackMain.textContent}`) mainMoved();
  }
}

export function setBackButton(visible) {
  if (inTelegram) safe(() => (visible ? W.BackButton.show() : W.BackButton.hide()));
  else if (fallbackBack) fallbackBack.hidden = !visible;
}

/** Open a Telegram Stars invoice (a link from createInvoiceLink) over the app. Telegram calls
 * onClose("paid" | "cancelled" | "failed" | "pending") when it closes: only a hint, the shop's own
 * status is what counts. Outside Telegram, or in a client too old for invoices, the link opens the
 * Telegram app instead and onClose is never called. Returns whether it opened in place. */
export function openInvoice(url, onClose) {
  if (inTelegram && typeof W.openInvoice === "function" && safe(() => W.isVersionAtLeast("6.1")) !== false) {
    try {
      W.openInvoice(url, (status) => onClose && onClose(String(status)));
      return true;
    } catch (e) { /* below */ }
  }
  if (inTelegram && typeof W.openTelegramLink === "function" && safe(() => { W.openTelegramLink(url); return true; })) {
    return false;
  }
  window.open(url, "_blank", "noopener");
  return false;
}

/** Show a message the shopper must acknowledge; resolves when closed. */
export function showAlert(message) {
  return new Promise((resolve) => {
    if (inTelegram) {
      try { W.showAlert(String(message), () => resolve()); return; } catch (e) { /* old client: below */ }
    }
    const box = h("div", { class: "alert", role: "alertdialog", "aria-modal": "true" },
      h("div", { class: "alert-box" },
        h("p", { class: "alert-text", role: "alert" }, String(message)),
        // TRANSLATORS: the button that closes a message box
        h("button", { type: "button", class: "btn", onclick: () => { box.remove(); resolve(); } }, tr("OK"))));
    document.body.append(box);
    box.querySelector("button").focus();
  });
}

export function showConfirm(message) {
  return new Promise((resolve) => {
    if (inTelegram) {
      try { W.showConfirm(String(message), (ok) => resolve(!!ok)); return; } catch (e) { /* below */ }
    }
    resolve(window.confirm(String(message)));
  });
}

/** kind: "add" (a tap that changed something), "success", "error", "select". */
export function haptic(kind) {
  if (!inTelegram) return;
  safe(() => {
    const f = W.HapticFeedback;
    if (kind === "add") f.impactOccurred("medium");
    else if (kind === "select") f.selectionChanged();
    else f.notificationOccurred(kind);
  });
}
