// The shop's Telegram Mini App: catalog, basket, checkout, invoices, orders and balance.
// Screens are functions that return nodes; a stack of routes gives the BackButton its meaning.
// Every text is in the shopper's language (tr/ntr/ptr from i18n.js); every amount and date comes
// formatted by the shop, next to the number it stands for ("price_text" beside "price").

import { h, cents, plainAmount, parseAmount, requestId, api, blobUrl, setInitData, toast, copyText, ApiError } from "./ui.js";
import { tr, ntr, ptr, useCatalog, fetchCatalog } from "./i18n.js";
import * as tg from "./tg.js";

const S = { me: null, catalog: { cities: [] }, basket: { items: [], total: "0.00", total_text: "", count: 0 }, basketAt: 0,
            coins: null, coinsAt: 0, amounts: new Map(), watches: null };
const stack = [];
const chrome = {};
let view = null;
const POLL_MS = 4000;
const METHODS = ["stars", "crypto", "balance"];

function orderStatus(status) {
  const texts = { pending: tr("⏳ Awaiting payment"), paid: tr("✅ Paid"), cancelled: tr("✖ Cancelled"),
                  expired: tr("⌛ Expired"), refunded: tr("↩ Refunded") };
  return texts[status] || status;
}

/** The ways a part of the basket may be paid, in the shop's order (stars, crypto, balance). */
function paidWith(methods) {
  const texts = {
    stars: tr("Paid with ⭐ Telegram Stars"),
    crypto: tr("Paid with crypto"),
    balance: tr("Paid with your balance"),
    "stars crypto": tr("Paid with ⭐ Telegram Stars or crypto"),
    "stars balance": tr("Paid with ⭐ Telegram Stars or your balance"),
    "crypto balance": tr("Paid with crypto or your balance"),
    "stars crypto balance": tr("Paid with ⭐ Telegram Stars, crypto or your balance"),
  };
  return texts[methods.join(" ")] || tr("Cannot be paid here right now");
}

const ruleNote = () => tr("Digital goods are paid in Telegram Stars, by Telegram's rule.");

/** What Telegram says when its invoice closes: only a hint until the shop's own status agrees. */
function starsHint(said) {
  const texts = {
    paid: tr("Telegram says it is paid: waiting for the shop to confirm…"),
    pending: tr("Telegram is processing the payment; this page updates by itself."),
    cancelled: tr("The invoice was closed without paying. You can open it again."),
    failed: tr("Telegram could not take the payment. You can try again."),
  };
  return texts[said] || null;
}

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

/** Sold-out offers the shopper waits for (🔔 Notify me): "product:district" keys. */
function gotWatches(answer) {
  S.watches = new Set(answer.watches.map((w) => `${w.product_id}:${w.district_id}`));
}

async function loadWatches() {
  gotWatches(await api("/api/watch"));
}

const watching = (productId, districtId) => S.watches != null && S.watches.has(`${productId}:${districtId}`);

