// The shop's Telegram Mini App: catalog, basket, checkout, invoices, orders and balance.
// Screens are functions that return nodes; a stack of routes gives the BackButton its meaning.

import { h, cents, eur, plainAmount, starsText, parseAmount, requestId, api, blobUrl, setInitData, toast, copyText, ApiError } from "./ui.js";
import * as tg from "./tg.js";

const S = { me: null, catalog: { cities: [] }, basket: { items: [], total: "0.00", count: 0 }, basketAt: 0,
            coins: null, coinsAt: 0 };
const stack = [];
const chrome = {};
let view = null;

const TABS = [["cities", "Shop", "🛍"], ["basket", "Basket", "🧺"], ["orders", "Orders", "📦"], ["account", "Balance", "💰"]];
const ORDER_STATUS = { pending: "⏳ Awaiting payment", paid: "✅ Paid", cancelled: "✖ Cancelled",
                       expired: "⌛ Expired", refunded: "↩ Refunded" };
const SIMULATE = [["full", "Pay in full"], ["partial", "Pay half"], ["over", "Overpay"], ["expire", "Let it expire"]];
const WAYS = { stars: "⭐ Telegram Stars", crypto: "crypto", balance: "your balance" };
const RULE_NOTE = "Digital goods are paid in Telegram Stars, by Telegram's rule.";
// What Telegram says when its invoice closes: only a hint until the shop's own status agrees.
const STARS_HINTS = {
  paid: "Telegram says it is paid: waiting for the shop to confirm…",
  pending: "Telegram is processing the payment; this page updates by itself.",
  cancelled: "The invoice was closed without paying. You can open it again.",
  failed: "Telegram could not take the payment. You can try again.",
};
const POLL_MS = 4000;
const NOT_SELLING = "🧪 This shop is in test mode: it is not selling yet, so nothing can be bought or paid here.";

// Data ########################################################################

function gotBasket(basket) {
  S.basket = basket;
  S.basketAt = Date.now();
  updateChrome();
}

async function loadBasket() {
  gotBasket(await api("/api/basket"));
}

async function loadCatalog() {
  S.catalog = await api("/api/catalog");
}

async function loadMe() {
  S.me = await api("/api/me");
  updateChrome();
}

async function loadCoins() {
  if (!S.coins || Date.now() - S.coinsAt > 60000) {
    S.coins = await api("/api/currencies");
    S.coinsAt = Date.now();
  }
  return S.coins;
}

function findOffer(productId, districtId) {
  for (const city of S.catalog.cities) {
    for (const district of city.districts) {
      if (district.id !== districtId) continue;
      const product = district.products.find((p) => p.id === productId);
      if (product) return { city, district, product };
    }
  }
  return null;
}

function basketLine(productId, districtId) {
  return S.basket.items.find((i) => i.product_id === productId && i.district_id === districtId);
}

function coinLabel(code) {
  const coin = (S.coins || []).find((c) => c.code === code);
  return coin ? coin.label : String(code).toUpperCase();
}

// Navigation ##################################################################

function makeView() {
  const v = { alive: true, stops: [], shown: null };
  v.after = (ms, fn) => {
    const t = setTimeout(() => v.alive && fn(), ms);
    v.stops.push(() => clearTimeout(t));
    return t;
  };
  v.every = (ms, fn) => {
    const t = setInterval(() => v.alive && fn(), ms);
    v.stops.push(() => clearInterval(t));
  };
  v.blob = (url) => { v.stops.push(() => URL.revokeObjectURL(url)); return url; };
  v.close = () => { v.alive = false; v.stops.forEach((stop) => stop()); };
  // The MainButton for this screen; while onClick runs it shows progress and ignores taps. It is
  // shown only once the screen is (v.live), so it never offers what is not on the page yet.
  v.main = (text, onClick, { disabled = false } = {}) => {
    const spec = text == null ? null : { text, disabled, onClick: async () => {
      if (!v.alive) return;
      tg.setMainButton({ ...spec, busy: true });
      try { await onClick(); } catch (e) { fail(e); }
      if (v.alive) tg.setMainButton(spec);
    } };
    v.spec = spec;
    if (v.live) tg.setMainButton(spec);
  };
  return v;
}

function go(name, params = {}, how = "push") {
  const top = stack[stack.length - 1];
  if (top) top.scroll = window.scrollY;
  if (how === "reset") stack.length = 0;
  else if (how === "replace") stack.pop();
  stack.push({ name, params });
  render(0);
}

/** Where Back goes: the screen before, or from a tab's first screen, the catalog. */
function back() {
  if (stack.length > 1) {
    stack.pop();
    render(stack[stack.length - 1].scroll || 0);
  } else if (!atRoot()) {
    go("cities", {}, "reset");
  }
}

/** The catalog's first screen: the only one without a Back button (Telegram shows Close there). */
function atRoot() {
  return stack.length === 1 && stack[0].name === "cities";
}

/** Draw the route on top of the stack; scrollTo null keeps the scroll position (a refresh). */
async function render(scrollTo = null) {
  const route = stack[stack.length - 1];
  const y = scrollTo == null ? window.scrollY : scrollTo;
  if (view) view.close();
  const v = view = makeView();
  tg.setBackButton(!atRoot());
  for (const [name, button] of Object.entries(chrome.tabs || {})) {
    button.setAttribute("aria-current", name === stack[0].name ? "page" : "false");
  }
  const main = document.getElementById("app");
  main.setAttribute("aria-busy", "true");
  const slow = setTimeout(() => {
    if (!v.alive) return;
    tg.setMainButton(null);
    main.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  }, 200);
  let nodes;
  try {
    nodes = await SCREENS[route.name](route.params, v);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return fatal(e.message);
    nodes = [h("p", { class: "empty" }, e.message || String(e)),
             h("button", { type: "button", class: "btn", onclick: () => render() }, "Try again")];
  } finally {
    clearTimeout(slow);
  }
  if (!v.alive) return;
  main.replaceChildren(...nodes.flat().filter((n) => n != null && n !== false));
  main.removeAttribute("aria-busy");
  v.live = true;
  tg.setMainButton(v.spec || null);
  window.scrollTo(0, y);
  if (v.shown) v.shown();
}

function fail(e) {
  if (e instanceof ApiError && e.status === 401) return fatal(e.message);
  tg.haptic("error");
  return tg.showAlert(e.message || String(e));
}

/** Run an in-page button's action with the button disabled, so a double tap does it once. */
function busy(button, fn) {
  return async () => {
    if (button.disabled) return;
    button.disabled = true;
    button.classList.add("busy");
    try { await fn(); } catch (e) { fail(e); }
    button.disabled = false;
    button.classList.remove("busy");
  };
}

