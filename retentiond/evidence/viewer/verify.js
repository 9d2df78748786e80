// The deletion log's verifier for the browser: the same checks, in the same order and with the
// same words, as retentiond/evidence/log (entries.py, reading.py, verify.py, keys.py). Python
// is the reference; this file is a port of it. Nothing leaves the page: the files are read with
// FileReader-like File.arrayBuffer, hashes and signatures are checked with WebCrypto. Its words
// are t() Texts (words.js): the page shows them in its language, the result keeps the English.
"use strict";

const GENESIS = "0".repeat(64);
const MAX_LINE = 1024 * 1024;
const RESERVED = new Set(["seq", "ts", "type", "prev", "hash"]);
const CHECKPOINT = "checkpoint";
const CONTINUED = "continued";
const RUN_ENDS = new Set(["run_finished", "run_refused", "run_failed"]);
const CHECKPOINT_FIELDS = ["signed_seq", "signed_hash", "key_fingerprint", "signature"];
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));
const ENCODER = new TextEncoder();
const DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

class Broken extends Error {
  constructor(reason, seq = null) {
    super(reason);
    this.reason = reason;
    this.seq = seq;
    this.line = 0;
    this.file = null;
  }
}

// --- JSON as Python's json module reads and writes it ---------------------------------------

// A number keeps the text Python would write for it: JavaScript's numbers would lose big
// integers and write floats differently.
class PyNumber {
  constructor(text, isInt) {
    this.text = text;
    this.isInt = isInt;
  }
}

class JsonError extends Error {}

function pyFloat(x) {
  if (!Number.isFinite(x)) throw new JsonError("not finite");
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  let text = x.toExponential(); // the shortest digits that read back as x, like repr
  const negative = text[0] === "-";
  if (negative) text = text.slice(1);
  const [mantissa, exponentText] = text.split("e");
  const digits = mantissa.replace(".", "");
  const exponent = parseInt(exponentText, 10);
  const point = exponent + 1;
  let out;
  if (point > -4 && point <= 16) {
    if (point <= 0) out = "0." + "0".repeat(-point) + digits;
    else if (point >= digits.length) out = digits + "0".repeat(point - digits.length) + ".0";
    else out = digits.slice(0, point) + "." + digits.slice(point);
  } else {
    out = digits[0] + (digits.length > 1 ? "." + digits.slice(1) : "") + "e" +
      (exponent < 0 ? "-" : "+") + String(Math.abs(exponent)).padStart(2, "0");
  }
  return (negative ? "-" : "") + out;
}

// Parses JSON text into plain values; objects become arrays of [key, value] pairs in their
// order (a Map would hide duplicate keys, which Python's reader refuses).
class Parser {
  constructor(text, constants) {
    this.text = text;
    this.at = 0;
    this.constants = constants; // NaN and Infinity, which json.loads accepts by default
  }
  fail() {
    throw new JsonError("not JSON");
  }
  space() {
    const src = this.text;
    while (this.at < src.length) {
      const c = src.charCodeAt(this.at);
      if (c === 32 || c === 9 || c === 10 || c === 13) this.at++;
      else break;
    }
  }
  document() {
    this.space();
    const value = this.value(0);
    this.space();
    if (this.at !== this.text.length) this.fail();
    return value;
  }
  value(depth) {
    if (depth > 900) this.fail(); // Python's RecursionError
    const src = this.text;
    const c = src[this.at];
    if (c === "{") return this.object(depth);
    if (c === "[") return this.array(depth);
    if (c === '"') return this.string();
    if (src.startsWith("true", this.at)) { this.at += 4; return true; }
    if (src.startsWith("false", this.at)) { this.at += 5; return false; }
    if (src.startsWith("null", this.at)) { this.at += 4; return null; }
    if (this.constants) {
      for (const name of ["NaN", "Infinity", "-Infinity"]) {
        if (src.startsWith(name, this.at)) { this.at += name.length; return new PyNumber(name, false); }
      }
    }
    return this.number();
  }
  object(depth) {
    const src = this.text;
    this.at++;
    const pairs = [];
    const keys = new Set();
    this.space();
    if (src[this.at] === "}") { this.at++; return { pairs }; }
    for (;;) {
      this.space();
      if (src[this.at] !== '"') this.fail();
      const key = this.string();
      if (keys.has(key)) this.fail();
      keys.add(key);
      this.space();
      if (src[this.at] !== ":") this.fail();
      this.at++;
      this.space();
      pairs.push([key, this.value(depth + 1)]);
      this.space();
      const next = src[this.at++];
      if (next === "}") return { pairs };
      if (next !== ",") this.fail();
    }
  }
  array(depth) {
    const src = this.text;
    this.at++;
    const items = [];
    this.space();
    if (src[this.at] === "]") { this.at++; return items; }
    for (;;) {
      this.space();
      items.push(this.value(depth + 1));
      this.space();
      const next = src[this.at++];
      if (next === "]") return items;
      if (next !== ",") this.fail();
    }
  }
  string() {
    const src = this.text;
    let at = this.at + 1;
    let out = "";
    let start = at;
    for (;;) {
      if (at >= src.length) this.fail();
      const c = src.charCodeAt(at);
      if (c === 34) break;
      if (c < 32) this.fail(); // json.loads is strict about control characters
      if (c === 92) {
        out += src.slice(start, at);
        const e = src[at + 1];
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" }[e];
        if (simple !== undefined) {
          out += simple;
          at += 2;
        } else if (e === "u") {
          const hex = src.slice(at + 2, at + 6);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail();
          out += String.fromCharCode(parseInt(hex, 16));
          at += 6;
        } else this.fail();
        start = at;
      } else at++;
    }
    out += src.slice(start, at);
    this.at = at + 1;
    return out;
  }
  number() {
    const match = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/.exec(this.text.slice(this.at, this.at + 400));
    if (match === null || match[0] === "" || match[0] === "-") this.fail();
    this.at += match[0].length;
    const raw = match[0];
    if (match[2] === undefined && match[3] === undefined) {
      return new PyNumber(raw === "-0" ? "0" : raw, true);
    }
    return new PyNumber(pyFloat(Number(raw)), false);
  }
}