/** A district's products on sale now (sold-out ones follow them). */
const inStock = (products) => products.filter((p) => p.available > 0);

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
    main.replaceChildren(h("p", { class: "loading" }, tr("Loading…")));
  }, 200);
  let nodes;
  try {
    nodes = await SCREENS[route.name](route.params, v);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return fatal(e.message);
    nodes = [h("p", { class: "empty" }, e.message || String(e)),
             h("button", { type: "button", class: "btn", onclick: () => render() }, tr("Try again"))];
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

/** Subtotal and the code's discount, above a total (none: null). */
function discountLines(promo) {
  if (!promo || promo.refused) return null;
  const line = (a, b) => h("p", { class: "subtotal" }, h("span", null, a), h("span", null, b));
  // TRANSLATORS: beside the discount: "🏷 Code SPRING10"
  return h("div", { class: "discount" }, line(tr("Subtotal"), promo.subtotal_text),
    line(tr("🏷 Code {code}", { code: promo.code }), `−${promo.discount_text}`));
}

/** The basket's code (its discount, or why none) and Remove; else a field for one. */
function promoBox(basket) {
  const promo = basket.promo;
  const apply = async (body, method) => {
    gotBasket(await api("/api/basket/promo", { method, body }));
    tg.haptic(method === "POST" ? "success" : "select");
    render();
  };
  if (promo) {
    const remove = h("button", { type: "button", class: "btn small ghost",
                                 "aria-label": tr("Remove the code {code}", { code: promo.code }) }, tr("Remove"));
    remove.addEventListener("click", busy(remove, () => apply(undefined, "DELETE")));
    return h("div", { class: "promo" }, discountLines(promo),
      promo.refused ? h("p", { class: "warn" }, `🏷 ${promo.refused}`) : null, remove);
  }
  if (!basket.promo_offered) return null;
  const input = h("input", { id: "promo", type: "text", autocomplete: "off", autocapitalize: "characters",
                             placeholder: tr("e.g. SPRING10") });
  const button = h("button", { type: "button", class: "btn small" }, tr("Apply"));
  const submit = busy(button, () => apply({ code: input.value.trim() }, "POST"));
  button.addEventListener("click", submit);
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") submit(); });
  return h("details", { class: "promo" }, h("summary", null, tr("🏷 Have a promo code?")),
    h("label", { for: "promo", class: "label" }, tr("Promo code")),
    h("div", { class: "promo-form" }, input, button));
}

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

/** " · 1,250 ⭐" after a euro amount payable in Stars (the shop's text), else nothing. */
function inStars(starsText) {
  return starsText ? h("span", { class: "in-stars" }, ` · ${starsText}`) : null;
}

/** "€25.00 · 1,250 ⭐" where the product may be paid in Stars, else "€25.00". */
function priceTag(product, className = "price") {
  return h("span", { class: className }, product.price_text, inStars(product.stars_text));
}

/** The one way stock is worded: on cards, the product page and in the basket. */
function stock(n) {
  return n > 0 ? ntr("{n} available", "{n} available", n) : tr("Sold out");
}

function missing(text) {
  return [h("p", { class: "empty" }, text),
          h("button", { type: "button", class: "btn", onclick: () => go("cities", {}, "reset") }, tr("Back to the shop"))];
}

function stepper(quantity, max, name, onChange) {
  const minus = h("button", { type: "button", class: "step", "aria-label": tr("One less {name}", { name }) }, "−");
  const plus = h("button", { type: "button", class: "step", "aria-label": tr("One more {name}", { name }),
                             disabled: quantity >= max }, "+");
  const change = (delta) => async () => {
    minus.disabled = plus.disabled = true;
    await onChange(quantity + delta);
  };
  minus.addEventListener("click", change(-1));
  plus.addEventListener("click", change(+1));
  return h("div", { class: "stepper" }, minus, h("output", { class: "qty", "aria-label": tr("Quantity") }, String(quantity)), plus);
}

/** Set how many of a product from a district are in the basket (0 takes it out). */
async function setQuantity(productId, districtId, quantity) {
  const before = (basketLine(productId, districtId) || { quantity: 0 }).quantity;
  const route = stack[stack.length - 1];
  try {
    gotBasket(await api("/api/basket", { method: "POST",
                                         body: { product_id: productId, district_id: districtId, quantity } }));
    tg.haptic(quantity > before ? "add" : "select");
    if (!before && quantity) toast(tr("Added to the basket"));
  } catch (e) {
    fail(e);
    // The shown stock was out of date: show what there is now.
    await Promise.allSettled([loadBasket(), loadCatalog()]);
  }
  // The screen it was asked from, or the basket if the shopper went there meanwhile.
  const top = stack[stack.length - 1];
  if (top === route || top.name === "basket") render();
}

/** A value to copy: label, the value, the button's accessible name and what the toast says. */
function copyRow(label, value, name, copied) {
  return h("div", { class: "copy-row" },
    h("span", { class: "copy-label" }, label),
    h("span", { class: "copy-value" }, h("code", null, value),
      h("button", { type: "button", class: "btn small", "aria-label": name, onclick: () => copyText(value, copied) },
        // TRANSLATORS: a button that copies an address, an amount or a code
        tr("Copy"))));
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
  // TRANSLATORS: a coin's smallest amount, e.g. "from €9.30"
  const from = (c) => tr("from {amount}", { amount: c.minimum_text });
  return Array.from(assets, ([asset, list]) => {
    if (list.length === 1) {
      const [c] = list;
      return option({ key: c.code, title: c.label, sub: tooSmall(c) ? from(c) : c.name,
                      selected: selected === c.code, disabled: tooSmall(c), onPick: onPick(c.code) });
    }
    const name = list[0].name;
    return h("div", { class: "option coin-group wide", role: "group", "aria-label": tr("{asset}, {name}: networks", { asset, name }) },
      h("span", { class: "option-title" }, asset, h("span", { class: "option-sub" }, " ", tr("{name} · choose the network", { name }))),
      h("span", { class: "nets" }, list.map((c) => h("button", {
        type: "button", role: "radio", class: "net", "data-key": c.code, disabled: tooSmall(c),
        "aria-checked": selected === c.code ? "true" : "false", onclick: onPick(c.code) },
      c.network, tooSmall(c) ? h("span", { class: "net-min" }, ` · ${from(c)}`) : null))));
  });
}

/** 🔔 Notify me (or 🔕 Don't notify me) on a product sold out in a district. */
async function watchBox(product, district, v) {
  if (S.watches == null) await loadWatches();
  const on = watching(product.id, district.id);
  const told = tr("🔔 We will message you in Telegram when it is back here.");
  const button = h("button", { type: "button", class: on ? "btn secondary watch" : "btn watch" },
    on ? tr("🔕 Don't notify me") : tr("🔔 Notify me"));
  button.addEventListener("click", busy(button, async () => {
    try {
      gotWatches(await api("/api/watch", { method: on ? "DELETE" : "POST",
                                           body: { product_id: product.id, district_id: district.id } }));
      tg.haptic("select");
      toast(on ? tr("🔕 You will not be told when it is back.") : told);
    } catch (e) {
      fail(e);
      await Promise.allSettled([loadCatalog(), loadWatches()]);   // it may be back in stock already
    }
    if (v.alive) render();
  }));
  return [h("p", { class: "note watch-note" }, on ? told
    : tr("Sold out here for now. We can message you in Telegram when it is back.")), button];
}

// Checkout ####################################################################

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

/** What a checkout sells and what it costs each way the shop takes, as the shop words it (POST
 * /api/checkout/quote): {lines, total_text, stars_text, methods, parts, ways, body}. methods null:
 * the shop cannot tell (a line is no longer sold). null: nothing to sell. */
async function checkoutPlan(p) {
  const body = p.type === "basket" ? { type: "basket" }
    : { type: "product", product_id: p.product, district_id: p.district, quantity: p.quantity };
  if (p.type !== "basket" && !findOffer(p.product, p.district)) return null;
  let plan;
  try {
    plan = await api("/api/checkout/quote", { method: "POST", body });
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
  return plan.lines.length ? { ...plan, body } : null;
}

function summary(lines) {
  return h("ul", { class: "lines summary" }, lines.map((l) => h("li", { class: "line" }, photo(l, "thumb small"),
    h("div", { class: "line-text" }, h("span", { class: "line-name" }, l.name), h("span", { class: "line-place" }, l.place)),
    h("span", { class: "line-sum" }, tr("{quantity} × {price}", { quantity: l.quantity, price: l.price_text })))));
}

/** Whether methods allow paying with key: a way (stars, balance) or a coin (crypto). */
function allows(methods, key) {
  return methods.includes(METHODS.includes(key) ? key : "crypto");
}

function payLabel(method, amount) {
  if (method === "stars") return tr("Pay {stars}", { stars: amount.stars_text });
  if (method === "balance") return tr("Pay {amount} from balance", { amount: amount.total_text });
  return tr("Pay {amount} with {coin}", { amount: amount.total_text, coin: coinLabel(method) });
}

/** The ways to pay as radio options (Stars first, then the balance, then each coin) and the
 * MainButton that pays the chosen way. amountOf(method) -> what paying that way costs, from the
 * shop: {total, total_text, stars_text, balance_text, short_text}. */
function payChoice(p, v, methods, amountOf, coins, pay) {
  const balance = amountOf("balance");
  if (p.method === undefined || (p.method && !allows(methods, p.method))) {
    p.method = methods.includes("balance") && !balance.short_text ? "balance" : onlyStars(methods) ? "stars" : null;
  }
  const offer = () => {
    if (!p.method) v.main(tr("Choose how to pay"), null, { disabled: true });
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
    options.push(option({ key: "stars", wide: true, title: tr("⭐ Telegram Stars — {stars}", { stars: amountOf("stars").stars_text }),
      sub: S.me.sandbox ? tr("🧪 Simulated here: no real Stars") : tr("Paid inside Telegram"), selected: p.method === "stars",
      onPick: pick("stars") }));
  }
  if (methods.includes("balance")) {
    options.push(option({ key: "balance", title: tr("💰 Balance"), selected: p.method === "balance",
      sub: balance.short_text ? tr("{balance} · {short} short", { balance: balance.balance_text, short: balance.short_text })
        : tr("{balance} available", { balance: balance.balance_text }),
      disabled: !!balance.short_text, onPick: pick("balance") }));
  }
  let note = null;
  if (methods.includes("crypto") && coins instanceof Error) {
    note = h("p", { class: "warn" }, `${tr("Crypto payments are unavailable right now.")} ${coins.message}`);
  } else if (methods.includes("crypto")) {
    options.push(...coinChoices(coins, cents(amountOf("crypto").total), p.method, pick));
  }
  offer();
  const group = h("div", { class: "options", role: "radiogroup", "aria-label": tr("Pay with") }, options);
  return [group, note, methods.includes("balance") && balance.short_text
    ? h("button", { type: "button", class: "btn secondary", onclick: () => go("account") }, tr("Top up your balance")) : null];
}

async function startPayment(p, body) {
  let result;
  try {
    result = await api("/api/payment/create", { method: "POST", body: { ...body, currency: p.method, request_id: p.rid } });
  } catch (e) {
    // Refused: a new checkout next. No answer: the same one (never bought twice).
    if (e.status) p.rid = requestId();
    throw e;
  }
  if (p.method === "balance") {
    tg.haptic("success");
    S.me.balance = result.balance;
    S.me.balance_text = result.balance_text;
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
    const name = line ? line.name : tr("An item");
    return h("span", { class: "part-line" }, tr("{name} × {quantity}", { name, quantity }));
  });
  return h("button", { type: "button", role: "radio", class: "part", "aria-checked": selected ? "true" : "false",
                       "data-part": index, disabled: !part.methods.length, onclick: onPick },
    h("span", { class: "part-head" }, h("strong", null, tr("Part {n}", { n: index + 1 })),
      h("span", { class: "part-total" }, part.total_text, part.stars_text ? ` · ${part.stars_text}` : "")),
    names, h("span", { class: "part-ways" }, paidWith(part.methods)));
}

/** A basket whose lines share no way to pay: each part with its ways and total. The shopper pays
 * one part (the shop checks out every line that may be paid the chosen way); the rest stays. */
function splitCheckout(p, v, plan, coins, amountOf) {
  const { parts } = plan;
  const payable = parts.map((part, i) => (part.methods.length ? i : -1)).filter((i) => i >= 0);
  if (!payable.includes(p.part)) p.part = payable.length ? payable[0] : null;
  const cards = h("div", { class: "parts", role: "radiogroup", "aria-label": tr("Parts of your basket") });
  const payArea = h("div", { class: "part-pay" });
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
      payArea.replaceChildren(h("p", { class: "warn" }, tr("None of these can be paid here right now.")));
      v.main(null);
      return;
    }
    const choice = payChoice(p, v, parts[p.part].methods, amountOf, coins, () => startPayment(p, { type: "basket", part: true, total: amountOf(p.method).total }));
    payArea.replaceChildren(h("h2", null, tr("Pay for part {n} with", { n: p.part + 1 })), ...choice.filter(Boolean));
  };
  draw();
  const partLines = (part) => part.lines.map(([productId, districtId]) => ({ product_id: productId, district_id: districtId }));
  // TRANSLATORS: the heading of the screen where the shopper pays (a noun)
  return [h("h1", null, tr("Checkout")),
    h("p", { class: "split-note" }, tr("These items are paid in different ways, so they cannot be paid together. "
      + "Pay for one part now; the rest stays in your basket to pay next.")),
    parts.some((part) => ruled(partLines(part), part.methods)) ? h("p", { class: "note rule-note" }, ruleNote()) : null,
    cards, payArea];
}