// Shared pieces ###############################################################

function row(title, sub, onclick) {
  return h("li", null, h("button", { type: "button", class: "row", onclick },
    h("span", { class: "row-text" }, h("span", { class: "row-title" }, title), h("span", { class: "row-sub" }, sub)),
    h("span", { class: "chev", "aria-hidden": "true" }, "›")));
}

/** A product's photo ({name, photo_url}), or its initial on a tint of its own when it has none. */
function photo(product, className, lazy = true) {
  if (product.photo_url && product.photo_url.startsWith("/media/")) {
    return h("img", { class: className, src: product.photo_url, alt: "", loading: lazy ? "lazy" : "eager", decoding: "async" });
  }
  const name = String(product.name || "").trim();
  let hue = 0;
  for (const ch of name) hue = (hue * 31 + ch.codePointAt(0)) % 6;
  return h("span", { class: `${className} no-photo tint-${hue}`, "aria-hidden": "true" }, (Array.from(name)[0] || "?").toUpperCase());
}

/** " · 1,250 ⭐" after a euro amount where it may be paid in Stars (stars not null), else nothing. */
function inStars(stars) {
  return stars != null ? h("span", { class: "in-stars" }, ` · ${starsText(stars)}`) : null;
}

/** "€25.00 · 1,250 ⭐" where the product may be paid in Stars, else "€25.00". */
function priceTag(product, className = "price") {
  return h("span", { class: className }, eur(product.price), inStars(product.stars));
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/** The one way stock is worded: on cards, the product page and in the basket. */
function stock(n) {
  return n > 0 ? `${n} available` : "Sold out";
}

function missing(text) {
  return [h("p", { class: "empty" }, text),
          h("button", { type: "button", class: "btn", onclick: () => go("cities", {}, "reset") }, "Back to the shop")];
}

function stepper(quantity, max, name, onChange) {
  const minus = h("button", { type: "button", class: "step", "aria-label": `One less ${name}` }, "−");
  const plus = h("button", { type: "button", class: "step", "aria-label": `One more ${name}`,
                             disabled: quantity >= max }, "+");
  const change = (delta) => async () => {
    minus.disabled = plus.disabled = true;
    await onChange(quantity + delta);
  };
  minus.addEventListener("click", change(-1));
  plus.addEventListener("click", change(+1));
  return h("div", { class: "stepper" }, minus, h("output", { class: "qty", "aria-label": "Quantity" }, String(quantity)), plus);
}

/** Set how many of a product from a district are in the basket (0 takes it out). */
async function setQuantity(productId, districtId, quantity) {
  const before = (basketLine(productId, districtId) || { quantity: 0 }).quantity;
  const route = stack[stack.length - 1];
  try {
    gotBasket(await api("/api/basket", { method: "POST",
                                         body: { product_id: productId, district_id: districtId, quantity } }));
    tg.haptic(quantity > before ? "add" : "select");
    if (!before && quantity) toast("Added to the basket");
  } catch (e) {
    fail(e);
    // The shown stock was out of date: show what there is now.
    await Promise.allSettled([loadBasket(), loadCatalog()]);
  }
  // The screen it was asked from, or the basket if the shopper went there meanwhile.
  const top = stack[stack.length - 1];
  if (top === route || top.name === "basket") render();
}

function copyRow(label, value, what) {
  return h("div", { class: "copy-row" },
    h("span", { class: "copy-label" }, label),
    h("span", { class: "copy-value" }, h("code", null, value),
      h("button", { type: "button", class: "btn small", "aria-label": `Copy ${what}`,
                    onclick: () => copyText(value, what[0].toUpperCase() + what.slice(1)) }, "Copy")));
}

function option({ title, sub, selected, disabled, onPick, key, wide }) {
  return h("button", { type: "button", role: "radio", class: wide ? "option wide" : "option", "aria-checked": selected ? "true" : "false",
                       disabled, "data-key": key, onclick: onPick },
    h("span", { class: "option-title" }, title), sub ? h("span", { class: "option-sub" }, sub) : null);
}

/** The coins grouped by asset: a coin on one network is one choice (BTC), an asset on several is
 * one group with a choice per network (USDT: TRC20 · ERC20 · BEP20 · SOL). amount (cents) or null:
 * a coin whose minimum is above it cannot be chosen. onPick(code) makes a click handler. */
function coinChoices(coins, amount, selected, onPick) {
  const assets = new Map();
  for (const c of coins) {
    const asset = c.asset || String(c.label).split(" · ")[0];
    if (!assets.has(asset)) assets.set(asset, []);
    assets.get(asset).push(c);
  }
  const tooSmall = (c) => amount != null && c.minimum != null && cents(c.minimum) > amount;
  return Array.from(assets, ([asset, list]) => {
    if (list.length === 1) {
      const [c] = list;
      return option({ key: c.code, title: c.label, sub: tooSmall(c) ? `from ${eur(c.minimum)}` : c.name,
                      selected: selected === c.code, disabled: tooSmall(c), onPick: onPick(c.code) });
    }
    return h("div", { class: "option coin-group wide", role: "group", "aria-label": `${asset}, ${list[0].name}: networks` },
      h("span", { class: "option-title" }, asset, h("span", { class: "option-sub" }, ` ${list[0].name} · choose the network`)),
      h("span", { class: "nets" }, list.map((c) => h("button", {
        type: "button", role: "radio", class: "net", "data-key": c.code, disabled: tooSmall(c),
        "aria-checked": selected === c.code ? "true" : "false", onclick: onPick(c.code) },
      c.network, tooSmall(c) ? h("span", { class: "net-min" }, ` · from ${eur(c.minimum)}`) : null))));
  });
}

// Checkout ####################################################################

const sumLines = (lines) => lines.reduce((sum, l) => sum + cents(l.price) * l.quantity, 0);

function onlyStars(methods) {
  return Array.isArray(methods) && methods.length === 1 && methods[0] === "stars";
}

/** Whether only Stars is offered because Telegram's rule makes digital goods Stars-only. */
function ruled(lines, methods) {
  return !!S.me.telegram_rule && onlyStars(methods) && lines.some((l) => {
    const found = findOffer(l.product_id, l.district_id);
    return found && found.product.kind === "digital";
  });
}

/** What a checkout sells and the ways the shop takes for it: {lines, total (cents), methods, stars,
 * parts, body}. methods null: the shop cannot tell (a line is no longer sold). null: nothing to sell. */
function checkoutPlan(p) {
  if (p.type === "basket") {
    if (!S.basket.items.length) return null;
    const pay = S.basket.payment;
    const lines = S.basket.items.map((i) => ({ name: i.name, place: i.place, price: i.price, quantity: i.quantity,
                                               product_id: i.product_id, district_id: i.district_id, photo_url: i.photo_url }));
    return { lines, total: sumLines(lines), methods: pay ? pay.methods : null, stars: pay ? pay.stars : null,
             parts: pay ? pay.parts : [], body: { type: "basket" } };
  }
  const found = findOffer(p.product, p.district);
  if (!found) return null;
  const { product } = found;
  const lines = [{ name: product.name, place: `${found.city.name} / ${found.district.name}`, price: product.price,
                   quantity: p.quantity, product_id: product.id, district_id: found.district.id, photo_url: product.photo_url }];
  return { lines, total: sumLines(lines), methods: product.methods || ["crypto", "balance"],
           stars: product.stars != null ? product.stars * p.quantity : null, parts: [],
           body: { type: "product", product_id: p.product, district_id: p.district, quantity: p.quantity } };
}

function summary(lines) {
  return h("ul", { class: "lines summary" }, lines.map((l) => h("li", { class: "line" }, photo(l, "thumb small"),
    h("div", { class: "line-text" }, h("span", { class: "line-name" }, l.name), h("span", { class: "line-place" }, l.place)),
    h("span", { class: "line-sum" }, `${l.quantity} × ${eur(l.price)}`))));
}

function allows(methods, key) {
  return methods.includes(key in WAYS ? key : "crypto");
}

function payLabel(method, { total, stars }) {
  if (method === "stars") return `Pay ${starsText(stars)}`;
  if (method === "balance") return `Pay ${eur(total)} from balance`;
  return `Pay ${eur(total)} with ${coinLabel(method)}`;
}

/** The ways to pay as radio options (Stars first, then the balance, then each coin) and the
 * MainButton that pays the chosen way. amountOf(method) -> {total (cents), stars}. */
function payChoice(p, v, methods, amountOf, coins, pay) {
  const balance = cents(S.me.balance);
  const forBalance = amountOf("balance").total;
  if (p.method === undefined || (p.method && !allows(methods, p.method))) {
    p.method = methods.includes("balance") && balance >= forBalance ? "balance" : onlyStars(methods) ? "stars" : null;
  }
  const offer = () => {
    if (!p.method) v.main("Choose how to pay", null, { disabled: true });
    else v.main(payLabel(p.method, amountOf(p.method)), pay);
  };
  const pick = (key) => () => {
    p.method = key;
    tg.haptic("select");
    for (const o of group.querySelectorAll("[role=radio]")) o.setAttribute("aria-checked", o.dataset.key === key ? "true" : "false");
    offer();
  };
  const options = [];
  if (methods.includes("stars")) {
    options.push(option({ key: "stars", wide: true, title: `⭐ Telegram Stars — ${starsText(amountOf("stars").stars)}`,
      sub: S.me.sandbox ? "🧪 Simulated here: no real Stars" : "Paid inside Telegram", selected: p.method === "stars",
      onPick: pick("stars") }));
  }
  if (methods.includes("balance")) {
    options.push(option({ key: "balance", title: "💰 Balance", selected: p.method === "balance",
      sub: balance >= forBalance ? `${eur(balance)} available` : `${eur(balance)} · ${eur(forBalance - balance)} short`,
      disabled: balance < forBalance, onPick: pick("balance") }));
  }
  let note = null;
  if (methods.includes("crypto") && coins instanceof Error) {
    note = h("p", { class: "warn" }, `Crypto payments are unavailable right now. ${coins.message}`);
  } else if (methods.includes("crypto")) {
    options.push(...coinChoices(coins, amountOf("crypto").total, p.method, pick));
  }
  offer();
  const group = h("div", { class: "options", role: "radiogroup", "aria-label": "Pay with" }, options);
  return [group, note, methods.includes("balance") && balance < forBalance
    ? h("button", { type: "button", class: "btn secondary", onclick: () => go("account") }, "Top up your balance") : null];
}

async function startPayment(p, body) {
  let result;
  try {
    result = await api("/api/payment/create", { method: "POST", body: { ...body, currency: p.method, request_id: p.rid } });
  } catch (e) {
    // Refused: the next try is a new checkout. No answer at all: the same one, so it is not bought twice.
    if (e.status) p.rid = requestId();
    throw e;
  }
  if (p.method === "balance") {
    tg.haptic("success");
    S.me.balance = result.balance;
    updateChrome();
    await Promise.allSettled([loadBasket(), loadCatalog()]);
    go("paid", { order: result.order_id }, "replace");
  } else {
    if (body.type === "basket") loadBasket().catch(() => {});   // its lines moved into the order
    go("invoice", { payment: result.payment_id, invoice: result, open: true }, "replace");
  }
}

function partCard(part, index, lines, selected, onPick) {
  const names = part.lines.map(([productId, districtId, quantity]) => {
    const line = lines.find((l) => l.product_id === productId && l.district_id === districtId);
    return h("span", { class: "part-line" }, `${line ? line.name : "An item"} × ${quantity}`);
  });
  return h("button", { type: "button", role: "radio", class: "part", "aria-checked": selected ? "true" : "false",
                       "data-part": index, disabled: !part.methods.length, onclick: onPick },
    h("span", { class: "part-head" }, h("strong", null, `Part ${index + 1}`),
      h("span", { class: "part-total" }, eur(part.total), part.stars != null ? ` · ${starsText(part.stars)}` : "")),
    names, h("span", { class: "part-ways" }, part.methods.length
      ? `Paid with ${part.methods.map((m) => WAYS[m]).join(" or ")}` : "Cannot be paid here right now"));
}

/** A basket whose lines share no way to pay: each part with its ways and total. The shopper pays
 * one part (the shop checks out every line that may be paid the chosen way); the rest stays. */
function splitCheckout(p, v, plan, coins) {
  const { parts } = plan;
  const payable = parts.map((part, i) => (part.methods.length ? i : -1)).filter((i) => i >= 0);
  if (!payable.includes(p.part)) p.part = payable.length ? payable[0] : null;
  const cards = h("div", { class: "parts", role: "radiogroup", "aria-label": "Parts of your basket" });
  const payArea = h("div", { class: "part-pay" });
  const amountOf = (method) => {
    const paid = parts.filter((part) => allows(part.methods, method));
    return { total: paid.reduce((sum, part) => sum + cents(part.total), 0),
             stars: paid.reduce((sum, part) => sum + (part.stars || 0), 0) };
  };
  const draw = () => {
    cards.replaceChildren(...parts.map((part, i) => partCard(part, i, plan.lines, p.part === i, () => {
      if (p.part === i) return;
      p.part = i;
      p.method = undefined;
      p.rid = requestId();   // another part is another checkout
      tg.haptic("select");
      draw();
    })));
    if (p.part == null) {
      payArea.replaceChildren(h("p", { class: "warn" }, "None of these can be paid here right now."));
      v.main(null);
      return;
    }
    const choice = payChoice(p, v, parts[p.part].methods, amountOf, coins, () => startPayment(p, { type: "basket", part: true }));
    payArea.replaceChildren(h("h2", null, `Pay for part ${p.part + 1} with`), ...choice.filter(Boolean));
  };
  draw();
  const partLines = (part) => part.lines.map(([productId, districtId]) => ({ product_id: productId, district_id: districtId }));
  return [h("h1", null, "Checkout"),
    h("p", { class: "split-note" }, "These items are paid in different ways, so they cannot be paid together. "
      + "Pay for one part now; the rest stays in your basket to pay next."),
    parts.some((part) => ruled(partLines(part), part.methods)) ? h("p", { class: "note rule-note" }, RULE_NOTE) : null,
    cards, payArea];
}

// Invoices ####################################################################

function cryptoDetails(inv, v) {
  const amountLabel = h("span", null, coinLabel(inv.pay_currency));
  loadCoins().then(() => v.alive && amountLabel.replaceChildren(coinLabel(inv.pay_currency))).catch(() => {});
  const qr = h("img", { class: "qr", alt: "QR code with the address and amount", width: 220, height: 220 });
  blobUrl(inv.qr_url).then((url) => { if (v.alive) qr.src = v.blob(url); else URL.revokeObjectURL(url); })
    .catch(() => qr.replaceWith(h("p", { class: "muted" }, "The QR code could not be loaded; copy the address instead.")));
  const wallet = /^(bitcoin|litecoin):/.test(inv.payment_uri || "")
    ? h("a", { class: "btn secondary", href: inv.payment_uri }, "Open in wallet") : null;
  return h("section", { class: "pay-details" },
    h("div", { class: "copy-row" }, h("span", { class: "copy-label" }, "Send exactly"),
      h("span", { class: "copy-value" }, h("code", { class: "pay-amount" }, inv.pay_amount), amountLabel,
        h("button", { type: "button", class: "btn small", "aria-label": "Copy amount",
                      onclick: () => copyText(inv.pay_amount, "Amount") }, "Copy"))),
    copyRow("To this address", inv.pay_address, "address"),
    inv.payin_extra_id ? copyRow("Memo / tag (required)", inv.payin_extra_id, "memo") : null,
    inv.payin_extra_id ? h("p", { class: "warn" }, "Include the memo, or the payment cannot be matched to you.") : null,
    h("div", { class: "qr-box" }, qr), wallet);
}

function cryptoNotes(inv) {
  const credited = cents(inv.credited);
  const say = (text) => h("p", null, text);
  if (inv.status === "finished" && inv.kind === "topup") return [say(`${eur(credited)} was added to your balance.`)];
  if (inv.status === "finished" && credited >= cents(inv.price_amount)) {
    return [say(`The payment arrived after the items were gone, so ${eur(credited)} was added to your balance.`)];
  }
  if (inv.status === "finished") {
    return [say(inv.order_status === "paid" ? "Paid. Here are your items; they stay in My orders." : "Paid. Your items are in My orders."),
      credited ? say(`You sent more than needed: the extra ${eur(credited)} was added to your balance.`) : null];
  }
  if (inv.status === "partially_paid") {
    return [say(`Only part of the amount arrived${credited ? `: ${eur(credited)} was added to your balance` : ""}.`)];
  }
  if (["confirming", "confirmed", "sending"].includes(inv.status)) return [say("Your payment is on its way; this page updates by itself.")];
  if (!inv.open) return [say("This invoice is no longer open. Money sent to it anyway is not lost: it is delivered or credited to your balance.")];
  return [];
}

function starsDetails(inv) {
  return h("section", { class: "pay-details stars-pay" },
    h("p", { class: "stars-amount" }, starsText(inv.stars)),
    h("p", { class: "muted" }, inv.invoice_link
      ? "Telegram shows the invoice over the shop: confirm it there. This page shows what the shop received."
      : inv.simulate
        ? "🧪 There is no real Telegram invoice in the sandbox: the button below plays the payment, through the same checks and delivery as real Stars."
        : "Pay this invoice in the bot's chat; this page shows what the shop received."));
}

/** What a Stars invoice's status means to the shopper; Telegram's hint only while it is open. */
function starsNotes(inv, hint) {
  const paid = starsText(inv.stars);
  const say = (text) => [h("p", null, text)];
  if (inv.status === "finished" && inv.order_status === "paid") return say(`Paid with ${paid}. Here are your items; they stay in My orders.`);
  if (inv.status === "finished") return say(`The payment arrived after the items were gone, so your ${paid} are being given back to you.`);
  if (inv.status === "refunded") {
    return say(inv.order_status === "refunded" ? `The shop refunded this order: your ${paid} were given back to you.`
      : `Your ${paid} were given back to you.`);
  }
  if (inv.status === "waiting" && inv.open) return hint && STARS_HINTS[hint] ? [h("p", { class: "hint" }, STARS_HINTS[hint])] : [];
  if (inv.order_status === "cancelled") {
    return say("You cancelled this invoice and its items went back on sale. Stars paid for it anyway are given back to you.");
  }
  return say("This invoice is no longer open and its items went back on sale. Stars paid for it anyway are given back to you.");
}

/** Full screen and a home screen shortcut, where the shopper's Telegram has them (Bot API 8.0). */
function appTools(v) {
  const box = h("div", { class: "app-tools", hidden: true });
  const full = tg.canFullscreen() ? h("button", { type: "button", class: "chip tool", onclick: () => tg.setFullscreen(!tg.isFullscreen()) }) : null;
  const home = h("button", { type: "button", class: "chip tool", hidden: true, onclick: () => tg.addToHomeScreen() }, "📲 Add to home screen");
  const draw = (homeStatus) => {
    if (full) full.textContent = tg.isFullscreen() ? "↙ Leave full screen" : "⛶ Full screen";
    if (homeStatus) home.hidden = !["missed", "unknown"].includes(homeStatus);
    box.hidden = !full && home.hidden;
  };
  v.onApp = (event) => draw(event === "homeScreenAdded" ? "added" : null);
  if (tg.canAddToHomeScreen()) tg.homeScreenStatus().then((status) => v.alive && draw(status));
  draw(null);
  box.append(...[full, home].filter(Boolean));
  return box;
}

// Screens #####################################################################

const SCREENS = {
  async cities(p, v) {
    const cities = S.catalog.cities;
    if (!cities.length) {
      return [h("h1", null, "Shop"), h("p", { class: "empty" }, "Nothing is in stock right now. Please look again later."), appTools(v)];
    }
    return [h("h1", null, "Choose a city"), h("ul", { class: "list" }, cities.map((city) => {
      const products = city.districts.reduce((n, d) => n + d.products.length, 0);
      return row(city.name, `${plural(city.districts.length, "district", "districts")} · ${plural(products, "product", "products")}`,
                 () => go("districts", { city: city.id }));
    })), appTools(v)];
  },

  async districts(p) {
    const city = S.catalog.cities.find((c) => c.id === p.city);
    if (!city) return missing("Nothing is in stock there any more.");
    return [h("h1", null, city.name), h("ul", { class: "list" }, city.districts.map((d) => {
      const from = Math.min(...d.products.map((x) => cents(x.price)));
      return row(d.name, `${plural(d.products.length, "product", "products")} · from ${eur(from)}`,
                 () => go("products", { city: city.id, district: d.id }));
    }))];
  },

  async products(p, v) {
    const city = S.catalog.cities.find((c) => c.id === p.city);
    const district = city && city.districts.find((d) => d.id === p.district);
    if (!district) return missing("Nothing is in stock there any more.");
    if (S.basket.count) v.main(`View basket · ${eur(S.basket.total)}`, () => go("basket"));
    return [h("h1", null, district.name), h("p", { class: "place" }, city.name),
      h("div", { class: "grid" }, district.products.map((product) => {
        const line = basketLine(product.id, district.id);
        return h("button", { type: "button", class: "card", onclick: () => go("product", { product: product.id, district: district.id }) },
          photo(product, "card-photo"),
          line ? h("span", { class: "card-badge", "aria-label": "In your basket" }, `×${line.quantity}`) : null,
          h("span", { class: "card-name" }, product.name),
          h("span", { class: "card-meta" }, priceTag(product),
            h("span", { class: "stock" }, stock(product.available))));
      }))];
  },

  async product(p, v) {
    const found = findOffer(p.product, p.district);
    if (!found) return missing("This product is sold out here now.");
    const { city, district, product } = found;
    const line = basketLine(product.id, district.id);
    const nodes = [photo(product, "hero", false), h("h1", null, product.name),
      h("p", { class: "place" }, `${city.name} / ${district.name}`),
      h("p", { class: "price-row" }, priceTag(product, "price big"),
        h("span", { class: "stock" }, stock(product.available))),
      onlyStars(product.methods) ? h("p", { class: "muted small" }, "⭐ Paid in Telegram Stars") : null,
      product.description ? h("p", { class: "description" }, product.description) : null];
    if (line) {
      nodes.push(h("div", { class: "in-basket" },
        h("span", null, `In your basket: ${eur(cents(product.price) * line.quantity)}`),
        stepper(line.quantity, Math.min(product.available, 100), product.name,
                (q) => setQuantity(product.id, district.id, q))));
      v.main(`View basket · ${eur(S.basket.total)}`, () => go("basket"));
    } else {
      v.main(`Add to basket · ${eur(product.price)}`, () => setQuantity(product.id, district.id, 1));
      nodes.push(h("button", { type: "button", class: "btn secondary",
        onclick: () => go("checkout", { type: "product", product: product.id, district: district.id, quantity: 1 }) },
        "Buy now"));
    }
    return nodes;
  },

  async basket(p, v) {
    if (Date.now() - S.basketAt > 2000) await loadBasket();   // the bot may have changed it
    const { items } = S.basket;
    if (!items.length) {
      return [h("h1", null, "Basket"), h("p", { class: "empty" }, "Your basket is empty."),
              h("button", { type: "button", class: "btn", onclick: () => go("cities", {}, "reset") }, "Browse the shop")];
    }
    v.main(`Checkout · ${eur(S.basket.total)}`, () => go("checkout", { type: "basket" }));
    const pay = S.basket.payment;
    const split = pay && !pay.methods.length && pay.parts.length > 1
      ? h("p", { class: "note split-note" }, "These items are paid in different ways, so checkout takes them one part at a time.")
      : null;
    return [h("h1", null, "Basket"), h("ul", { class: "lines" }, items.map((item) => {
      const short = item.available < item.quantity;
      const remove = h("button", { type: "button", class: "btn small ghost", "aria-label": `Remove ${item.name}` }, "Remove");
      remove.addEventListener("click", busy(remove, async () => {
        gotBasket(await api(`/api/basket/${item.id}`, { method: "DELETE" }));
        tg.haptic("select");
        render();
      }));
      const title = findOffer(item.product_id, item.district_id)
        ? h("button", { type: "button", class: "link line-name",
                        onclick: () => go("product", { product: item.product_id, district: item.district_id }) }, item.name)
        : h("span", { class: "line-name" }, item.name);
      return h("li", { class: "line" }, photo(item, "thumb"),
        h("div", { class: "line-text" }, title, h("span", { class: "line-place" }, item.place),
          h("span", { class: "line-sum" }, `${item.quantity} × ${eur(item.price)} = ${eur(cents(item.price) * item.quantity)}`),
          item.reserved ? h("span", { class: "note" }, `${item.reserved} reserved for you: waiting for your payment`)
            : short ? h("span", { class: "warn" }, item.available ? `Only ${stock(item.available)} now` : "Sold out now") : null),
        h("div", { class: "line-actions" },
          stepper(item.quantity, Math.min(item.available, 100), item.name,
                  (q) => setQuantity(item.product_id, item.district_id, q)), remove));
    })), h("p", { class: "total" }, h("span", null, "Total"),
      h("strong", null, eur(S.basket.total), inStars(pay && pay.stars))),
    split];
  },

  async checkout(p, v) {
    p.rid = p.rid || requestId();
    const [coins] = await Promise.all([loadCoins().catch((e) => e), loadMe(), p.type === "basket" ? loadBasket() : null]);
    if (!S.me.can_buy) return [h("h1", null, "Checkout"), h("p", { class: "note" }, NOT_SELLING)];
    const plan = checkoutPlan(p);
    if (!plan) return missing(p.type === "basket" ? "Your basket is empty." : "This product is sold out here now.");
    if (!plan.methods) {
      return [h("h1", null, "Checkout"), summary(plan.lines),
        h("p", { class: "warn" }, "Something in your basket is no longer sold here. Please take it out of the basket first."),
        h("button", { type: "button", class: "btn", onclick: () => go("basket", {}, "reset") }, "Back to the basket")];
    }
    if (!plan.methods.length && plan.parts.length) return splitCheckout(p, v, plan, coins);
    const amount = () => ({ total: plan.total, stars: plan.stars });
    const choice = plan.methods.length ? payChoice(p, v, plan.methods, amount, coins, () => startPayment(p, plan.body)) : null;
    return [h("h1", null, "Checkout"), summary(plan.lines),
      h("p", { class: "total" }, h("span", null, "Total"), h("strong", null, eur(plan.total), inStars(plan.stars))),
      plan.methods.length ? h("h2", null, "Pay with") : h("p", { class: "warn" }, "This cannot be paid here right now."),
      ruled(plan.lines, plan.methods) ? h("p", { class: "note rule-note" }, RULE_NOTE) : null,
      choice];
  },

  async invoice(p, v) {
    let inv = p.invoice || await api(`/api/payment/status/${encodeURIComponent(p.payment)}`);
    p.invoice = null;   // coming back here later asks for the status again
    const stars = inv.pay_currency === "xtr";
    const what = inv.kind === "topup" ? "Top-up" : `Order #${inv.order_id}`;
    const status = h("div", { class: "status", role: "status" });
    const countdown = h("p", { class: "countdown" });
    const details = stars ? starsDetails(inv) : cryptoDetails(inv, v);
    const goods = h("div", { class: "goods" });
    const actions = h("div", { class: "actions" });

    let timer = null;
    let fast = 0;
    let hint = null;   // what Telegram said when its invoice closed: a hint, until the shop's status moves
    let goodsAsked = false;
    const done = () => inv.final || (!inv.open && inv.status === "waiting");
    let settled = done();
    const schedule = (ms) => {
      clearTimeout(timer);
      if (!done()) timer = v.after(ms, poll);
    };
    const poll = async () => {
      try {
        const next = await api(`/api/payment/status/${inv.payment_id}`);
        if (v.alive) update(next);
      } catch (e) {
        if (v.alive && (e.status === 401 || e.status === 404)) return fail(e);
      }
      schedule(fast-- > 0 ? 1000 : POLL_MS);
    };
    const hurry = () => { fast = 15; schedule(0); };
    const openStars = () => tg.openInvoice(inv.invoice_link, (said) => {
      if (!v.alive) return;
      hint = said;
      update(inv);
      if (said === "paid" || said === "pending") hurry();
    });
    const tick = () => {
      const left = (Date.parse(inv.expires_at) - Date.now()) / 1000;
      if (inv.status !== "waiting" || !inv.open) { countdown.hidden = true; return; }
      countdown.hidden = false;
      if (left > 0) {
        countdown.textContent = `Pay within ${clock(left)}` + (inv.kind === "order" ? " · the items are reserved until then" : "");
      } else {
        countdown.textContent = "Time is up; checking…";
        if (!fast) { fast = 3; schedule(0); }
      }
    };
    const showGoods = async () => {
      goodsAsked = true;
      try {
        const order = await findOrder(inv.order_id);
        if (v.alive && order) goods.replaceChildren(...goodsSection(order, v));
      } catch (e) { /* they are in My orders too */ }
    };
    const update = (next) => {
      if (!v.alive) return;
      if (next.status !== inv.status || next.open !== inv.open) hint = null;
      inv = next;
      const closed = inv.status === "waiting" && !inv.open;
      const notes = [h("span", { class: `pill ${closed ? "expired" : inv.status}` }, closed ? "⌛ No longer open" : inv.status_text),
        ...(stars ? starsNotes(inv, hint) : cryptoNotes(inv))];
      if (inv.sandbox) notes.unshift(h("p", { class: "sandbox" }, stars ? "🧪 Sandbox: a test invoice, no real Stars." : "🧪 Sandbox: a test invoice, no real money."));
      status.replaceChildren(...notes.filter(Boolean));
      details.hidden = inv.final || closed;
      const buttons = [];
      if (inv.status === "waiting" && inv.open) {
        if (stars && inv.simulate && !inv.invoice_link) {
          const pay = h("button", { type: "button", class: "btn simulate-stars" }, `🧪 Pay ${starsText(inv.stars)} (simulated)`);
          pay.addEventListener("click", busy(pay, async () => {
            await api(`/api/payment/${inv.payment_id}/simulate`, { method: "POST", body: { outcome: "full" } });
            hurry();
          }));
          buttons.push(pay);
        }
        const cancel = h("button", { type: "button", class: "btn ghost" }, "Cancel invoice");
        cancel.addEventListener("click", busy(cancel, async () => {
          const ask = stars ? "Cancel this invoice? Its items go back on sale." : "Cancel this invoice? Do not send money to it afterwards.";
          if (!await tg.showConfirm(ask)) return;
          update(await api(`/api/payment/${inv.payment_id}/cancel`, { method: "POST" }));
        }));
        buttons.push(cancel);
        if (inv.simulate && !stars) {
          buttons.push(h("div", { class: "simulate" }, h("p", { class: "muted" }, "🧪 Simulate payment (sandbox):"),
            SIMULATE.map(([outcome, label]) => {
              const b = h("button", { type: "button", class: "btn small secondary" }, label);
              b.addEventListener("click", busy(b, async () => {
                await api(`/api/payment/${inv.payment_id}/simulate`, { method: "POST", body: { outcome } });
                toast("Simulating: the status changes in a moment");
                hurry();
              }));
              return b;
            })));
        }
      }
      if (inv.final && inv.kind === "order") buttons.push(restOfBasket());
      actions.replaceChildren(...buttons.filter(Boolean));
      tick();
      if (inv.kind === "order" && inv.order_status === "paid" && !goodsAsked) showGoods();
      if (!settled && done()) {
        settled = true;
        tg.haptic(inv.status === "finished" ? "success" : "warning");
        // Balance, basket and stock may all have moved with it.
        Promise.allSettled([loadMe(), inv.kind === "order" ? loadBasket() : null, loadCatalog()]).then(() => update(inv));
      }
      if (inv.final && inv.kind === "order") v.main("Open my orders", () => go("orders", { highlight: inv.order_id }, "reset"));
      else if (inv.final) v.main("Done", () => go("account", {}, "reset"));
      else if (stars && inv.invoice_link && inv.open && inv.status === "waiting") v.main(`Pay ${starsText(inv.stars)}`, openStars);
      else v.main(null);
      schedule(fast > 0 ? 1000 : POLL_MS);
    };
    v.stops.push(() => clearTimeout(timer));
    v.every(1000, tick);
    v.shown = () => {
      update(inv);
      if (p.open && stars && inv.invoice_link && inv.open) openStars();
      p.open = false;   // back here later: the shopper opens it with the button
    };
    const title = stars ? `${what} · ${starsText(inv.stars)}` : `${what} · ${eur(inv.price_amount)}`;
    return [h("h1", null, title), stars ? h("p", { class: "muted" }, `${eur(inv.price_amount)} in Telegram Stars`) : null,
      status, countdown, details, actions, goods];
  },

  /** A purchase paid from the balance: paid at once, so its goods are here at once. */
  async paid(p, v) {
    const order = await findOrder(p.order);
    if (!order) return missing("This order is not among your orders.");
    v.main("Open my orders", () => go("orders", { highlight: order.id }, "reset"));
    return [h("h1", null, `Order #${order.id} · ${eur(order.total)}`),
      h("div", { class: "status", role: "status" }, h("span", { class: `pill ${order.status}` }, ORDER_STATUS[order.status] || order.status),
        h("p", null, `Paid from your balance; ${eur(S.me.balance)} is left. Here are your items; they stay in My orders.`)),
      h("div", { class: "actions" }, restOfBasket()), h("div", { class: "goods" }, goodsSection(order, v))];
  },

  async orders(p, v) {
    const data = await api("/api/orders");
    if (!data.orders.length) {
      return [h("h1", null, "My orders"), h("p", { class: "empty" }, "You have no orders yet."),
              h("button", { type: "button", class: "btn", onclick: () => go("cities", {}, "reset") }, "Browse the shop")];
    }
    const list = h("div", { class: "orders" }, data.orders.map((o) => orderCard(o, v, p.highlight)));
    const nodes = [h("h1", null, "My orders"), list];
    let next = data.next_before;
    if (next) {
      const more = h("button", { type: "button", class: "btn secondary" }, "Show older orders");
      more.addEventListener("click", busy(more, async () => {
        const page = await api(`/api/orders?before=${encodeURIComponent(next)}`);
        list.append(...page.orders.map((o) => orderCard(o, v)));
        next = page.next_before;
        if (!next) more.remove();
      }));
      nodes.push(more);
    }
    v.shown = () => {
      const card = p.highlight && document.getElementById(`order-${p.highlight}`);
      if (card) card.scrollIntoView({ block: "start" });
    };
    return nodes;
  },

  async account(p, v) {
    const [coins] = await Promise.all([loadCoins().catch((e) => e), loadMe()]);
    const me = S.me;
    const min = cents(me.min_deposit);
    const max = cents(me.max_deposit);
    p.rid = p.rid || requestId();
    const input = h("input", { id: "amount", type: "text", inputmode: "decimal", autocomplete: "off",
                               placeholder: "e.g. 20", "aria-describedby": "amount-hint" });
    input.value = p.amount || "";
    const list = h("div", { class: "options", role: "radiogroup", "aria-label": "Top up with" });
    const refresh = () => {
      const amount = parseAmount(input.value);
      const valid = amount >= min && amount <= max;
      const coin = Array.isArray(coins) ? coins.find((c) => c.code === p.coin) : null;
      if (coins instanceof Error) {
        list.replaceChildren(h("p", { class: "warn" }, `Crypto payments are unavailable right now. ${coins.message}`));
      } else {
        list.replaceChildren(...coinChoices(coins, valid ? amount : null, p.coin,
          (code) => () => { p.coin = code; tg.haptic("select"); refresh(); }));
      }
      if (!input.value.trim()) v.main("Enter an amount", null, { disabled: true });
      else if (!valid) v.main(`From ${eur(min)} to ${eur(max)}`, null, { disabled: true });
      else if (!p.coin) v.main("Choose a coin", null, { disabled: true });
      else if (coin && coin.minimum != null && cents(coin.minimum) > amount) {
        v.main(`${coin.label} takes ${eur(coin.minimum)} or more`, null, { disabled: true });
      } else v.main(`Top up ${eur(amount)} with ${coinLabel(p.coin)}`, topUp);
    };
    const topUp = async () => {
      const amount = parseAmount(input.value);
      let invoice;
      try {
        invoice = await api("/api/payment/refill", { method: "POST",
          body: { amount: plainAmount(amount), currency: p.coin, request_id: p.rid } });
      } catch (e) {
        if (e.status) p.rid = requestId();
        throw e;
      }
      p.rid = null;   // back here later is a new top-up
      go("invoice", { payment: invoice.payment_id, invoice });
    };
    input.addEventListener("input", () => {
      if (p.amount !== input.value) p.rid = requestId();   // a request_id keeps its first amount
      p.amount = input.value;
      refresh();
    });
    const chips = [1000, 2000, 5000, 10000].filter((c) => c >= min && c <= max).map((c) =>
      h("button", { type: "button", class: "chip", onclick: () => {
        input.value = String(c / 100);
        input.dispatchEvent(new Event("input"));
      } }, eur(c)));
    const who = h("p", { class: "muted" }, me.first_name, me.username ? ` (@${me.username})` : "", ` · Telegram ID ${me.id}`);
    if (!me.can_buy) return [h("h1", null, "Balance"), h("p", { class: "balance" }, eur(me.balance)), who,
                             h("p", { class: "muted" }, "Top-ups open once the shop starts selling.")];
    refresh();
    return [h("h1", null, "Balance"),
      h("p", { class: "balance" }, eur(me.balance)),
      h("p", { class: "muted" }, me.first_name, me.username ? ` (@${me.username})` : "", ` · Telegram ID ${me.id}`),
      h("h2", null, "Top up"),
      h("label", { for: "amount", class: "label" }, "Amount in EUR"), input,
      h("p", { id: "amount-hint", class: "muted small" }, `From ${eur(min)} to ${eur(max)}.`),
      h("div", { class: "chips" }, chips),
      h("h3", null, "Pay with"), list];
  },
};

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const two = (n) => String(n).padStart(2, "0");
  return (hh ? `${hh}:${two(mm)}` : String(mm)) + ":" + two(s % 60);
}

