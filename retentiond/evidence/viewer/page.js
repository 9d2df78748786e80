// The page around the verifier: picking the files, the verdict in `audit verify`'s words, and
// the figures of the log (runs per rule, deletions per week, holds, failures). Every text shown
// is t("English", {...}) of words.js: the page's language, its numbers and dates.
"use strict";

const KEYS = JSON.parse(document.getElementById("keys").textContent);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function problemText(problem) {
  if (problem.file !== null && problem.line) {
    return t("{file}:{line}: {problem}", { file: problem.file, line: problem.line, problem: problem.message });
  }
  return problem.message;
}

// "12 entries" or "12 entries in 3 files", as audit verify writes it (always "entries").
function size(result) {
  const files = result.files.length;
  if (files > 1) return t("{entries} entries in {files} files", { entries: count(result.entries), files: count(files) });
  return t("{entries} entries", { entries: count(result.entries) });
}

const STRICT_KINDS = new Set(["unsigned_tail", "torn_tail"]);

// The first line of `retentiond audit verify`, and its class (intact, unfinished, broken).
function verdict(result) {
  const head = t("head #{seq} {hash}", { seq: result.head.seq, hash: result.head.hash });
  if (result.ok) return ["intact", t("intact, {size}, {head}", { size: size(result), head })];
  if (result.problems.every((p) => STRICT_KINDS.has(p.kind))) {
    return ["unfinished", t("UNFINISHED (--strict): {problem}", { problem: problemText(result.problems[0]) })];
  }
  return ["broken", t("BROKEN: {problem}", { problem: problemText(result.problems[0]) })];
}

function parseHeads(text) {
  const heads = [];
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const match = /^([1-9][0-9]*):([0-9a-f]{64})$/.exec(part.toLowerCase());
    if (match === null) throw new Error(t("{given}: expected SEQ:HASH as printed by `retentiond audit head`", { given: part }));
    heads.push([Number(match[1]), match[2]]);
  }
  return heads;
}

// ISO week of an entry's UTC time stamp: "2026-W49" (sorts by time).
function isoWeek(ts) {
  const day = new Date(ts.slice(0, 10) + "T00:00:00Z");
  const weekday = (day.getUTCDay() + 6) % 7;
  day.setUTCDate(day.getUTCDate() - weekday + 3);
  const year = day.getUTCFullYear(); // the week's Thursday: its year is the week's
  const week = 1 + Math.floor((day - Date.UTC(year, 0, 1)) / 86400000 / 7);
  return `${year}-W${String(week).padStart(2, "0")}`;
}

const END_STATUS = { run_refused: "refused", run_failed: "failed" };

// A week as the language names it: 2026-W49 / KW 49/2026.
function weekName(week) {
  return t("{year}-W{week}", { year: week.slice(0, 4), week: week.slice(6) });
}

// A run's status and a hold's last change, in words (an unknown one as it is in the log).
function statusName(status) {
  const names = {
    done: t("done"),
    failed: t("failed"),
    refused: t("refused"),
    partial: t("partial"),
    verify_failed: t("verify_failed"),
  };
  return names[status] || status;
}

function holdChange(type) {
  const names = { hold_added: t("added"), hold_changed: t("changed"), hold_ended: t("ended") };
  return names[type] || type.replace("hold_", "");
}

function figures(entries) {
  const runs = new Map(); // rule -> [{ts, status, deleted}]
  const weeks = new Map(); // week -> deleted
  const holds = new Map(); // hold id -> last entry
  const failures = [];
  for (const entry of entries) {
    const f = entry.fields;
    if (entry.type in END_STATUS || entry.type === "run_finished") {
      const status = END_STATUS[entry.type] || (typeof f.status === "string" ? f.status : "done");
      const rule = typeof f.rule === "string" ? f.rule : "?";
      if (!runs.has(rule)) runs.set(rule, []);
      runs.get(rule).push({ ts: entry.ts, status, deleted: Number(f.deleted) || 0 });
      if (status === "failed" || status === "refused") {
        failures.push({ ts: entry.ts, rule, status, reason: typeof f.reason === "string" ? f.reason : (f.error_code || "") });
      }
    }
    if (entry.type === "batch_done" && Number.isFinite(f.deleted)) {
      const week = isoWeek(entry.ts);
      weeks.set(week, (weeks.get(week) || 0) + f.deleted);
    }
    if (entry.type.startsWith("hold_") && typeof f.hold === "string") holds.set(f.hold, entry);
  }
  return { runs, weeks, holds, failures };
}