function pyString(text) {
  let out = '"';
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 32 && c !== 34 && c !== 92) continue;
    out += text.slice(start, i);
    start = i + 1;
    if (c === 34) out += '\\"';
    else if (c === 92) out += "\\\\";
    else if (c === 10) out += "\\n";
    else if (c === 13) out += "\\r";
    else if (c === 9) out += "\\t";
    else if (c === 8) out += "\\b";
    else if (c === 12) out += "\\f";
    else out += "\\u" + c.toString(16).padStart(4, "0");
  }
  return out + text.slice(start) + '"';
}

function byCodePoint(a, b) {
  return codePointOrder(a[0], b[0]);
}

function codePointOrder(x, y) {
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n;) {
    const p = x.codePointAt(i), q = y.codePointAt(i);
    if (p !== q) return p < q ? -1 : 1;
    i += p > 0xffff ? 2 : 1;
  }
  return x.length - y.length;
}

// json.dumps(separators=(",", ":"), ensure_ascii=False), sorted or in writing order.
function pyDumps(value, sorted) {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "string") return pyString(value);
  if (value instanceof PyNumber) {
    if (!value.isInt && !/^-?[0-9]/.test(value.text)) throw new JsonError("not finite");
    return value.text;
  }
  if (Array.isArray(value)) return "[" + value.map((item) => pyDumps(item, sorted)).join(",") + "]";
  const pairs = sorted ? value.pairs.slice().sort(byCodePoint) : value.pairs;
  return "{" + pairs.map(([k, v]) => pyString(k) + ":" + pyDumps(v, sorted)).join(",") + "}";
}

// Plain JavaScript values of the fields, for the checks and the figures.
function plain(value) {
  if (value instanceof PyNumber) return value.isInt ? Number(value.text) : Number(value.text);
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [k, v] of value.pairs) out[k] = plain(v);
    return out;
  }
  return value;
}

function isInt(value) {
  return value instanceof PyNumber && value.isInt;
}

// --- one line: entries.parse_line, in two steps around the hash ------------------------------

// Keys in code point order, as Python's sort_keys.
class Unsafe extends Error {}

const SORTED_KEYS = new Map(); // the keys of an object, as written -> in code point order

function sortedKeys(value) {
  const keys = Object.keys(value);
  const shape = keys.join("\u0000");
  let sorted = SORTED_KEYS.get(shape);
  if (sorted === undefined) {
    sorted = keys.slice().sort(codePointOrder);
    if (SORTED_KEYS.size < 10000) SORTED_KEYS.set(shape, sorted);
  }
  return sorted;
}

