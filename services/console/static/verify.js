// The ledger verifier in the auditor's browser: a line-by-line port of ledger/verify.py (what
// `omnistock ledger verify BUNDLE --trust DIR` runs), on WebCrypto's SHA-256 and ECDSA P-256. It trusts
// nothing the console sends: only the bundle file and the certificates the auditor loads from their own
// trust folder. Every check the Python verifier makes is made here the same way, so both give the same
// verdict on the same bundle (tests/browser/test_audit_verify.py holds them to it).
"use strict";

(() => {
  const encoder = new TextEncoder();
  const BUNDLE_FORMAT = "omnistock-ledger-bundle/1";
  const CHECKPOINT_SIGNERS = ["ledger", "finance"]; // ledger/policy.py CHECKPOINT_SIGNERS
  const APPEND = { reconciled_sale: ["finance"], reconciliation_summary: ["finance"] }; // policy.APPEND
  const STATEMENTS = ["submission", "batch"];
  const HEX32 = /^[0-9a-f]{64}$/;

  class Malformed extends Error {
    constructor(message, seq = null) { super(message); this.seq = seq; }
  }

  // --- strict JSON: integers stay exact (BigInt), floats and duplicate keys are refused -------------

  class Float { constructor(text) { this.text = text; } }
  const KEYS = new WeakMap(); // each parsed object's keys in the order read (a key may be any string)

  function parseJson(text) {
    let i = 0;
    const fail = (what) => { throw new Malformed(`bundle is not valid JSON: ${what} at ${i}`); };
    const ws = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
    function value() {
      ws();
      const c = text[i];
      if (c === "{") return object();
      if (c === "[") return array();
      if (c === '"') return string();
      if (c === "t" && text.startsWith("true", i)) { i += 4; return true; }
      if (c === "f" && text.startsWith("false", i)) { i += 5; return false; }
      if (c === "n" && text.startsWith("null", i)) { i += 4; return null; }
      return number();
    }
    function object() {
      i++;
      const out = Object.create(null);
      const keys = [];
      ws();
      if (text[i] === "}") { i++; return wrap(out, keys); }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const key = string();
        if (keys.includes(key)) throw new Malformed("bundle is not valid JSON: duplicate key in a JSON object");
        ws();
        if (text[i++] !== ":") fail("expected ':'");
        out[key] = value();
        keys.push(key);
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "}") { i++; return wrap(out, keys); }
        fail("expected ',' or '}'");
      }
    }
    function wrap(out, keys) { KEYS.set(out, keys); return out; }
    function array() {
      i++;
      const out = [];
      ws();
      if (text[i] === "]") { i++; return out; }
      for (;;) {
        out.push(value());
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "]") { i++; return out; }
        fail("expected ',' or ']'");
      }
    }
    // Sticky expressions match at `i` without copying the rest of the text (bundles run to megabytes).
    const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
    const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
    function string() {
      STRING.lastIndex = i;
      const m = STRING.exec(text);
      if (!m) fail("bad string");
      i += m[0].length;
      return JSON.parse(m[0]);
    }
    function number() {
      NUMBER.lastIndex = i;
      const m = NUMBER.exec(text);
      if (!m) fail("unexpected character");
      i += m[0].length;
      return m[1] || m[2] ? new Float(m[0]) : BigInt(m[0]);
    }
    const result = value();
    ws();
    if (i !== text.length) fail("trailing data");
    return result;
  }

  // --- canonical bytes (ledger/encoding.py) --------------------------------------------------------

  function byCodePoint(a, b) {
    const x = Array.from(a), y = Array.from(b);
    for (let k = 0; k < Math.min(x.length, y.length); k++) {
      const d = x[k].codePointAt(0) - y[k].codePointAt(0);
      if (d) return d;
    }
    return x.length - y.length;
  }

  function canonicalString(s) {
    if (/[\ud800-\udbff](?![\udc00-\udfff])|(?:[^\ud800-\udbff]|^)[\udc00-\udfff]/.test(s)) {
      throw new Malformed("entry has no canonical encoding: string is not valid Unicode");
    }
    const escapes = { '"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f" };
    return '"' + s.replace(/["\\\u0000-\u001f]/g, (ch) => escapes[ch] ||
      "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0")) + '"';
  }

  function canonical(value, path = "$") {
    if (value === null) return "null";
    if (value === true) return "true";
    if (value === false) return "false";
    if (typeof value === "bigint") return value.toString();
    if (typeof value === "string") return canonicalString(value);
    if (value instanceof Float) {
      throw new Malformed(`entry has no canonical encoding: ${path}: floats are not allowed in ledger entries`);
    }
    if (Array.isArray(value)) return "[" + value.map((v, k) => canonical(v, `${path}[${k}]`)).join(",") + "]";
    const keys = Object.keys(value).sort(byCodePoint);
    return "{" + keys.map((k) => canonicalString(k) + ":" + canonical(value[k], `${path}.${k}`)).join(",") + "}";
  }

  const canonicalBytes = (value) => encoder.encode(canonical(value));

  // --- hashes and the RFC 9162 tree (ledger/merkle.py) -----------------------------------------------

  async function sha256(...parts) {
    const total = parts.reduce((n, p) => n + p.length, 0);
    const joined = new Uint8Array(total);
    let at = 0;
    for (const p of parts) { joined.set(p, at); at += p.length; }
    return new Uint8Array(await crypto.subtle.digest("SHA-256", joined));
  }
  const leafHash = (data) => sha256(Uint8Array.of(0), data);
  const nodeHash = (left, right) => sha256(Uint8Array.of(1), left, right);
  const same = (a, b) => a.length === b.length && a.every((x, k) => x === b[k]);
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const fromHex = (text) => Uint8Array.from(text.match(/../g) || [], (h) => parseInt(h, 16));

  async function merkleRoot(leaves) {
    let level = leaves.slice();
    if (!level.length) return sha256(new Uint8Array(0));
    while (level.length > 1) {
      const next = [];
      for (let k = 0; k + 1 < level.length; k += 2) next.push(await nodeHash(level[k], level[k + 1]));
      if (level.length % 2) next.push(level[level.length - 1]);
      level = next;
    }
    return level[0];
  }

  // Sizes and indexes as BigInt: a tree may outgrow 2^32, where JS's bit operators stop.
  async function verifyInclusion(leaf, index, size, proof, rootHash) {
    if (!(0n <= index && index < size) || proof.some((p) => p.length !== 32)) return false;
    let fn = index, sn = size - 1n, result = leaf;
    for (const p of proof) {
      if (sn === 0n) return false;
      if ((fn & 1n) || fn === sn) {
        result = await nodeHash(p, result);
        while (!(fn & 1n) && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      } else {
        result = await nodeHash(result, p);
      }
      fn >>= 1n; sn >>= 1n;
    }
    return sn === 0n && same(result, rootHash);
  }

  async function verifyConsistency(first, second, proof, firstRoot, secondRoot) {
    if (!(0n <= first && first <= second) || proof.some((p) => p.length !== 32)) return false;
    if (first === second) return !proof.length && same(firstRoot, secondRoot);
    if (first === 0n) return !proof.length && same(firstRoot, await sha256(new Uint8Array(0)));
    if (!proof.length) return false;
    const path = proof.slice();
    if ((first & (first - 1n)) === 0n) path.unshift(firstRoot);
    let fn = first - 1n, sn = second - 1n;
    while (fn & 1n) { fn >>= 1n; sn >>= 1n; }
    let fr = path[0], sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0n) return false;
      if ((fn & 1n) || fn === sn) {
        fr = await nodeHash(c, fr);
        sr = await nodeHash(c, sr);
        while (!(fn & 1n) && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      } else {
        sr = await nodeHash(sr, c);
      }
      fn >>= 1n; sn >>= 1n;
    }
    return same(fr, firstRoot) && same(sr, secondRoot) && sn === 0n;
  }

  // --- DER, X.509 and ECDSA ----------------------------------------------------------------------

  function tlv(bytes, at) {
    if (at + 2 > bytes.length) throw new Error("truncated DER");
    const tag = bytes[at];
    let len = bytes[at + 1], head = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n < 1 || n > 4 || at + 2 + n > bytes.length) throw new Error("bad DER length");
      len = 0;
      for (let k = 0; k < n; k++) len = len * 256 + bytes[at + 2 + k];
      head += n;
    }
    const start = at + head, end = start + len;
    if (end > bytes.length) throw new Error("truncated DER");
    return { tag, start, end, at, bytes };
  }
  function children(node) {
    const out = [];
    for (let at = node.start; at < node.end;) { const c = tlv(node.bytes, at); out.push(c); at = c.end; }
    return out;
  }
  const whole = (node) => node.bytes.slice(node.at, node.end);
  const content = (node) => node.bytes.slice(node.start, node.end);
  const OID = {
    organization: "55040a", basicConstraints: "551d13", ecPublicKey: "2a8648ce3d0201",
    p256: "2a8648ce3d030107", ecdsaSha256: "2a8648ce3d040302",
  };

  function derTime(node) {
    const t = new TextDecoder().decode(content(node));
    const m = node.tag === 0x17 ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(t)
      : /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(t);
    if (!m) throw new Error("bad certificate time");
    let year = Number(m[1]);
    if (node.tag === 0x17) year += year < 50 ? 2000 : 1900;
    // microseconds, as the ledger's timestamps are compared
    return BigInt(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]))) * 1000n;
  }

  function pemBlocks(text) {
    return [...text.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)]
      .map((m) => Uint8Array.from(atob(m[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0)));
  }
  function toPem(der) {
    const b64 = btoa(String.fromCharCode(...der));
    return "-----BEGIN CERTIFICATE-----\n" + b64.match(/.{1,64}/g).join("\n") + "\n-----END CERTIFICATE-----\n";
  }

  function parseCertificate(der) {
    const root = tlv(der, 0);
    if (root.end !== der.length) throw new Error("trailing bytes after the certificate");
    const [tbs, sigAlg, sigValue] = children(root);
    const fields = children(tbs);
    const rest = fields[0].tag === 0xa0 ? fields.slice(1) : fields;
    const [serial, , issuer, validity, subject, spki, ...more] = rest;
    const [notBefore, notAfter] = children(validity);
    let ca = false;
    for (const ext of more.filter((n) => n.tag === 0xa3)) {
      for (const item of children(children(ext)[0])) {
        const parts = children(item);
        if (hex(content(parts[0])) === OID.basicConstraints) {
          const value = children(tlv(content(parts[parts.length - 1]), 0));
          ca = value.length > 0 && value[0].tag === 0x01 && content(value[0])[0] === 0xff;
        }
      }
    }
    const orgs = [];
    for (const rdn of children(subject)) {
      for (const attr of children(rdn)) {
        const [oid, val] = children(attr);
        if (hex(content(oid)) === OID.organization) orgs.push(new TextDecoder().decode(content(val)));
      }
    }
    const alg = children(children(spki)[0]).map((n) => hex(content(n)));
    let serialBytes = content(serial);
    while (serialBytes.length > 1 && serialBytes[0] === 0) serialBytes = serialBytes.slice(1);
    const bits = content(sigValue);
    return {
      der, tbs: whole(tbs), issuer: hex(whole(issuer)), subject: hex(whole(subject)), spki: whole(spki),
      p256: alg[0] === OID.ecPublicKey && alg[1] === OID.p256,
      sigAlg: hex(content(children(sigAlg)[0])), signature: bits[0] === 0 ? bits.slice(1) : null,
      notBefore: derTime(notBefore), notAfter: derTime(notAfter), serial: BigInt("0x" + hex(serialBytes)),
      ca, orgs,
    };
  }

  function rawSignature(der) {
    // ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } -> r || s, 32 bytes each (WebCrypto's form)
    const seq = tlv(der, 0);
    if (seq.tag !== 0x30 || seq.end !== der.length) return null;
    const parts = children(seq);
    if (parts.length !== 2 || parts.some((p) => p.tag !== 0x02)) return null;
    const out = new Uint8Array(64);
    for (let k = 0; k < 2; k++) {
      let n = content(parts[k]);
      while (n.length > 32 && n[0] === 0) n = n.slice(1);
      if (n.length > 32) return null;
      out.set(n, 32 * (k + 1) - n.length);
    }
    return out;
  }

  async function ecdsaVerify(spki, derSignature, data) {
    try {
      const raw = rawSignature(derSignature);
      if (!raw) return false;
      const key = await crypto.subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
      return await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, raw, data);
    } catch {
      return false;
    }
  }

  async function issuedBy(cert, ca) {
    return cert.issuer === ca.subject && cert.sigAlg === OID.ecdsaSha256 && cert.signature !== null &&
      await ecdsaVerify(ca.spki, cert.signature, cert.tbs);
  }

  function canonicalBase64(text) {
    if (typeof text !== "string" || text.length % 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return null;
    try {
      const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
      return btoa(String.fromCharCode(...bytes)) === text ? bytes : null;
    } catch {
      return null;
    }
  }

  // --- the auditor's trust folder (ledger/identity.py TrustStore) ------------------------------------

  async function trustFromFiles(files) {
    const cas = {}, revoked = {};
    for (const file of files) {
      const text = await file.text();
      if (/\.pem$/i.test(file.name)) {
        for (const der of pemBlocks(text)) {
          const cert = parseCertificate(der);
          if (!cert.ca) continue;
          if (!(await issuedBy(cert, cert))) throw new Error(`${file.name}: CA certificate is not validly self-signed`);
          if (cert.orgs.length !== 1) throw new Error(`${file.name}: a CA must name exactly one organisation`);
          (cas[cert.orgs[0]] ||= []).push(cert);
        }
      } else if (/(^|\/)revoked\.json$/.test(file.webkitRelativePath || file.name)) {
        const doc = JSON.parse(text);
        if (typeof doc.org !== "string" || !Array.isArray(doc.serials)) throw new Error(`${file.name}: expected {"org", "serials"}`);
        for (const s of doc.serials) (revoked[doc.org] ||= new Set()).add(BigInt("0x" + s));
      }
    }
    return { cas, revoked };
  }

  async function checkSigner(trust, cert, org, atMicros) {
    if (cert.ca) return "a CA certificate cannot sign ledger statements";
    if (cert.orgs.length !== 1) return "certificate subject must name exactly one organisation (O=)";
    if (cert.orgs[0] !== org) return `certificate belongs to '${cert.orgs[0]}', not '${org}'`;
    if (!cert.p256) return "signer key is not ECDSA P-256";
    let issuer = null;
    for (const ca of trust.cas[org] || []) if (await issuedBy(cert, ca)) { issuer = ca; break; }
    if (!issuer) return `certificate serial ${cert.serial.toString(16)} is not issued by a trusted CA of '${org}'`;
    for (const [checked, what] of [[issuer, "CA"], [cert, "member"]]) {
      if (!(checked.notBefore <= atMicros && atMicros <= checked.notAfter)) {
        return `${what} certificate of '${org}' is not valid at that time`;
      }
    }
    if (trust.revoked[org] && trust.revoked[org].has(cert.serial)) {
      return `member certificate serial ${cert.serial.toString(16)} of '${org}' is revoked`;
    }
    return null;
  }

  async function signerProblem(sig, statement, atMicros, trust) {
    if (typeof sig.cert_pem !== "string" || typeof sig.org !== "string" || typeof sig.signature !== "string") {
      return "org, cert_pem and signature must be strings";
    }
    let cert;
    try {
      const blocks = pemBlocks(sig.cert_pem);
      if (blocks.length !== 1) throw new Error("not one certificate");
      cert = parseCertificate(blocks[0]);
      if (toPem(cert.der) !== sig.cert_pem) return "certificate PEM is not in canonical form";
    } catch (err) {
      return `untrusted certificate: ${err.message}`;
    }
    const problem = await checkSigner(trust, cert, sig.org, atMicros);
    if (problem) return `untrusted certificate: ${problem}`;
    const der = canonicalBase64(sig.signature);
    if (!der || !(await ecdsaVerify(cert.spki, der, statement))) return "signature does not verify";
    return null;
  }

  // --- the bundle (ledger/verify.py) ---------------------------------------------------------------

  function fields(value, label, required, optional = []) {
    if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Float) {
      throw new Malformed(`${label} must be an object`);
    }
    const keys = KEYS.get(value) || Object.keys(value);
    if (!required.every((k) => keys.includes(k)) || !keys.every((k) => required.includes(k) || optional.includes(k))) {
      throw new Malformed(`${label} has keys ${JSON.stringify([...keys].sort())}, expected ${JSON.stringify([...required].sort())}`);
    }
    return value;
  }
  function list(value, label) { if (!Array.isArray(value)) throw new Malformed(`${label} must be a list`); return value; }
  function int(value, label) {
    if (typeof value !== "bigint" || value < 0n) throw new Malformed(`${label} must be a non-negative integer`);
    return value;
  }
  function hash32(value, label) {
    if (typeof value !== "string" || !HEX32.test(value)) throw new Malformed(`${label} must be 64 lowercase hex digits`);
    return fromHex(value);
  }
  const hashes = (value) => list(value, "hash list").map((item) => hash32(item, "proof hash"));
  function time(value) {
    if (typeof value !== "string") throw new Malformed("timestamp must be a string");
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z$/.exec(value);
    const ms = m ? Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) : NaN;
    const back = m && !Number.isNaN(ms) ? new Date(ms).toISOString().slice(0, 19) : null;
    if (!m || back !== value.slice(0, 19) || +m[1] < 1) throw new Malformed(`timestamp '${value}' is not in canonical form`);
    return BigInt(ms) * 1000n + BigInt(m[7]);
  }
  const statementOf = (obj) => canonicalBytes(obj);

  function checkpointStatement(size, root, timestamp) {
    return statementOf({ kind: "checkpoint", tree_size: size, root_hash: hex(root), timestamp });
  }
  function batchStatement(form, org, first, last, root, timestamp) {
    if (form === "submission") {
      return statementOf({ kind: "submission", org, batch_root: hex(root), count: last - first + 1n, timestamp });
    }
    return statementOf({ kind: "batch", org, first_seq: first, last_seq: last, batch_root: hex(root), timestamp });
  }

  class Report {
    constructor() {
      this.failures = []; this.treeSize = null; this.entriesChecked = 0; this.batchesChecked = 0;
      this.checkpointSigners = []; this.entries = []; this.signatures = [];
    }
    get ok() { return this.failures.length === 0; }
    get firstBadSeq() {
      const seqs = this.failures.filter((f) => f.seq !== null).map((f) => f.seq);
      return seqs.length ? seqs.reduce((a, b) => (b < a ? b : a)) : null;
    }
    fail(message, seq = null) { this.failures.push({ message, seq }); }
  }

  async function checkCheckpoint(value, label, trust, report) {
    const cp = fields(value, label, ["tree_size", "root_hash", "timestamp", "signatures"]);
    const size = int(cp.tree_size, "tree_size"), root = hash32(cp.root_hash, "root_hash");
    const when = time(cp.timestamp);
    const statement = checkpointStatement(size, root, cp.timestamp);
    const signedBy = new Set();
    for (const item of list(cp.signatures, "signatures")) {
      const sig = fields(item, "signature", ["org", "cert_pem", "signature"]);
      const problem = await signerProblem(sig, statement, when, trust);
      report.signatures.push({ checkpoint: label, org: String(sig.org), problem });
      if (problem) report.fail(`${label}: signature of '${sig.org}': ${problem}`);
      else signedBy.add(sig.org);
    }
    for (const org of CHECKPOINT_SIGNERS) if (!signedBy.has(org)) report.fail(`${label}: no valid signature by '${org}'`);
    report.checkpointSigners = [...signedBy].sort();
    return { size, root, when };
  }

  async function checkEntries(value, size, root, report) {
    const leaves = new Map(), kinds = new Map();
    let previous = -1n;
    for (const item of list(value, "entries")) {
      const e = fields(item, "entry", ["seq", "entry", "leaf_hash", "inclusion_proof"]);
      const seq = int(e.seq, "seq");
      if (!(previous < seq && seq < size)) throw new Malformed(`entry seq ${seq} out of order or beyond tree size ${size}`, seq);
      previous = seq;
      if (e.entry === null || typeof e.entry !== "object" || Array.isArray(e.entry) || e.entry instanceof Float) {
        throw new Malformed("entry must be a JSON object", seq);
      }
      let leaf;
      try {
        leaf = await leafHash(canonicalBytes(e.entry));
      } catch (err) {
        throw new Malformed(err.message, seq);
      }
      leaves.set(seq, leaf);
      kinds.set(seq, e.entry.kind);
      report.entriesChecked += 1;
      const problems = [];
      if (!same(leaf, hash32(e.leaf_hash, "leaf_hash"))) problems.push("leaf_hash does not match the entry's canonical bytes (entry altered?)");
      if (!(await verifyInclusion(leaf, seq, size, hashes(e.inclusion_proof), root))) problems.push("inclusion proof does not lead to the checkpoint root");
      for (const p of problems) report.fail(p, seq);
      report.entries.push({ seq, entry: e.entry, problems });
    }
    return { leaves, kinds };
  }

  async function checkBatches(value, size, checkpointTime, leaves, kinds, trust, report) {
    const covered = new Set();
    let previousLast = -1n;
    for (const item of list(value, "batches")) {
      const b = fields(item, "batch", ["org", "first_seq", "last_seq", "timestamp", "batch_root", "cert_pem", "signature"],
        ["leaf_hashes", "statement"]);
      const first = int(b.first_seq, "first_seq"), last = int(b.last_seq, "last_seq");
      if (!(previousLast < first && first <= last && last < size)) {
        throw new Malformed(`batch ${first}..${last} overlaps another, is reversed, or lies beyond the tree`, first);
      }
      previousLast = last;
      let batchHashes;
      const range = [];
      for (let s = first; s <= last; s++) range.push(s);
      if ("leaf_hashes" in b) {
        batchHashes = hashes(b.leaf_hashes);
        if (BigInt(batchHashes.length) !== last - first + 1n) throw new Malformed(`batch ${first}..${last} lists ${batchHashes.length} leaf hashes`, first);
      } else if (range.every((s) => leaves.has(s))) {
        batchHashes = range.map((s) => leaves.get(s));
      } else {
        report.fail(`batch ${first}..${last} has neither leaf_hashes nor all of its entries`, first);
        continue;
      }
      report.batchesChecked += 1;
      range.forEach((s) => covered.add(s));
      const inside = report.failures.filter((f) => f.seq !== null && first <= f.seq && f.seq <= last).map((f) => f.seq);
      const located = inside.length ? inside.reduce((a, c) => (c < a ? c : a)) : first;
      const problems = [];
      range.forEach((s, k) => { if (leaves.has(s) && !same(leaves.get(s), batchHashes[k])) problems.push(["entry is not the leaf the batch signed", s]); });
      for (const s of range) {
        if (kinds.has(s) && !(typeof kinds.get(s) === "string" && (APPEND[kinds.get(s)] || []).includes(b.org))) {
          problems.push([`org '${b.org}' may not append '${kinds.get(s)}'`, s]);
        }
      }
      const batchRoot = hash32(b.batch_root, "batch_root");
      if (!same(await merkleRoot(batchHashes), batchRoot)) problems.push(["batch_root does not match the batch's leaves", located]);
      const when = time(b.timestamp);
      if (when > checkpointTime) problems.push(["batch is dated after the checkpoint that includes it", first]);
      const form = "statement" in b ? b.statement : "batch";
      if (!STATEMENTS.includes(form)) throw new Malformed(`batch ${first}..${last}: unknown statement '${form}'`, first);
      const signer = await signerProblem(b, batchStatement(form, b.org, first, last, batchRoot, b.timestamp), when, trust);
      report.signatures.push({ checkpoint: `batch ${first}..${last}`, org: String(b.org), problem: signer });
      if (signer) problems.push([signer, first]);
      for (const [message, seq] of problems) report.fail(`batch ${first}..${last}: ${message}`, seq);
    }
    return covered;
  }

  async function verifyBundle(text, trust) {
    const report = new Report();
    try {
      const bundle = parseJson(text);
      const top = fields(bundle, "bundle", ["format", "checkpoint", "entries", "batches"], ["earlier"]);
      if (top.format !== BUNDLE_FORMAT) throw new Malformed(`unknown format '${top.format}', expected '${BUNDLE_FORMAT}'`);
      const { size, root, when } = await checkCheckpoint(top.checkpoint, "checkpoint", trust, report);
      report.treeSize = size;
      const { leaves, kinds } = await checkEntries(top.entries, size, root, report);
      const covered = await checkBatches(top.batches, size, when, leaves, kinds, trust, report);
      for (const seq of [...leaves.keys()].filter((s) => !covered.has(s)).sort((a, b) => (a < b ? -1 : 1))) {
        report.fail("entry is not covered by any signed batch", seq);
      }
      if ("earlier" in top) {
        const earlier = fields(top.earlier, "earlier", ["checkpoint", "consistency_proof"]);
        const signers = report.checkpointSigners;
        const old = await checkCheckpoint(earlier.checkpoint, "earlier checkpoint", trust, report);
        report.checkpointSigners = signers;
        const proof = hashes(earlier.consistency_proof);
        report.consistency = old.when <= when && await verifyConsistency(old.size, size, proof, old.root, root);
        if (!report.consistency) report.fail(`checkpoint of size ${size} is not consistent with earlier size ${old.size}`);
      }
    } catch (err) {
      if (err instanceof Malformed) report.fail(`malformed bundle: ${err.message}`, err.seq);
      else report.fail(`bundle could not be checked: ${err.name}: ${err.message}`);
    }
    return report;
  }

  window.omnistockVerify = {
    verifyBundle, trustFromFiles, verifyInclusion, verifyConsistency, leafHash, canonicalBytes, parseJson,
    fromHex, hex, checkpointStatement, signerProblem,
  };
})();