function showFigures(entries) {
  const out = document.getElementById("figures");
  out.replaceChildren();
  const { runs, weeks, holds, failures } = figures(entries);
  let start = Infinity, end = -Infinity;
  for (const entry of entries) {
    const time = Date.parse(entry.ts);
    if (time < start) start = time;
    if (time > end) end = time;
  }
  const span = Math.max(end - start, 1);

  out.append(el("h2", {}, t("Runs per rule")));
  const timeline = el("table", { id: "runs", class: "timeline" });
  const first = entries.length ? day(entries[0].ts) : "";
  const last = entries.length ? day(entries[entries.length - 1].ts) : "";
  timeline.append(el("tr", {}, el("th", {}, t("Rule")), el("th", {}, t("Runs")), el("th", {}, t("Deleted")),
    el("th", { class: "track" }, `${first} … ${last}`)));
  for (const [rule, list] of [...runs].sort()) {
    const track = el("div", { class: "track" });
    for (const run of list) {
      const left = ((Date.parse(run.ts) - start) / span) * 100;
      track.append(el("span", { class: `run ${run.status}`, style: `left:${left.toFixed(2)}%`, title: `${moment(run.ts)} ${statusName(run.status)}` }));
    }
    const deleted = list.reduce((sum, run) => sum + run.deleted, 0);
    timeline.append(el("tr", { "data-rule": rule }, el("td", {}, rule), el("td", { class: "n" }, number(list.length)),
      el("td", { class: "n" }, number(deleted)), el("td", {}, track)));
  }
  out.append(runs.size ? timeline : el("p", {}, t("No runs in these files.")));

  out.append(el("h2", {}, t("Deletions per week")));
  const most = [...weeks.values()].reduce((a, b) => Math.max(a, b), 1);
  const perWeek = el("table", { id: "weeks" });
  for (const [week, deleted] of [...weeks].sort()) {
    perWeek.append(el("tr", { "data-week": week }, el("td", {}, weekName(week)), el("td", { class: "n" }, number(deleted)),
      el("td", {}, el("span", { class: "bar", style: `width:${((deleted / most) * 100).toFixed(1)}%` }))));
  }
  out.append(weeks.size ? perWeek : el("p", {}, t("Nothing deleted in these files.")));

  out.append(el("h2", {}, t("Holds")));
  const holdTable = el("table", { id: "holds" }, el("tr", {}, el("th", {}, t("Hold")), el("th", {}, t("Last entry")),
    el("th", {}, t("Rules")), el("th", {}, t("Until")), el("th", {}, t("Review by"))));
  for (const [id, entry] of [...holds].sort()) {
    const f = entry.fields;
    holdTable.append(el("tr", {}, el("td", {}, id), el("td", {}, t("{change} {day}", { change: holdChange(entry.type), day: day(entry.ts) })),
      el("td", {}, Array.isArray(f.rules) ? f.rules.join(", ") : ""), el("td", {}, f.until ? day(f.until) : entry.type === "hold_ended" ? "–" : t("open")),
      el("td", {}, f.review_by ? day(f.review_by) : "")));
  }
  out.append(holds.size ? holdTable : el("p", {}, t("No holds in these files.")));

  out.append(el("h2", {}, t("Failures")));
  const failTable = el("table", { id: "failures" }, el("tr", {}, el("th", {}, t("When (UTC)")), el("th", {}, t("Rule")),
    el("th", {}, t("Status")), el("th", {}, t("Reason"))));
  for (const failure of failures) {
    failTable.append(el("tr", {}, el("td", {}, moment(failure.ts)), el("td", {}, failure.rule),
      el("td", {}, statusName(failure.status)), el("td", {}, failure.reason)));
  }
  out.append(failures.length ? failTable : el("p", { id: "no-failures" }, t("No failed or refused runs.")));
}

// "No files picked yet." in the page's language (page.html has it from viewer_page).
const WAITING = document.getElementById("verdict").textContent;

async function run() {
  const files = [...document.getElementById("files").files];
  const box = document.getElementById("verdict");
  const details = document.getElementById("details");
  details.replaceChildren();
  document.getElementById("figures").replaceChildren();
  if (!files.length) {
    box.className = "waiting";
    box.textContent = WAITING;
    return;
  }
  box.className = "working";
  box.textContent = t("checking…");
  try {
    const heads = parseHeads(document.getElementById("heads").value);
    const strict = document.getElementById("strict").checked;
    const started = performance.now();
    const { result, entries } = await checkLog(files, KEYS, heads, strict);
    const [kind, text] = verdict(result);
    box.className = kind;
    box.textContent = text;
    box.dataset.ms = String(Math.round(performance.now() - started));
    document.getElementById("result").textContent = JSON.stringify(result);
    if (result.problems.length > 1) {
      details.append(el("p", {}, t("{count} problems in all:", { count: count(result.problems.length) })));
      const list = el("ul", { id: "problems" });
      for (const problem of result.problems.slice(0, 200)) list.append(el("li", {}, problemText(problem)));
      details.append(list);
    }
    const chainOk = !result.problems.some((p) => p.kind === "chain");
    details.append(el("p", {}, chainOk
      ? t("chain intact: {size} ({names})", { size: size(result), names: result.files.join(", ") })
      : t("{size} before the break are intact", { size: size(result) })));
    if (result.checkpoints) {
      const checkpoints = { checkpoints: count(result.checkpoints), seq: result.last_checkpoint.signed_seq };
      details.append(el("p", {}, result.signatures_checked
        ? t("{checkpoints} checkpoints, the last signs entry {seq}; {valid} of {checkpoints} signatures valid",
          { ...checkpoints, valid: count(result.valid_signatures) })
        : t("{checkpoints} checkpoints, the last signs entry {seq}", checkpoints)));
    }
    for (const warning of result.warnings) details.append(el("p", { class: "warning" }, t("warning: {warning}", { warning })));
    showFigures(entries);
  } catch (error) {
    box.className = "error";
    box.textContent = t("cannot check: {error}", { error: error.message });
  }
}

for (const id of ["files", "heads", "strict"]) document.getElementById(id).addEventListener("change", run);
const keyList = document.getElementById("key-list");
for (const key of KEYS) keyList.append(el("li", {}, el("code", {}, key.fingerprint)));
if (!KEYS.length) keyList.append(el("li", {}, t("none: the signatures are not checked")));