/** One of the shopper's latest orders by id (a paid one, to show its goods), or undefined. */
async function findOrder(id) {
  return (await api("/api/orders")).orders.find((o) => o.id === id);
}

/** After a purchase, what is still in the basket (a basket paid one part at a time). */
function restOfBasket() {
  return S.basket.count ? h("button", { type: "button", class: "btn secondary", onclick: () => go("basket", {}, "reset") },
    `Pay for the rest of your basket (${plural(S.basket.count, "item", "items")})`) : null;
}

/** A paid order's goods on the screen that says it is paid. */
function goodsSection(order, v) {
  return [h("h2", null, "Your items"), h("section", { class: "goods-box" }, orderItems(order, v))];
}

function orderItems(order, v) {
  return h("ul", { class: "items" }, order.items.map((item) => {
    const parts = [h("div", { class: "item-title" }, h("strong", null, item.name), ` · ${item.place} · ${eur(item.price)}`)];
    if (item.content != null) {
      parts.push(h("pre", { class: "content" }, item.content),
        h("button", { type: "button", class: "btn small", "aria-label": `Copy ${item.name}`,
                      onclick: () => copyText(item.content, "Content") }, "Copy"));
    }
    if (item.media_url && item.media_url.startsWith("/api/")) {
      const img = h("img", { class: "media", alt: `Photo of ${item.name}` });
      blobUrl(item.media_url).then((url) => { if (v.alive) img.src = v.blob(url); else URL.revokeObjectURL(url); })
        .catch(() => img.replaceWith(h("p", { class: "muted" }, "The photo could not be loaded.")));
      parts.push(img);
    }
    return h("li", { class: "item" }, parts);
  }));
}

