// The auditor's pages: take the ledger's answer embedded in the page as data (never a verdict), the
// certificates from the auditor's own trust folder, and check every proof and signature here with
// verify.js; each line of the result says verified or failed, and why.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("verify-form");
  if (!form) return;
  const out = document.getElementById("results");
  const verdict = document.getElementById("verdict");
  const v = window.omnistockVerify;

  function line(ok, text) {
    const li = document.createElement("li");
    const mark = document.createElement("strong");
    mark.className = ok ? "verified" : "failed";
    mark.textContent = ok ? "verified" : "failed";
    li.append(mark, " " + text);
    out.append(li);
  }

  function show(report, what) {
    out.replaceChildren();
    for (const s of report.signatures) {
      line(!s.problem, `${s.checkpoint}: signature of ${s.org}` + (s.problem ? ` (${s.problem})` : ""));
    }
    for (const e of report.entries) {
      line(!e.problems.length, `entry ${e.seq}: leaf hash and inclusion proof` + (e.problems.length ? ` (${e.problems.join("; ")})` : ""));
    }
    if (report.consistency !== undefined) line(report.consistency, "consistency proof");
    const shown = new Set([...report.entries.flatMap((e) => e.problems), ...report.signatures.map((s) => s.problem)]);
    for (const f of report.failures) {
      const bare = f.message.replace(/^[^:]*: signature of '[^']*': /, "");
      if (!shown.has(bare) && !shown.has(f.message)) line(false, (f.seq !== null ? `seq ${f.seq}: ` : "") + f.message);
    }
    verdict.dataset.ok = String(report.ok);
    verdict.dataset.firstBadSeq = report.firstBadSeq === null ? "" : String(report.firstBadSeq);
    verdict.dataset.failures = String(report.failures.length);
    verdict.textContent = report.ok
      ? `Verified in this browser: ${what}.`
      : `Failed: ${report.failures.length} problem(s)` + (report.firstBadSeq !== null ? `, first bad seq ${report.firstBadSeq}` : "") + ".";
    verdict.className = report.ok ? "verified" : "failed";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    verdict.textContent = "Checking…";
    verdict.className = "";
    delete verdict.dataset.ok;
    let trust;
    try {
      trust = await v.trustFromFiles(Array.from(document.getElementById("trust").files));
    } catch (err) {
      out.replaceChildren();
      line(false, `trust folder: ${err.message}`);
      verdict.dataset.ok = "false";
      verdict.textContent = "Failed: the trust folder could not be read.";
      verdict.className = "failed";
      return;
    }
    const kind = form.dataset.verify;
    if (kind === "bundle") {
      const file = document.getElementById("bundle").files[0];
      if (!file) { verdict.textContent = "Choose a bundle file first."; return; }
      const report = await v.verifyBundle(await file.text(), trust);
      show(report, `${report.entriesChecked} entries, ${report.batchesChecked} batches, tree size ${report.treeSize}`);
      return;
    }
    const data = v.parseJson(document.getElementById("ledger-data").textContent);
    const check = { checkpoint: v.verifyCheckpoint, entry: v.verifyEntry, consistency: v.verifyConsistencyAnswer }[kind];
    const report = await check(data, trust);
    show(report, { checkpoint: "checkpoint signatures", entry: "the entry is in the signed tree", consistency: "the later tree extends the earlier" }[kind]);
  });
});