// Invoices ####################################################################

function cryptoDetails(inv, v) {
  const amountLabel = h("span", null, coinLabel(inv.pay_currency));
  loadCoins().then(() => v.alive && amountLabel.replaceChildren(coinLabel(inv.pay_currency))).catch(() => {});
  const qr = h("img", { class: "qr", alt: tr("QR code with the address and amount"), width: 220, height: 220 });
  blobUrl(inv.qr_url).then((url) => { if (v.alive) qr.src = v.blob(url); else URL.revokeObjectURL(url); })
    .catch(() => qr.replaceWith(h("p", { class: "muted" }, tr("The QR code could not be loaded; copy the address instead."))));
  const wallet = /^(bitcoin|litecoin):/.test(inv.payment_uri || "")
    ? h("a", { class: "btn secondary", href: inv.payment_uri }, tr("Open in wallet")) : null;
  return h("section", { class: "pay-details" },
    h("div", { class: "copy-row" }, h("span", { class: "copy-label" }, tr("Send exactly")),
      h("span", { class: "copy-value" }, h("code", { class: "pay-amount" }, inv.pay_amount), amountLabel,
        h("button", { type: "button", class: "btn small", "aria-label": tr("Copy amount"),
                      onclick: () => copyText(inv.pay_amount, tr("Amount copied")) }, tr("Copy")))),
    copyRow(tr("To this address"), inv.pay_address, tr("Copy address"), tr("Address copied")),
    inv.payin_extra_id ? copyRow(tr("Memo / tag (required)"), inv.payin_extra_id, tr("Copy memo"), tr("Memo copied")) : null,
    inv.payin_extra_id ? h("p", { class: "warn" }, tr("Include the memo, or the payment cannot be matched to you.")) : null,
    h("div", { class: "qr-box" }, qr), wallet);
}

