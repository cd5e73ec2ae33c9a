// The Mini App's own texts in the shopper's language. tr(), ntr() and ptr() are named as in
// shop.py, so one `pybabel extract` finds the texts of both; the translations come from the same
// catalogs (GET /app/i18n/<lang>.json). Amounts and dates are never formatted here: the shop sends
// them formatted, so the bot and the Mini App always write them alike.
// pybabel's reader of template literals ends a ${...} at its first "}": a call given values (an
// object literal) is written outside template literals, or it is never extracted.

let lang = "en";
let messages = {};
let forms = 2;
let rules = null;
// gettext numbers a language's plural forms in this order of CLDR's categories (pl/uk/ru: one 0,
// few 1, many 2; en/de/es/pt: one 0, other 1; es/pt's "many" for millions folds into the last).
const CATEGORIES = ["zero", "one", "two", "few", "many", "other"];

/** {lang, locale, plural, messages} from /app/i18n/<lang>.json. */
export function useCatalog(catalog) {
  lang = catalog.lang;
  messages = catalog.messages || {};
  forms = Number(catalog.plural) || 2;
  try {
    rules = new Intl.PluralRules(catalog.locale || lang.replace("_", "-"));
  } catch (e) {
    rules = null;
  }
  document.documentElement.lang = lang.replace("_", "-");
}

export const language = () => lang;

/** A language's catalog; rejects when the shop has no such language. */
export async function fetchCatalog(code) {
  const r = await fetch(`/app/i18n/${encodeURIComponent(code)}.json`);
  if (!r.ok) throw new Error(`no catalog for ${code}`);
  return r.json();
}

/** The gettext plural form for n (its index in the catalog's forms). */
export function pluralIndex(n) {
  if (!rules) return n === 1 ? 0 : 1;
  const own = rules.resolvedOptions().pluralCategories;
  const order = CATEGORIES.filter((c) => own.includes(c));
  return Math.max(0, Math.min(order.indexOf(rules.select(n)), forms - 1));
}

/** "{name}" placeholders filled from values, as Python's str.format fills them. */
function fill(text, values) {
  if (!values) return text;
  return text.replace(/\{(\w+)\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
}

/** text in the shopper's language, its {placeholders} filled from values. */
export function tr(text, values) {
  const found = messages[text];
  return fill(typeof found === "string" && found ? found : text, values);
}

/** The plural form for n, in the language's own count of forms ({n} is filled in too). */
export function ntr(singular, plural, n, values) {
  const found = messages[singular];
  const text = Array.isArray(found) && found[pluralIndex(n)] ? found[pluralIndex(n)] : n === 1 ? singular : plural;
  return fill(text, { n, ...values });
}

/** tr() for a short text whose meaning depends on where it stands (gettext's msgctxt). */
export function ptr(context, text, values) {
  const found = messages[`${context}\u0004${text}`];
  return fill(typeof found === "string" && found ? found : text, values);
}