function canonicalOf(value, skip) {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new Unsafe();
    return String(value);
  }
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) {
    let out = "[";
    for (let i = 0; i < value.length; i++) out += (i ? "," : "") + canonicalOf(value[i]);
    return out + "]";
  }
  let out = "{";
  let first = true;
  for (const key of sortedKeys(value)) {
    if (key === skip) continue;
    out += (first ? "" : ",") + JSON.stringify(key) + ":" + canonicalOf(value[key]);
    first = false;
  }
  return out + "}";
}

// A float's token follows a key or an item; time stamps' "00.0" inside strings do not match.
const FLOAT_TOKEN = /(":|[,[])-?[0-9]+[.eE]/;
const INT_FIELDS = ["signed_seq", "previous_seq"];

// The fast path for lines as retentiond writes them: JSON.parse and JSON.stringify agree with
// Python's json exactly when no number is a float or beyond 2**53 and the line is in written
// form (JSON.stringify escapes strings as json.dumps(ensure_ascii=False) does). Anything else
// (null) goes the exact way, prepareLine.
function prepareQuick(text) {
  if (FLOAT_TOKEN.test(text)) return null;
  let obj;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    return null;
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return null;
  const keys = Object.keys(obj);
  if (keys[keys.length - 1] !== "hash" || JSON.stringify(obj) !== text) return null;
  const { seq, ts, type, prev, hash } = obj;
  if (typeof seq !== "number" || typeof ts !== "string" || typeof type !== "string" ||
      typeof prev !== "string" || typeof hash !== "string") return null;
  let canonical;
  try {
    canonical = canonicalOf(obj, "hash");
  } catch (e) {
    return null; // an integer beyond 2**53: only the exact way keeps its digits
  }
  // The reserved keys stay among the fields here: no check or figure reads them from there.
  const rawFields = {};
  if (type === CHECKPOINT || type === CONTINUED) {
    for (const k of INT_FIELDS) {
      const v = obj[k];
      rawFields[k] = typeof v === "number" ? new PyNumber(String(v), true) : v;
    }
  }
  return {
    canonical: ENCODER.encode(canonical),
    sameForm: true,
    entry: { seq, type, ts, prev, hash, fields: obj, rawFields },
  };
}

// The first step of parse_line: everything before the hash is compared. Returns the line's
// record: a Broken, or what the hash check and the entry need.
function prepareLine(raw, decoded) {
  let text = decoded;
  if (text === undefined) {
    try {
      text = DECODER.decode(raw);
    } catch (e) {
      return { broken: new Broken(t("not valid UTF-8")) };
    }
  }
  if (!text) return { broken: new Broken(t("empty line")) };
  const quick = prepareQuick(text);
  if (quick !== null) return quick;
  let obj;
  try {
    obj = new Parser(text, false).document();
  } catch (e) {
    return { broken: new Broken(t("not valid JSON")) };
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj) || obj instanceof PyNumber) {
    return { broken: new Broken(t("not a JSON object")) };
  }
  const get = (name) => {
    const pair = obj.pairs.find(([k]) => k === name);
    return pair === undefined ? undefined : pair[1];
  };
  const seqValue = get("seq");
  if (!isInt(seqValue)) return { broken: new Broken(t("missing or non-integer 'seq'")) };
  const seq = Number(seqValue.text);
  for (const key of ["ts", "type", "prev", "hash"]) {
    if (typeof get(key) !== "string") {
      return { broken: new Broken(t("missing or non-text '{key}'", { key }), seq) };
    }
  }
  const claimed = get("hash");
  const rest = { pairs: obj.pairs.filter(([k]) => k !== "hash") };
  let canonicalText, writtenText;
  try {
    canonicalText = pyDumps(rest, true);
    writtenText = pyDumps({ pairs: rest.pairs.concat([["hash", claimed]]) }, false);
  } catch (e) {
    return { broken: new Broken(t("not valid JSON")) };
  }
  const fields = {};
  const rawFields = {};
  for (const [k, v] of obj.pairs) {
    if (!RESERVED.has(k)) {
      fields[k] = plain(v);
      rawFields[k] = v;
    }
  }
  return {
    canonical: ENCODER.encode(canonicalText),
    sameForm: writtenText === text,
    entry: { seq, type: get("type"), ts: get("ts"), prev: get("prev"), hash: claimed, fields, rawFields },
  };
}

// The second step, once the digest is known.
function entryOf(record) {
  if (record.broken) throw record.broken;
  const entry = record.entry;
  if (record.digest !== entry.hash) throw new Broken(t("hash mismatch: the entry was changed"), entry.seq);
  if (!record.sameForm) {
    throw new Broken(t("not in the form retentiond writes: the line was edited"), entry.seq);
  }
  return entry;
}