function orderCard(order, v, highlight) {
  const when = new Date(order.created_at);
  return h("article", { class: "order" + (order.id === highlight ? " highlight" : ""), id: `order-${order.id}`,
                        "data-status": order.status },
    h("header", { class: "order-head" }, h("strong", null, `Order #${order.id}`),
      h("span", { class: `pill ${order.status}` }, ORDER_STATUS[order.status] || order.status)),
    h("p", { class: "muted small" }, `${isNaN(when) ? order.created_at : when.toLocaleString()} · ${eur(order.total)}`
      + (order.method === "balance" ? " · from balance"
        : order.method === "stars" ? `${order.stars != null ? ` · ${starsText(order.stars)}` : ""} · Stars` : " · crypto")),
    orderItems(order, v),
    order.status === "pending" && order.payment_id
      ? h("button", { type: "button", class: "btn", onclick: () => go("invoice", { payment: order.payment_id }) }, "Open invoice")
      : null);
}

// Frame: header, tabs, start ##################################################

function updateChrome() {
  if (chrome.balance && S.me) {
    chrome.balance.textContent = eur(S.me.balance);
    chrome.balance.setAttribute("aria-label", `Balance: ${eur(S.me.balance)}`);
  }
  if (chrome.count) {
    // Read out as "Basket 2 items"; shown as a 2 on the tab.
    chrome.count.replaceChildren(String(S.basket.count), h("span", { class: "sr-only" }, S.basket.count === 1 ? " item" : " items"));
    chrome.count.hidden = !S.basket.count;
  }
}

