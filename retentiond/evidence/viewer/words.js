// The page's language: every text a reader sees is t("English", {name: value}) (or ngettext),
// extracted into the viewer catalogue by tools/messages.py. viewer_page embeds that catalogue's
// strings for the page's language; the English is the code's own.
//
// t() gives a Text, not a string: shown (toString, as the DOM takes it) it is in the page's
// language, with counts (count(n)) written the language's way; as JSON (toJSON) it is the English, word for
// word as `retentiond audit verify` writes it, so the result in #result stays that of
// `audit verify --json` whatever the page's language.
"use strict";

const WORDS = JSON.parse(document.getElementById("words").textContent);
const LOCALE = WORDS.locale; // "en" or "de-DE"
const NUMBERS = new Intl.NumberFormat(LOCALE);
const DAYS = new Intl.DateTimeFormat(LOCALE, { day: "2-digit", month: "2-digit", year: "numeric", timeZone: "UTC" });

class Text {
  constructor(id, params, plural, count) {
    this.id = id;
    this.params = params || {};
    this.plural = plural;
    this.count = count;
  }
  render(english) {
    let pattern = this.id;
    if (this.plural !== undefined) {
      // English and German alike: one form for 1, the other for every other count
      const forms = english ? [this.id, this.plural] : WORDS.messages[this.id] || [this.id, this.plural];
      pattern = forms[this.count === 1 ? 0 : 1];
    } else if (!english && typeof WORDS.messages[this.id] === "string") {
      pattern = WORDS.messages[this.id];
    }
    return pattern.replace(/\{([a-z_]+)\}/g, (whole, name) => {
      if (!(name in this.params)) return whole;
      const value = this.params[name];
      if (value instanceof Text) return value.render(english);
      // counts as audit verify writes them in English (200000), in another language its way
      // (200.000); other numbers (an entry's seq, a line) are names and stay as they are
      if (value instanceof Count) return english || LOCALE === "en" ? String(value.n) : NUMBERS.format(value.n);
      return String(value);
    });
  }
  toString() {
    return this.render(false);
  }
  toJSON() {
    return this.render(true);
  }
}

// A number that counts something (entries, bytes, problems), for t's params.
class Count {
  constructor(n) {
    this.n = n;
  }
}

function count(n) {
  return new Count(n);
}

function t(id, params) {
  return new Text(id, params);
}

function ngettext(singular, plural, count, params) {
  return new Text(singular, { count: new Count(count), ...(params || {}) }, plural, count);
}

// A figure: 1,234 / 1.234.
function number(value) {
  return NUMBERS.format(value);
}

// The day of a time stamp ("2026-03-04T06:06:07.000000Z" or "2026-03-04"): 2026-03-04 / 04.03.2026.
function day(ts) {
  if (typeof ts !== "string" || !/^[0-9]{4}-[0-9]{2}-[0-9]{2}/.test(ts)) return ts;
  if (LOCALE === "en") return ts.slice(0, 10);
  return DAYS.format(new Date(ts.slice(0, 10) + "T00:00:00Z"));
}

// A time stamp to the second, in UTC: 2026-03-04 06:06:07 / 04.03.2026 06:06:07.
function moment(ts) {
  return `${day(ts)} ${ts.slice(11, 19)}`;
}