function checkLink(entry, prevSeq, prevHash) {
  if (prevSeq === 0) {
    if (entry.seq !== 1) {
      throw new Broken(t("the first entry has seq {seq}, not 1: entries were removed", { seq: entry.seq }), entry.seq);
    }
    if (entry.prev !== GENESIS) {
      throw new Broken(t("the first entry's prev is not GENESIS: entries were removed"), 1);
    }
    return;
  }
  if (entry.seq !== prevSeq + 1) {
    throw new Broken(t("sequence jumps from {before} to {seq}", { before: prevSeq, seq: entry.seq }), entry.seq);
  }
  if (entry.prev !== prevHash) {
    throw new Broken(
      t("prev does not match the hash of entry {seq}: an entry was changed, removed or reordered", { seq: prevSeq }),
      entry.seq,
    );
  }
}

// --- the files: reading.py ------------------------------------------------------------------

function hex(buffer) {
  const bytes = new Uint8Array(buffer);
  let out = "";
  for (let i = 0; i < bytes.length; i++) out += HEX[bytes[i]];
  return out;
}

async function sha256(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

function isJson(raw) {
  try {
    new Parser(DECODER.decode(raw), true).document();
    return true;
  } catch (e) {
    return false;
  }
}

// Lines as Python's readline(MAX_LINE + 1) returns them: a line longer than that is a chunk
// without its newline.
function rawLines(bytes) {
  const lines = [];
  let start = 0;
  while (start < bytes.length) {
    let end = bytes.indexOf(10, start);
    end = end < 0 ? bytes.length : end + 1;
    if (end - start > MAX_LINE + 1) end = start + MAX_LINE + 1;
    lines.push(bytes.subarray(start, end));
    start = end;
  }
  return lines;
}

function rotationNumber(base, name) {
  const prefix = base + ".";
  const suffix = name.startsWith(prefix) ? name.slice(prefix.length) : "";
  if (/^[0-9]+$/.test(suffix) && !suffix.startsWith("0")) return parseInt(suffix, 10);
  return null;
}

// The order reading.py reads the files in: `<log>.1`, `<log>.2`, ... then `<log>`. The log's
// name is the picked file whose name the others extend (or, without it, their common base).
function orderFiles(files) {
  const names = files.map((f) => f.name);
  if (new Set(names).size !== names.length) throw new Error(t("the same file name was picked twice"));
  let base = names.find((name) => names.every((other) => other === name || rotationNumber(name, other) !== null));
  if (base === undefined) {
    const stripped = new Set(names.map((name) => name.replace(/\.[1-9][0-9]*$/, "")));
    if (stripped.size === 1 && names.every((name) => rotationNumber([...stripped][0], name) !== null)) {
      base = [...stripped][0];
    } else {
      throw new Error(t(
        "pick the files of one log: the log (e.g. audit.jsonl) and its rotated files " +
          "(audit.jsonl.1, audit.jsonl.2, ...)",
      ));
    }
  }
  const keyed = files.map((f) => [f.name === base ? Infinity : rotationNumber(base, f.name), f]);
  keyed.sort((a, b) => a[0] - b[0]);
  return keyed.map(([, f]) => f);
}

function continuation(names, index, entry, prevSeq, prevHash, state) {
  const name = names[index];
  if (entry.type !== CONTINUED) {
    throw new Broken(
      t(
        "{file} does not start with a continued entry, so it does not go on from {earlier}: " +
          "log files were replaced or renamed",
        { file: name, earlier: names[index - 1] },
      ),
      entry.seq,
    );
  }
  const named = entry.fields.previous_file;
  const previousSeq = entry.rawFields.previous_seq;
  const previousHash = entry.fields.previous_hash;
  if (!(typeof named === "string" && isInt(previousSeq) && typeof previousHash === "string")) {
    throw new Broken(t("a continued entry without previous_file, previous_seq and previous_hash"), entry.seq);
  }
  const pSeq = Number(previousSeq.text);
  if (pSeq !== entry.seq - 1 || previousHash !== entry.prev) {
    throw new Broken(t("the continued entry contradicts its own seq and prev"), entry.seq);
  }
  if (index === 0) {
    if (names.includes(named)) {
      throw new Broken(
        t(
          "{file} goes on from {named}, which is here too, but not before it: log files were renamed or reordered",
          { file: name, named },
        ),
        entry.seq,
      );
    }
    state.beginsAfter = named;
    return [pSeq, previousHash];
  }
  const before = names[index - 1];
  if (named !== before) {
    if (names.includes(named)) {
      throw new Broken(
        t(
          "{file} goes on from {named}, but the file before it is {earlier}: log files were renamed or reordered",
          { file: name, named, earlier: before },
        ),
        entry.seq,
      );
    }
    throw new Broken(
      t(
        "{named} is missing: {file} goes on from it (after entry {seq}), but the file before it here is {earlier}",
        { named, file: name, seq: pSeq, earlier: before },
      ),
      entry.seq,
    );
  }
  if (pSeq !== prevSeq || previousHash !== prevHash) {
    throw new Broken(
      pSeq === prevSeq
        ? t(
          "{file} goes on from entry {seq} of {named}, but {named} ends with entry {last} of another hash: " +
            "entries were removed from or added to the end of {named}, or it was replaced",
          { file: name, seq: pSeq, named, last: prevSeq },
        )
        : t(
          "{file} goes on from entry {seq} of {named}, but {named} ends with entry {last}: " +
            "entries were removed from or added to the end of {named}, or it was replaced",
          { file: name, seq: pSeq, named, last: prevSeq },
        ),
      entry.seq,
    );
  }
  return [prevSeq, prevHash];
}

function describeTorn(torn) {
  return ngettext(
    "the last line is incomplete ({count} byte at {file}:{line}, likely a power loss while it was written); " +
      "the next run moves it aside and records that in the log",
    "the last line is incomplete ({count} bytes at {file}:{line}, likely a power loss while it was written); " +
      "the next run moves it aside and records that in the log",
    torn.bytes,
    { file: torn.file, line: torn.line },
  );
}

// Reads and prepares every line, and hashes them all at once: WebCrypto's digests run in
// parallel, which awaiting them one by one would not.
async function prepareFiles(ordered) {
  const prepared = [];
  const digests = [];
  let batch = [];
  // Hashed a chunk at a time while the next chunk is parsed: WebCrypto works beside the page.
  const flush = () => {
    const records = batch;
    batch = [];
    digests.push(Promise.all(records.map((record) =>
      crypto.subtle.digest("SHA-256", record.canonical).then((d) => {
        record.digest = hex(d);
        record.canonical = null;
      }))));
  };
  for (let index = 0; index < ordered.length; index++) {
    const bytes = new Uint8Array(await ordered[index].arrayBuffer());
    const last = index === ordered.length - 1;
    const lines = rawLines(bytes);
    // One decoding of the whole file when it is valid UTF-8 and no line is over the limit:
    // splitting the text at newlines splits the bytes at the same places.
    let texts = null;
    if (lines.every((raw) => raw.length <= MAX_LINE)) {
      try {
        texts = DECODER.decode(bytes).split("\n");
      } catch (e) {
        texts = null;
      }
    }
    const records = new Array(lines.length);
    for (let i = 0; i < lines.length; i++) {
      const raw = lines[i];
      const newline = raw.length > 0 && raw[raw.length - 1] === 10;
      if (!newline) {
        const record = { raw, newline };
        if (last && i === lines.length - 1 && raw.length <= MAX_LINE && !isJson(raw)) {
          record.cutShort = true;
          digests.push(sha256(raw).then((d) => { record.rawDigest = d; }));
        }
        records[i] = record;
        continue;
      }
      const record = prepareLine(raw.subarray(0, raw.length - 1), texts === null ? undefined : texts[i]);
      record.newline = true;
      records[i] = record;
      if (record.canonical) {
        batch.push(record);
        if (batch.length >= 5000) flush();
      }
    }
    prepared.push({ name: ordered[index].name, records });
  }
  flush();
  await Promise.all(digests);
  return prepared;
}

function entryFrom(record) {
  if (!record.newline) {
    if (record.raw.length > MAX_LINE) throw new Broken(t("line longer than {limit} bytes", { limit: MAX_LINE }));
    if (isJson(record.raw)) {
      throw new Broken(t(
        "the last line has no newline, yet is complete JSON, so no write was cut short there: " +
          "retentiond ends every line with a newline; the line was edited, or lost exactly its newline",
      ));
    }
    throw new Broken(t(
      "incomplete last line in a rotated file (a file is complete when it is rotated): it was cut or edited",
    ));
  }
  return entryOf(record);
}

// reading.walk: calls visit(file, line, entry) for each intact entry; throws Broken.
function walk(prepared, state, visit) {
  const names = prepared.map((f) => f.name);
  state.files = names;
  const several = names.length > 1;
  let prevSeq = 0, prevHash = GENESIS;
  for (let index = 0; index < prepared.length; index++) {
    const name = names[index];
    const last = index === prepared.length - 1;
    let line = 0;
    for (const record of prepared[index].records) {
      line++;
      if (last && record.cutShort) {
        if (line === 1 && several) {
          const tornOnly = new Broken(t(
            "{file} holds only an incomplete line, but the current file of a rotated log always " +
              "starts with a complete continued entry: it was emptied or replaced",
            { file: name },
          ));
          tornOnly.line = line;
          tornOnly.file = name;
          throw tornOnly;
        }
        state.torn = { file: name, line, bytes: record.raw.length, sha256: record.rawDigest, after_seq: prevSeq };
        return;
      }
      let entry;
      try {
        entry = entryFrom(record);
        if (line === 1 && (index > 0 || entry.type === CONTINUED)) {
          [prevSeq, prevHash] = continuation(names, index, entry, prevSeq, prevHash, state);
        } else if (entry.type === CONTINUED) {
          throw new Broken(
            t("a continued entry inside {file}, not at its start: log files were joined", { file: name }),
            entry.seq,
          );
        }
        checkLink(entry, prevSeq, prevHash);
      } catch (broken) {
        if (!(broken instanceof Broken)) throw broken;
        broken.line = line;
        broken.file = name;
        throw broken;
      }
      visit(name, line, entry);
      prevSeq = entry.seq;
      prevHash = entry.hash;
    }
    if (line === 0 && several) {
      const empty = new Broken(t(
        "{file} is empty, but a rotated log file always starts with a continued entry: it was emptied or replaced",
        { file: name },
      ));
      empty.line = 1;
      empty.file = name;
      throw empty;
    }
  }
}

// --- keys: keys.VerifyKey -------------------------------------------------------------------

function fromBase64(text) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) return null;
  const binary = atob(text);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