function cryptoNotes(inv) {
  const credited = cents(inv.credited);
  const amount = inv.credited_text;
  const say = (text) => h("p", null, text);
  if (inv.status === "finished" && inv.kind === "topup") return [say(tr("{amount} was added to your balance.", { amount }))];
  if (inv.status === "finished" && credited >= cents(inv.price_amount)) {
    return [say(tr("The payment arrived after the items were gone, so {amount} was added to your balance.", { amount }))];
  }
  if (inv.status === "finished") {
    return [say(inv.order_status === "paid" ? tr("Paid. Here are your items; they stay in My orders.") : tr("Paid. Your items are in My orders.")),
      credited ? say(tr("You sent more than needed: the extra {amount} was added to your balance.", { amount })) : null];
  }
  if (inv.status === "partially_paid") {
    return [say(credited ? tr("Only part of the amount arrived: {amount} was added to your balance.", { amount })
      : tr("Only part of the amount arrived."))];
  }
  if (["confirming", "confirmed", "sending"].includes(inv.status)) return [say(tr("Your payment is on its way; this page updates by itself."))];
  if (!inv.open) {
    return [say(tr("This invoice is no longer open. Money sent to it anyway is not lost: it is delivered or credited to your balance."))];
  }
  return [];
}

function starsDetails(inv) {
  return h("section", { class: "pay-details stars-pay" },
    h("p", { class: "stars-amount" }, inv.stars_text),
    h("p", { class: "muted" }, inv.invoice_link
      ? tr("Telegram shows the invoice over the shop: confirm it there. This page shows what the shop received.")
      : inv.simulate
        ? tr("🧪 There is no real Telegram invoice in the sandbox: the button below plays the payment, "
          + "through the same checks and delivery as real Stars.")
        : tr("Pay this invoice in the bot's chat; this page shows what the shop received.")));
}

/** What a Stars invoice's status means to the shopper; Telegram's hint only while it is open. */
function starsNotes(inv, hint) {
  const stars = inv.stars_text;
  const say = (text) => [h("p", null, text)];
  if (inv.status === "finished" && inv.order_status === "paid") {
    return say(tr("Paid with {stars}. Here are your items; they stay in My orders.", { stars }));
  }
  if (inv.status === "finished") {
    return say(tr("The payment arrived after the items were gone, so your {stars} are being given back to you.", { stars }));
  }
  if (inv.status === "refunded") {
    return say(inv.order_status === "refunded" ? tr("The shop refunded this order: your {stars} were given back to you.", { stars })
      : tr("Your {stars} were given back to you.", { stars }));
  }
  if (inv.status === "waiting" && inv.open) return hint && starsHint(hint) ? [h("p", { class: "hint" }, starsHint(hint))] : [];
  if (inv.order_status === "cancelled") {
    return say(tr("You cancelled this invoice and its items went back on sale. Stars paid for it anyway are given back to you."));
  }
  return say(tr("This invoice is no longer open and its items went back on sale. Stars paid for it anyway are given back to you."));
}