/** Keep the page's bottom padding (and toasts) clear of the dock: the main button and the tabs. */
function fitDock() {
  if (chrome.dock) document.documentElement.style.setProperty("--dock-h", `${chrome.dock.offsetHeight}px`);
}

function buildChrome() {
  const fallback = tg.inTelegram ? null : tg.fallbackButtons(fitDock);
  chrome.balance = h("button", { type: "button", class: "chip balance-chip", onclick: () => go("account", {}, "reset") });
  const label = S.me.preview ? h("span", { class: "badge preview" }, "Preview (sandbox)")
    : S.me.test_mode ? h("span", { class: "badge" }, "🧪 Test mode")
    : S.me.sandbox ? h("span", { class: "badge" }, "🧪 Sandbox") : null;
  // The name is never cut: beside Back and the balance with the badge under it, or when it is long,
  // on a row of its own under them.
  const long = Array.from(S.me.shop_name).length > 36;
  const header = h("header", { class: `top${long ? " long-name" : ""}${label ? "" : " no-badge"}` }, fallback && fallback.back,
    h("span", { class: "shop-name" }, S.me.shop_name), label, chrome.balance);
  chrome.tabs = {};
  chrome.count = h("span", { class: "count" });
  const nav = h("nav", { class: "tabs" }, TABS.map(([name, text, icon]) => {
    const button = chrome.tabs[name] = h("button", { type: "button", class: "tab", onclick: () => {
      if (name === "cities") loadCatalog().then(() => stack.length === 1 && stack[0].name === "cities" && render()).catch(() => {});
      go(name, {}, "reset");
    } }, h("span", { class: "tab-icon", "aria-hidden": "true" }, icon), h("span", null, text), name === "basket" ? chrome.count : null);
    return button;
  }));
  const main = document.getElementById("app");
  main.before(header);
  if (S.me.preview) {
    main.before(h("aside", { class: "preview-note", "aria-label": "Preview" },
      "You are browsing as a preview shopper in the sandbox: nothing here is real, and payments can be simulated."));
  } else if (S.me.test_mode) {
    main.before(h("aside", { class: "preview-note test-mode", "aria-label": "Test mode" }, h("p", { role: "status" }, S.me.can_buy
      ? "🧪 Test mode: you may buy here and simulate payments. Other shoppers cannot buy until the shop takes real payments."
      : "🧪 Test mode: this shop is not selling yet. You are welcome to look around, but nothing can be bought.")));
  }
  chrome.dock = h("div", { class: "dock" }, fallback && fallback.main, nav);
  main.after(chrome.dock);
  if (window.ResizeObserver) new ResizeObserver(fitDock).observe(chrome.dock);   // also once at the start
  updateChrome();
}