async function importKeys(embedded) {
  const keys = new Map();
  for (const key of embedded) {
    const raw = fromBase64(key.raw);
    const fingerprint = await sha256(raw);
    const imported = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
    keys.set(fingerprint, imported);
  }
  return keys;
}

async function signatureValid(key, seq, hash, fingerprint, signature) {
  const raw = fromBase64(signature);
  if (raw === null) return false;
  // keys.signed_message: canonical({"seq", "hash", "fingerprint"})
  const message = ENCODER.encode(
    `{"fingerprint":${JSON.stringify(fingerprint)},"hash":${JSON.stringify(hash)},"seq":${seq}}`,
  );
  try {
    return await crypto.subtle.verify({ name: "Ed25519" }, key, raw, message);
  } catch (e) {
    return false;
  }
}

// --- verify.check_log -----------------------------------------------------------------------

class Checkpoints {
  constructor(keys, heads) {
    this.keys = keys;
    this.heads = new Map();
    for (const [seq, hash] of heads) {
      if (!this.heads.has(seq)) this.heads.set(seq, new Set());
      this.heads.get(seq).add(hash);
    }
    this.seenHeads = new Set();
    this.problems = [];
    this.count = 0;
    this.valid = 0;
    this.last = null;
    this.pending = null;
    this.tail = 0;
    this.firstUnsigned = null;
    this.tailRuns = 0;
    this.endedUnsigned = false;
    this.runEntries = 0;
  }
  problem(kind, message, where) {
    if (where === null) this.problems.push({ kind, message, seq: null, file: null, line: null });
    else this.problems.push({ kind, message, seq: where[2].seq, file: where[0], line: where[1] });
  }
  entry(file, line, entry) {
    const where = [file, line, entry];
    const expected = this.heads.get(entry.seq);
    if (expected !== undefined) {
      this.seenHeads.add(entry.seq);
      for (const hash of [...expected].filter((h) => h !== entry.hash).sort()) {
        this.problem(
          "head",
          t(
            "entry {seq} has hash {hash}, not the expected head {expected}: " +
              "the log was rewritten after that head was copied",
            { seq: entry.seq, hash: entry.hash, expected: hash },
          ),
          where,
        );
      }
    }
    if (entry.type === CHECKPOINT) {
      this.checkpoint(where);
      return;
    }
    this.tail += 1;
    if (this.firstUnsigned === null) this.firstUnsigned = where;
    if (!("run_id" in entry.fields)) return;
    this.runEntries += 1;
    this.tailRuns += 1;
    if (this.pending !== null) {
      this.missing(this.pending);
      this.pending = null;
    }
    if (RUN_ENDS.has(entry.type)) {
      if (entry.fields.unsigned === true) this.endedUnsigned = true;
      else this.pending = where;
    }
  }
  missing(pending) {
    if (this.last === null) return;
    const entry = pending[2];
    const rule = entry.fields.rule;
    const params = { seq: entry.seq, type: entry.type, rule };
    this.problem(
      "missing_checkpoint",
      typeof rule === "string"
        ? t(
          "missing checkpoint after entry {seq} ({type} of rule {rule}): every run ends with a signed " +
            "checkpoint, so it was removed, or it could not be written (see the daemon log)",
          params,
        )
        : t(
          "missing checkpoint after entry {seq} ({type}): every run ends with a signed " +
            "checkpoint, so it was removed, or it could not be written (see the daemon log)",
          params,
        ),
      pending,
    );
  }
  checkpoint(where) {
    const entry = where[2];
    this.count += 1;
    const previous = this.last;
    this.last = entry;
    this.pending = null;
    this.tail = 0;
    this.firstUnsigned = null;
    this.tailRuns = 0;
    this.endedUnsigned = false;
    const f = entry.fields;
    const signedSeqRaw = entry.rawFields.signed_seq;
    const [signedHash, keyFingerprint, signature] = [f.signed_hash, f.key_fingerprint, f.signature];
    if (!(isInt(signedSeqRaw) && typeof signedHash === "string" && typeof keyFingerprint === "string" &&
        typeof signature === "string")) {
      this.problem(
        "checkpoint",
        t("checkpoint {seq} lacks signed_seq, signed_hash, key_fingerprint or signature", { seq: entry.seq }),
        where,
      );
      return;
    }
    const signedSeq = Number(signedSeqRaw.text);
    const previousSigned = previous !== null && isInt(previous.rawFields.signed_seq)
      ? Number(previous.rawFields.signed_seq.text) : null;
    if (previousSigned !== null && signedSeq <= previousSigned) {
      this.problem(
        "order",
        t(
          "checkpoint {seq} is out of order: it signs entry {signed}, but " +
            "checkpoint {previous} before it already signed entry {previous_signed}",
          { seq: entry.seq, signed: signedSeq, previous: previous.seq, previous_signed: previousSigned },
        ),
        where,
      );
    } else if (signedSeq !== entry.seq - 1) {
      this.problem(
        "checkpoint",
        t(
          "checkpoint {seq} signs entry {signed}, not the entry just before it ({before}): " +
            "entries were inserted or removed before it, or the checkpoint was moved (and the chain recomputed)",
          { seq: entry.seq, signed: signedSeq, before: entry.seq - 1 },
        ),
        where,
      );
    } else if (signedHash !== entry.prev) {
      this.problem(
        "checkpoint",
        t(
          "checkpoint {seq} signs hash {signed_hash} for entry {signed}, but that entry's hash is " +
            "{hash}: entries before it were changed (and the chain recomputed)",
          { seq: entry.seq, signed_hash: signedHash, signed: signedSeq, hash: entry.prev },
        ),
        where,
      );
    }
    if (this.keys.size === 0) return;
    const key = this.keys.get(keyFingerprint);
    if (key === undefined) {
      const given = [...this.keys.keys()].sort().join(", ");
      this.problem(
        "key",
        t(
          "checkpoint {seq} was signed by another key ({fingerprint}), not by the given public key ({given})",
          { seq: entry.seq, fingerprint: keyFingerprint, given },
        ),
        where,
      );
      return;
    }
    // Checked later, all at once; the problem keeps its place in the list.
    const slot = { kind: "signature", seq: entry.seq, file: where[0], line: where[1] };
    slot.check = signatureValid(key, signedSeq, signedHash, keyFingerprint, signature);
    slot.message = t("checkpoint {seq}: bad signature: the checkpoint was changed or forged", { seq: entry.seq });
    this.problems.push(slot);
  }
  async settle() {
    const settled = [];
    for (const problem of this.problems) {
      if (problem.check === undefined) {
        settled.push(problem);
      } else if (await problem.check) {
        this.valid += 1;
      } else {
        settled.push({ kind: problem.kind, message: problem.message, seq: problem.seq, file: problem.file, line: problem.line });
      }
    }
    this.problems = settled;
  }
  unsigned() {
    const text = ngettext(
      "{count} entry after the last signed checkpoint is hash-chained but not yet signed",
      "{count} entries after the last signed checkpoint are hash-chained but not yet signed",
      this.tail,
    );
    if (this.pending !== null || this.endedUnsigned) {
      return t(
        "{unsigned}: the run that wrote them ended without its checkpoint (it was interrupted, or could not " +
          "use the signing key); the next run signs them",
        { unsigned: text },
      );
    }
    if (this.tailRuns) {
      return t(
        "{unsigned}: a run is in progress (its checkpoint will sign them) or was interrupted (the next run " +
          "signs them)",
        { unsigned: text },
      );
    }
    return t("{unsigned}: written between runs; the next run signs them", { unsigned: text });
  }
  finish(chain, firstSeq, strict) {
    const warnings = [];
    if (chain.beginsAfter !== null) {
      warnings.push(t(
        "the log begins at entry {seq}, going on from {file}, which is not here " +
          "(removed after its retention period?); entries before it cannot be checked",
        { seq: firstSeq, file: chain.beginsAfter },
      ));
    }
    if (!chain.ok) return warnings;
    const lastSeq = chain.head[0];
    for (const seq of [...this.heads.keys()].filter((s) => !this.seenHeads.has(s)).sort((a, b) => a - b)) {
      if (seq > lastSeq) {
        this.problem(
          "head",
          t("the log was cut: it ends at entry {last}, but the expected head is entry {seq}", { last: lastSeq, seq }),
          null,
        );
      } else {
        this.problem(
          "head",
          t("the expected head entry {seq} is not in the files here (the log begins at entry {first})", {
            seq,
            first: firstSeq,
          }),
          null,
        );
      }
    }
    if (this.count && this.tail) {
      if (strict) this.problem("unsigned_tail", this.unsigned(), this.firstUnsigned);
      else warnings.push(this.unsigned());
    }
    const torn = chain.torn;
    if (torn !== null) {
      if (strict) this.problems.push({ kind: "torn_tail", message: describeTorn(torn), seq: null, file: torn.file, line: torn.line });
      else warnings.push(describeTorn(torn));
    }
    if (this.count === 0 && this.runEntries) {
      if (this.keys.size) {
        this.problem(
          "no_checkpoints",
          t("no checkpoints: the log was never signed or the checkpoints were removed"),
          null,
        );
      } else {
        warnings.push(t("no checkpoints: the log is not signed (audit.signing_key)"));
      }
    } else if (this.count && !this.keys.size) {
      warnings.push(t("signatures not checked: give the public key (--public-key) to check them"));
    }
    return warnings;
  }
}