/** Full screen and a home screen shortcut, where Telegram has them (Bot API 8.0). */
function appTools(v) {
  const box = h("div", { class: "app-tools", hidden: true });
  const full = tg.canFullscreen() ? h("button", { type: "button", class: "chip tool", onclick: () => tg.setFullscreen(!tg.isFullscreen()) }) : null;
  const home = h("button", { type: "button", class: "chip tool", hidden: true, onclick: () => tg.addToHomeScreen() }, tr("📲 Add to home screen"));
  const draw = (homeStatus) => {
    if (full) full.textContent = tg.isFullscreen() ? tr("↙ Leave full screen") : tr("⛶ Full screen");
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
      // TRANSLATORS: the heading of the catalog when nothing is in stock
      return [h("h1", null, tr("Shop")), h("p", { class: "empty" }, tr("Nothing is in stock right now. Please look again later.")), appTools(v)];
    }
    return [h("h1", null, tr("Choose a city")), h("ul", { class: "list" }, cities.map((city) => {
      const products = city.districts.reduce((n, d) => n + inStock(d.products).length, 0);
      return row(city.name, `${ntr("{n} district", "{n} districts", city.districts.length)} · ${ntr("{n} product", "{n} products", products)}`,
                 () => go("districts", { city: city.id }));
    })), appTools(v)];
  },

  async districts(p) {
    const city = S.catalog.cities.find((c) => c.id === p.city);
    if (!city) return missing(tr("Nothing is in stock there any more."));
    return [h("h1", null, city.name), h("ul", { class: "list" }, city.districts.map((d) => {
      // TRANSLATORS: the lowest price in a district, e.g. "from €8.00"
      const from = tr("from {price}", { price: d.lowest_price_text });
      return row(d.name, `${ntr("{n} product", "{n} products", inStock(d.products).length)} · ${from}`,
                 () => go("products", { city: city.id, district: d.id }));
    }))];
  },

  async products(p, v) {
    const city = S.catalog.cities.find((c) => c.id === p.city);
    const district = city && city.districts.find((d) => d.id === p.district);
    if (!district) return missing(tr("Nothing is in stock there any more."));
    if (S.basket.count) v.main(tr("View basket · {total}", { total: S.basket.total_text }), () => go("basket"));
    return [h("h1", null, district.name), h("p", { class: "place" }, city.name),
      h("div", { class: "grid" }, district.products.map((product) => {
        const line = basketLine(product.id, district.id);
        const soldOut = product.available <= 0;
        return h("button", { type: "button", class: soldOut ? "card sold-out" : "card", onclick: () => go("product", { product: product.id, district: district.id }) },
          photo(product, "card-photo"),
          line ? h("span", { class: "card-badge", "aria-label": tr("In your basket") }, `×${line.quantity}`) : null,
          soldOut && watching(product.id, district.id)
            ? h("span", { class: "card-badge", "aria-label": tr("We will message you when it is back") }, "🔔") : null,
          h("span", { class: "card-name" }, product.name),
          h("span", { class: "card-meta" }, priceTag(product),
            h("span", { class: "stock" }, stock(product.available))));
      }))];
  },

  async product(p, v) {
    const found = findOffer(p.product, p.district);
    if (!found) return missing(tr("This product is sold out here now."));
    const { city, district, product } = found;
    const line = basketLine(product.id, district.id);
    const nodes = [photo(product, "hero", false), h("h1", null, product.name),
      h("p", { class: "place" }, `${city.name} / ${district.name}`),
      h("p", { class: "price-row" }, priceTag(product, "price big"),
        h("span", { class: "stock" }, stock(product.available))),
      onlyStars(product.methods) ? h("p", { class: "muted small" }, tr("⭐ Paid in Telegram Stars")) : null,
      product.description ? h("p", { class: "description" }, product.description) : null];
    if (product.available <= 0) return nodes.concat(await watchBox(product, district, v));
    if (line) {
      nodes.push(h("div", { class: "in-basket" },
        h("span", null, tr("In your basket: {amount}", { amount: line.sum_text })),
        stepper(line.quantity, Math.min(product.available, 100), product.name,
                (q) => setQuantity(product.id, district.id, q))));
      v.main(tr("View basket · {total}", { total: S.basket.total_text }), () => go("basket"));
    } else {
      v.main(tr("Add to basket · {price}", { price: product.price_text }), () => setQuantity(product.id, district.id, 1));
      nodes.push(h("button", { type: "button", class: "btn secondary",
        onclick: () => go("checkout", { type: "product", product: product.id, district: district.id, quantity: 1 }) },
        tr("Buy now")));
    }
    return nodes;
  },

  async basket(p, v) {
    if (Date.now() - S.basketAt > 2000) await loadBasket();   // the bot may have changed it
    const { items } = S.basket;
    if (!items.length) {
      return [h("h1", null, tr("Basket")), h("p", { class: "empty" }, tr("Your basket is empty.")),
              h("button", { type: "button", class: "btn", onclick: () => go("cities", {}, "reset") }, tr("Browse the shop"))];
    }
    v.main(tr("Checkout · {total}", { total: S.basket.total_text }), () => go("checkout", { type: "basket" }));
    const pay = S.basket.payment;
    const split = pay && !pay.methods.length && pay.parts.length > 1
      ? h("p", { class: "note split-note" }, tr("These items are paid in different ways, so checkout takes them one part at a time."))
      : null;
    return [h("h1", null, tr("Basket")), h("ul", { class: "lines" }, items.map((item) => {
      const short = item.available < item.quantity;
      const remove = h("button", { type: "button", class: "btn small ghost", "aria-label": tr("Remove {name}", { name: item.name }) },
        // TRANSLATORS: takes a line out of the basket
        tr("Remove"));
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
          h("span", { class: "line-sum" }, tr("{quantity} × {price} = {sum}", { quantity: item.quantity, price: item.price_text, sum: item.sum_text })),
          item.reserved ? h("span", { class: "note" }, ntr("{n} reserved for you: waiting for your payment",
                                                            "{n} reserved for you: waiting for your payment", item.reserved))
            : short ? h("span", { class: "warn" }, item.available ? ntr("Only {n} available now", "Only {n} available now", item.available)
              : tr("Sold out now")) : null),
        h("div", { class: "line-actions" },
          stepper(item.quantity, Math.min(item.available, 100), item.name,
                  (q) => setQuantity(item.product_id, item.district_id, q)), remove));
    // TRANSLATORS: beside the sum of the basket
    })), promoBox(S.basket), h("p", { class: "total" }, h("span", null, tr("Total")),
      h("strong", null, S.basket.total_text, inStars(pay && pay.stars_text))),
    split];
  },

  async checkout(p, v) {
    p.rid = p.rid || requestId();
    const [coins, plan] = await Promise.all([loadCoins().catch((e) => e), checkoutPlan(p), loadMe(),
                                             p.type === "basket" ? loadBasket() : null]);
    if (!S.me.can_buy) {
      return [h("h1", null, tr("Checkout")),
        h("p", { class: "note" }, tr("🧪 This shop is in test mode: it is not selling yet, so nothing can be bought or paid here."))];
    }
    if (!plan) return missing(p.type === "basket" ? tr("Your basket is empty.") : tr("This product is sold out here now."));
    if (!plan.methods) {
      return [h("h1", null, tr("Checkout")), summary(plan.lines),
        h("p", { class: "warn" }, tr("Something in your basket is no longer sold here. Please take it out of the basket first.")),
        h("button", { type: "button", class: "btn", onclick: () => go("basket", {}, "reset") }, tr("Back to the basket"))];
    }
    const amountOf = (method) => plan.ways[METHODS.includes(method) ? method : "crypto"] || {};
    if (!plan.methods.length && plan.parts.length) return splitCheckout(p, v, plan, coins, amountOf);
    const choice = plan.methods.length ? payChoice(p, v, plan.methods, amountOf, coins, () => startPayment(p, { ...plan.body, total: amountOf(p.method).total })) : null;
    const refused = plan.promo && plan.promo.refused ? h("p", { class: "warn" }, `🏷 ${plan.promo.refused}`) : null;
    return [h("h1", null, tr("Checkout")), summary(plan.lines), discountLines(plan.promo), refused,
      h("p", { class: "total" }, h("span", null, tr("Total")), h("strong", null, plan.total_text, inStars(plan.stars_text))),
      plan.methods.length ? h("h2", null, tr("Pay with")) : h("p", { class: "warn" }, tr("This cannot be paid here right now.")),
      ruled(plan.lines, plan.methods) ? h("p", { class: "note rule-note" }, ruleNote()) : null,
      choice];
  },

  async invoice(p, v) {
    let inv = p.invoice || await api(`/api/payment/status/${encodeURIComponent(p.payment)}`);
    p.invoice = null;   // coming back here later asks for the status again
    const stars = inv.pay_currency === "xtr";
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
        countdown.textContent = inv.kind === "order" ? tr("Pay within {time} · the items are reserved until then", { time: clock(left) })
          : tr("Pay within {time}", { time: clock(left) });
      } else {
        countdown.textContent = tr("Time is up; checking…");
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
      const notes = [h("span", { class: `pill ${closed ? "expired" : inv.status}` }, closed ? tr("⌛ No longer open") : inv.status_text),
        ...(stars ? starsNotes(inv, hint) : cryptoNotes(inv))];
      if (inv.sandbox) {
        notes.unshift(h("p", { class: "sandbox" }, stars ? tr("🧪 Sandbox: a test invoice, no real Stars.")
          : tr("🧪 Sandbox: a test invoice, no real money.")));
      }
      status.replaceChildren(...notes.filter(Boolean));
      details.hidden = inv.final || closed;
      const buttons = [];
      if (inv.status === "waiting" && inv.open) {
        if (stars && inv.simulate && !inv.invoice_link) {
          const pay = h("button", { type: "button", class: "btn simulate-stars" }, tr("🧪 Pay {stars} (simulated)", { stars: inv.stars_text }));
          pay.addEventListener("click", busy(pay, async () => {
            await api(`/api/payment/${inv.payment_id}/simulate`, { method: "POST", body: { outcome: "full" } });
            hurry();
          }));
          buttons.push(pay);
        }
        const cancel = h("button", { type: "button", class: "btn ghost" }, tr("Cancel invoice"));
        cancel.addEventListener("click", busy(cancel, async () => {
          const ask = stars ? tr("Cancel this invoice? Its items go back on sale.") : tr("Cancel this invoice? Do not send money to it afterwards.");
          if (!await tg.showConfirm(ask)) return;
          update(await api(`/api/payment/${inv.payment_id}/cancel`, { method: "POST" }));
        }));
        buttons.push(cancel);
        if (inv.simulate && !stars) {
          const outcomes = [["full", tr("Pay in full")], ["partial", tr("Pay half")], ["over", tr("Overpay")], ["expire", tr("Let it expire")]];
          buttons.push(h("div", { class: "simulate" }, h("p", { class: "muted" }, tr("🧪 Simulate payment (sandbox):")),
            outcomes.map(([outcome, label]) => {
              const b = h("button", { type: "button", class: "btn small secondary" }, label);
              b.addEventListener("click", busy(b, async () => {
                await api(`/api/payment/${inv.payment_id}/simulate`, { method: "POST", body: { outcome } });
                toast(tr("Simulating: the status changes in a moment"));
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
      if (inv.final && inv.kind === "order") v.main(tr("Open my orders"), () => go("orders", { highlight: inv.order_id }, "reset"));
      // TRANSLATORS: the button under a finished top-up; it goes back to the balance
      else if (inv.final) v.main(tr("Done"), () => go("account", {}, "reset"));
      else if (stars && inv.invoice_link && inv.open && inv.status === "waiting") v.main(tr("Pay {stars}", { stars: inv.stars_text }), openStars);
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
    const amount = stars ? inv.stars_text : inv.price_text;
    const title = inv.kind === "topup" ? tr("Top-up · {amount}", { amount }) : tr("Order #{id} · {amount}", { id: inv.order_id, amount });
    return [h("h1", null, title), stars ? h("p", { class: "muted" }, tr("{amount} in Telegram Stars", { amount: inv.price_text })) : null,
      inv.discount_text ? h("p", { class: "muted" }, inv.discount_text) : null, status, countdown, details, actions, goods];
  },

  /** A purchase paid from the balance: paid at once, so its goods are here at once. */
  async paid(p, v) {
    const order = await findOrder(p.order);
    if (!order) return missing(tr("This order is not among your orders."));
    v.main(tr("Open my orders"), () => go("orders", { highlight: order.id }, "reset"));
    return [h("h1", null, tr("Order #{id} · {amount}", { id: order.id, amount: order.total_text })),
      h("div", { class: "status", role: "status" }, h("span", { class: `pill ${order.status}` }, orderStatus(order.status)),
        h("p", null, tr("Paid from your balance; {balance} is left. Here are your items; they stay in My orders.",
                        { balance: S.me.balance_text }))),
      h("div", { class: "actions" }, restOfBasket()), h("div", { class: "goods" }, goodsSection(order, v))];
  },

  async orders(p, v) {
    const data = await api("/api/orders");
    if (!data.orders.length) {
      return [h("h1", null, tr("My orders")), h("p", { class: "empty" }, tr("You have no orders yet.")),
              h("button", { type: "button", class: "btn", onclick: () => go("cities", {}, "reset") }, tr("Browse the shop"))];
    }
    const list = h("div", { class: "orders" }, data.orders.map((o) => orderCard(o, v, p.highlight)));
    const nodes = [h("h1", null, tr("My orders")), list];
    let next = data.next_before;
    if (next) {
      const more = h("button", { type: "button", class: "btn secondary" }, tr("Show older orders"));
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
    const who = h("p", { class: "muted" }, me.first_name, me.username ? ` (@${me.username})` : "",
                  " · ", tr("Telegram ID {id}", { id: me.id }));
    // Referrals on: the shopper's link, and what it earns (the shop's words).
    const invite = me.referral ? [
      copyRow(tr("Invite friends"), me.referral.link, tr("Copy your invite link"), tr("Link copied")),
      h("p", { class: "muted" }, me.referral.text)] : [];
    if (!me.can_buy) {
      return [h("h1", null, tr("Balance")), h("p", { class: "balance" }, me.balance_text), who,
        h("p", { class: "muted" }, tr("Top-ups open once the shop starts selling.")), ...invite, languagePicker()];
    }
    return [h("h1", null, tr("Balance")), h("p", { class: "balance" }, me.balance_text), who,
      ...topUpForm(p, v, coins), ...invite, languagePicker()];
  },
};

/** Top up the balance: an amount (typed, or a suggested one) and a coin; the MainButton pays. */
function topUpForm(p, v, coins) {
  const me = S.me;
  const min = cents(me.min_deposit);
  const max = cents(me.max_deposit);
  const range = { min: me.min_deposit_text, max: me.max_deposit_text };
  p.rid = p.rid || requestId();
  const input = h("input", { id: "amount", type: "text", inputmode: "decimal", autocomplete: "off",
                             placeholder: tr("e.g. 20"), "aria-describedby": "amount-hint" });
  input.value = p.amount || "";
  const list = h("div", { class: "options", role: "radiogroup", "aria-label": tr("Top up with") });
  let asking = null;
  const refresh = () => {
    const amount = parseAmount(input.value);
    const valid = amount >= min && amount <= max;
    const coin = Array.isArray(coins) ? coins.find((c) => c.code === p.coin) : null;
    if (coins instanceof Error) {
      list.replaceChildren(h("p", { class: "warn" }, `${tr("Crypto payments are unavailable right now.")} ${coins.message}`));
    } else {
      list.replaceChildren(...coinChoices(coins, valid ? amount : null, p.coin,
        (code) => () => { p.coin = code; tg.haptic("select"); refresh(); }));
    }
    if (!input.value.trim()) v.main(tr("Enter an amount"), null, { disabled: true });
    else if (!valid) v.main(tr("From {min} to {max}", range), null, { disabled: true });
    else if (!p.coin) v.main(tr("Choose a coin"), null, { disabled: true });
    else if (coin && coin.minimum != null && cents(coin.minimum) > amount) {
      v.main(tr("{coin} takes {amount} or more", { coin: coin.label, amount: coin.minimum_text }), null, { disabled: true });
    } else if (S.amounts.get(amount)) {
      v.main(tr("Top up {amount} with {coin}", { amount: S.amounts.get(amount), coin: coinLabel(p.coin) }), topUp);
    } else {
      // The shop words the amount (a moment later): until then, or if it cannot, the button says
      // the coin alone.
      v.main(tr("Top up with {coin}", { coin: coinLabel(p.coin) }), topUp);
      if (!S.amounts.has(amount)) {
        clearTimeout(asking);
        asking = v.after(150, () => wordAmount(amount).then(() => v.alive && parseAmount(input.value) === amount && refresh()));
      }
    }
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
  const chips = (me.suggested_top_ups || []).map((s) =>
    h("button", { type: "button", class: "chip", onclick: () => {
      input.value = String(cents(s.amount) / 100);
      input.dispatchEvent(new Event("input"));
    } }, s.amount_text));
  refresh();
  // TRANSLATORS: the heading over the form that adds money to the balance
  return [h("h2", null, tr("Top up")),
    h("label", { for: "amount", class: "label" }, tr("Amount in EUR")), input,
    h("p", { id: "amount-hint", class: "muted small" }, tr("From {min} to {max}.", range)),
    h("div", { class: "chips" }, chips),
    h("h3", null, tr("Pay with")), list];
}

/** An amount the shopper typed, in the shop's words (kept in S.amounts, cents -> text; null
 * while asked, or when the shop could not say). */
async function wordAmount(amount) {
  if (S.amounts.has(amount)) return;
  S.amounts.set(amount, null);
  try {
    const quote = await api(`/api/payment/refill/quote?amount=${plainAmount(amount)}`);
    S.amounts.set(amount, quote.amount_text);
  } catch (e) { /* the button keeps saying the coin alone */ }
}

/** The shop's languages by their own names, and Telegram's (the shopper's choice cleared). */
function languagePicker() {
  const select = h("select", { id: "language", class: "select", "aria-labelledby": "language-heading" },
    h("option", { value: "" }, tr("Telegram's language")),
    S.me.languages.map((l) => h("option", { value: l.code, lang: l.code.replace("_", "-") }, l.name)));
  select.value = S.me.language_choice || "";
  select.addEventListener("change", async () => {
    select.disabled = true;
    try {
      await switchLanguage(select.value || null);
    } catch (e) {
      select.disabled = false;
      select.value = S.me.language_choice || "";
      fail(e);
    }
  });
  return [h("h2", { id: "language-heading" }, tr("Language")), select];
}

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
    ntr("Pay for the rest of your basket ({n} item)", "Pay for the rest of your basket ({n} items)", S.basket.count)) : null;
}

/** A paid order's goods on the screen that says it is paid. */
function goodsSection(order, v) {
  return [h("h2", null, tr("Your items")), h("section", { class: "goods-box" }, orderItems(order, v))];
}

function orderItems(order, v) {
  return h("ul", { class: "items" }, order.items.map((item) => {
    const parts = [h("div", { class: "item-title" }, h("strong", null, item.name), ` · ${item.place} · ${item.price_text}`)];
    if (item.content != null) {
      parts.push(h("pre", { class: "content" }, item.content),
        h("button", { type: "button", class: "btn small", "aria-label": tr("Copy {name}", { name: item.name }),
                      onclick: () => copyText(item.content, tr("Content copied")) }, tr("Copy")));
    }
    if (item.media_url && item.media_url.startsWith("/api/")) {
      const img = h("img", { class: "media", alt: tr("Photo of {name}", { name: item.name }) });
      blobUrl(item.media_url).then((url) => { if (v.alive) img.src = v.blob(url); else URL.revokeObjectURL(url); })
        .catch(() => img.replaceWith(h("p", { class: "muted" }, tr("The photo could not be loaded."))));
      parts.push(img);
    }
    return h("li", { class: "item" }, parts);
  }));
}

function orderCard(order, v, highlight) {
  // TRANSLATORS: how an order was paid, after its date and total ("… · €25.00 · from balance")
  const how = { balance: tr("from balance"), stars: tr("Stars"), crypto: tr("crypto") }[order.method] || order.method;
  const amounts = [order.created_text, order.total_text, order.method === "stars" ? order.stars_text : null, how];
  return h("article", { class: "order" + (order.id === highlight ? " highlight" : ""), id: `order-${order.id}`,
                        "data-status": order.status },
    h("header", { class: "order-head" }, h("strong", null, tr("Order #{id}", { id: order.id })),
      h("span", { class: `pill ${order.status}` }, orderStatus(order.status))),
    h("p", { class: "muted small" }, amounts.filter(Boolean).join(" · ")),
    orderItems(order, v),
    order.status === "pending" && order.payment_id
      ? h("button", { type: "button", class: "btn", onclick: () => go("invoice", { payment: order.payment_id }) }, tr("Open invoice"))
      : null);
}

// Frame: header, tabs, start ##################################################

function updateChrome() {
  if (chrome.balance && S.me) {
    chrome.balance.textContent = S.me.balance_text;
    chrome.balance.setAttribute("aria-label", tr("Balance: {amount}", { amount: S.me.balance_text }));
  }
  if (chrome.count) {
    // Read out as "Basket 2 items"; shown as a 2 on the tab.
    const n = S.basket.count;
    // TRANSLATORS: read out after the number on the basket tab ("Basket, 2 items")
    chrome.count.replaceChildren(String(n), h("span", { class: "sr-only" }, ` ${ntr("item", "items", n)}`));
    chrome.count.hidden = !n;
  }
}

/** Keep the bottom padding (and toasts) clear of the dock: the main button and the tabs. */
function fitDock() {
  if (chrome.dock) document.documentElement.style.setProperty("--dock-h", `${chrome.dock.offsetHeight}px`);
}

function buildChrome() {
  document.querySelectorAll("header.top, aside.preview-note, .dock").forEach((n) => n.remove());
  if (chrome.resized) chrome.resized.disconnect();
  const fallback = tg.inTelegram ? null : tg.fallbackButtons(fitDock);
  chrome.balance = h("button", { type: "button", class: "chip balance-chip", onclick: () => go("account", {}, "reset") });
  const label = S.me.preview ? h("span", { class: "badge preview" }, tr("Preview (sandbox)"))
    : S.me.test_mode ? h("span", { class: "badge" }, tr("🧪 Test mode"))
    : S.me.sandbox ? h("span", { class: "badge" }, tr("🧪 Sandbox")) : null;
  // The name is never cut: beside Back and the balance with the badge under it, or when it is long,
  // on a row of its own under them.
  const long = Array.from(S.me.shop_name).length > 36;
  const header = h("header", { class: `top${long ? " long-name" : ""}${label ? "" : " no-badge"}` }, fallback && fallback.back,
    h("span", { class: "shop-name" }, S.me.shop_name), label, chrome.balance);
  chrome.tabs = {};
  chrome.count = h("span", { class: "count" });
  // TRANSLATORS: the four tabs at the bottom of the app, side by side on a phone: short words fit best
  const tabs = [["cities", ptr("tab", "Shop"), "🛍"], ["basket", ptr("tab", "Basket"), "🧺"], ["orders", ptr("tab", "Orders"), "📦"], ["account", ptr("tab", "Balance"), "💰"]];
  const nav = h("nav", { class: "tabs" }, tabs.map(([name, text, icon]) => {
    const button = chrome.tabs[name] = h("button", { type: "button", class: "tab", onclick: () => {
      if (name === "cities") loadCatalog().then(() => stack.length === 1 && stack[0].name === "cities" && render()).catch(() => {});
      go(name, {}, "reset");
    } }, h("span", { class: "tab-icon", "aria-hidden": "true" }, icon), h("span", { class: "tab-label" }, text),
    name === "basket" ? chrome.count : null);
    return button;
  }));
  const main = document.getElementById("app");
  main.before(header);
  if (S.me.preview) {
    main.before(h("aside", { class: "preview-note", "aria-label": tr("Preview") },
      tr("You are browsing as a preview shopper in the sandbox: nothing here is real, and payments can be simulated.")));
  } else if (S.me.test_mode) {
    main.before(h("aside", { class: "preview-note test-mode", "aria-label": tr("Test mode") }, h("p", { role: "status" }, S.me.can_buy
      ? tr("🧪 Test mode: you may buy here and simulate payments. Other shoppers cannot buy until the shop takes real payments.")
      : tr("🧪 Test mode: this shop is not selling yet. You are welcome to look around, but nothing can be bought."))));
  }
  chrome.dock = h("div", { class: "dock" }, fallback && fallback.main, nav);
  main.after(chrome.dock);
  if (window.ResizeObserver) (chrome.resized = new ResizeObserver(fitDock)).observe(chrome.dock);   // also once at the start
  updateChrome();
}

function fatal(message, link) {
  if (view) view.close();
  tg.setMainButton(null);
  tg.setBackButton(false);
  document.querySelectorAll("header.top, .dock").forEach((n) => n.remove());
  document.documentElement.style.removeProperty("--dock-h");
  document.getElementById("app").replaceChildren(h("div", { class: "fatal" }, h("p", null, message),
    link ? h("a", { class: "btn", href: link }, tr("Log in to the admin")) : null));
}

// Languages ###################################################################

/** The language the shop most likely speaks to this shopper, to fetch its texts alongside the
 * first API calls: the one the page's address names (/app?lang=de, from the bot), else the one it
 * spoke here last time, else Telegram's, else the page's (the shop's default). The API decides. */
function guessLanguage() {
  const page = document.documentElement.lang.replace("-", "_");
  if (new URLSearchParams(location.search).has("lang")) return page;
  try {
    const last = localStorage.getItem("shop.language");
    if (last) return last;
  } catch (e) { /* storage refused: guess on */ }
  return tg.languageCode().split("-")[0].toLowerCase() || page;
}

const catalogs = new Map();

/** Speak the language: its texts fetched once (a guess's fetch already under way is reused). */
async function speak(code) {
  if (!catalogs.has(code)) catalogs.set(code, fetchCatalog(code));
  try {
    useCatalog(await catalogs.get(code));
  } catch (e) {
    catalogs.delete(code);
    throw e;
  }
  try { localStorage.setItem("shop.language", code); } catch (e) { /* not remembered */ }
}

/** The shopper picked a language (null: Telegram's): the shop remembers it, and everything on the
 * page, its names and amounts too, is shown again in it. */
async function switchLanguage(code) {
  const me = await api("/api/language", { method: "POST", body: { language: code } });
  await speak(me.language);
  S.me = me;
  S.coins = null;
  S.amounts.clear();
  await Promise.all([loadCatalog(), loadBasket(), loadCoins().catch(() => {})]);
  buildChrome();
  render();
}

async function start() {
  tg.startTelegram({ onBack: back });
  tg.onAppEvent((event, data) => {
    if (event === "fullscreenFailed" && data.error !== "ALREADY_FULLSCREEN") toast(tr("Full screen is not available here."));
    if (view && view.alive && view.onApp) view.onApp(event, data);
  });
  const guess = guessLanguage();
  const guessed = () => speak(guess).catch(() => {});
  catalogs.set(guess, fetchCatalog(guess));
  catalogs.get(guess).catch(() => catalogs.delete(guess));
  let initData = tg.initData;
  if (!initData) {
    // Outside Telegram: a preview shopper, where offered (sandbox; with a bot, owners only).
    const preview = document.body.dataset.preview;
    if (!preview) {
      await guessed();
      return fatal(tr("Please open the shop from the Telegram bot."));
    }
    try {
      initData = (await api(preview, { auth: false })).initData;
    } catch (e) {
      await guessed();
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
    await guessed();
    return fatal(e.message);
  }
  await speak(S.me.language).catch(() => {});   // without its texts, the page speaks English
  buildChrome();
  go("cities");
  loadCoins().catch(() => {});   // ready before checkout
}

start();