function fatal(message, link) {
  if (view) view.close();
  tg.setMainButton(null);
  tg.setBackButton(false);
  document.querySelectorAll("header.top, .dock").forEach((n) => n.remove());
  document.documentElement.style.removeProperty("--dock-h");
  document.getElementById("app").replaceChildren(h("div", { class: "fatal" }, h("p", null, message),
    link ? h("a", { class: "btn", href: link }, "Log in to the admin") : null));
}

async function start() {
  tg.startTelegram({ onBack: back });
  tg.onAppEvent((event, data) => {
    if (event === "fullscreenFailed" && data.error !== "ALREADY_FULLSCREEN") toast("Full screen is not available here.");
    if (view && view.alive && view.onApp) view.onApp(event, data);
  });
  let initData = tg.initData;
  if (!initData) {
    // Outside Telegram: a preview shopper, where the shop offers one (sandbox; with a bot, owners only).
    const preview = document.body.dataset.preview;
    if (!preview) {
      return fatal("Please open this shop from the Telegram bot: tap its 🛍 Shop button in Telegram.");
    }
    try {
      initData = (await api(preview, { auth: false })).initData;
    } catch (e) {
      return fatal(e.message, e.status === 401 || e.status === 403 ? "/admin/login?next=/app" : null);
    }
  }
  setInitData(initData);
  try {
    const [me, catalog, basket] = await Promise.all([api("/api/me"), api("/api/catalog"), api("/api/basket")]);
    S.me = me;
    S.catalog = catalog;
    gotBasket(basket);
  } catch (e) {
    return fatal(e.message);
  }
  buildChrome();
  go("cities");
  loadCoins().catch(() => {});   // ready before checkout
}

start();