// check_log over the picked files; the result has the fields of `audit verify --json` (but
// "log"), and the entries for the figures.
async function checkLog(files, embeddedKeys, heads, strict) {
  const ordered = orderFiles(files);
  const keys = await importKeys(embeddedKeys);
  const prepared = await prepareFiles(ordered);
  const state = { files: [], beginsAfter: null, torn: null };
  const checker = new Checkpoints(keys, heads);
  const entries = [];
  let count = 0, head = [0, GENESIS], firstSeq = null;
  let broken = null;
  try {
    walk(prepared, state, (file, line, entry) => {
      if (firstSeq === null) firstSeq = entry.seq;
      checker.entry(file, line, entry);
      count += 1;
      head = [entry.seq, entry.hash];
      entries.push(entry);
    });
  } catch (error) {
    if (!(error instanceof Broken)) throw error;
    broken = error;
  }
  await checker.settle();
  const chain = { ok: broken === null, head, beginsAfter: state.beginsAfter, torn: state.torn };
  const warnings = checker.finish(chain, firstSeq, strict);
  const problems = checker.problems.slice();
  if (broken !== null) {
    const message = broken.seq === null
      ? t("chain broken: {reason}", { reason: broken.reason })
      : t("chain broken (entry {seq}): {reason}", { seq: broken.seq, reason: broken.reason });
    problems.push({ kind: "chain", message, seq: broken.seq, file: broken.file, line: broken.line });
  }
  const last = checker.last;
  return {
    result: {
      ok: problems.length === 0,
      strict,
      files: state.files,
      begins_after: state.beginsAfter,
      entries: count,
      head: { seq: head[0], hash: head[1] },
      checkpoints: checker.count,
      signatures_checked: keys.size > 0,
      valid_signatures: keys.size > 0 ? checker.valid : null,
      keys: [...keys.keys()],
      last_checkpoint: last === null ? null : {
        seq: last.seq, hash: last.hash, ts: last.ts,
        ...Object.fromEntries(CHECKPOINT_FIELDS.map((name) => [name, name in last.fields ? last.fields[name] : null])),
      },
      unsigned_tail: checker.tail,
      torn_tail: state.torn,
      problems,
      warnings,
    },
    entries,
  };
}
