// Reference token counts for the tokenizer corpus, from the npm package tiktoken itself
// (its JS/WASM build, encode_ordinary: special-token text counts as ordinary text).
//
// Usage (make_reference.sh runs it): node make_reference.cjs PACKAGE_DIR > corpus.counts.tsv
//
// Inputs, next to this file:
//   corpus.jsonl     one JSON string per line                  -> ids L1, L2, ...
//   generated.json   prompts generated from a seed (below)     -> ids G1, G2, ...
//   invalid_utf8.hex one hex byte string per line, decoded as  -> ids X1, X2, ...
//                    TextDecoder does (U+FFFD per maximal ill-formed subpart, BOM kept)
// tests/tokenizer/tokenizer_test.cpp generates the same prompts: keep the two equal.
"use strict";
const fs = require("fs");
const path = require("path");

const pkg = process.argv[2];
if (!pkg) {
  console.error("usage: node make_reference.cjs PACKAGE_DIR");
  process.exit(2);
}
const { get_encoding } = require(path.resolve(pkg, "tiktoken.cjs"));
const version = JSON.parse(fs.readFileSync(path.join(pkg, "package.json"), "utf8")).version;
const here = __dirname;

// xorshift32; the C++ test has the same generator.
function xorshift32(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    return x;
  };
}

const ALPHABETS = {
  letters: "abcdefghijklmnopqrstuvwxyz",
  digits: "0123456789",
  punct: "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
};
const SPACES = [" ", " ", " ", "\t", "\n", "\r\n", "\u00a0", "\u3000"];
const SEPARATORS = [" ", "\n", "\n\n", "", "\t", ". "];

function piece(kind, next, lines) {
  if (kind === "mix") {
    const line = lines[next() % lines.length];
    return line + SEPARATORS[next() % SEPARATORS.length];
  }
  if (kind === "cjk") return String.fromCodePoint(0x4e00 + (next() % (0x9fff - 0x4e00 + 1)));
  if (kind === "space") return SPACES[next() % SPACES.length];
  const alphabet = ALPHABETS[kind];
  if (!alphabet) throw new Error("unknown kind " + kind);
  return alphabet[next() % alphabet.length];
}

// Appends pieces until the UTF-8 size reaches spec.bytes (never cuts a piece).
function generate(spec, lines) {
  const next = xorshift32(spec.seed);
  const parts = [];
  let bytes = 0;
  while (bytes < spec.bytes) {
    const p = piece(spec.kind, next, lines);
    parts.push(p);
    bytes += Buffer.byteLength(p, "utf8");
  }
  return parts.join("");
}

// FNV-1a (32-bit) over the ids as little-endian uint32: a check on the ids, not just their number.
function fnv(ids) {
  let h = 2166136261;
  for (const id of ids) {
    for (let k = 0; k < 4; ++k) {
      h = (h ^ ((id >>> (8 * k)) & 0xff)) >>> 0;
      h = Math.imul(h, 16777619) >>> 0;
    }
  }
  return h.toString(16).padStart(8, "0");
}

const lines = fs.readFileSync(path.join(here, "corpus.jsonl"), "utf8").split("\n").filter((l) => l.length > 0)
  .map((l) => JSON.parse(l));
const cases = lines.map((text, i) => ({ id: "L" + (i + 1), text }));
for (const spec of JSON.parse(fs.readFileSync(path.join(here, "generated.json"), "utf8"))) {
  cases.push({ id: spec.id, text: generate(spec, lines) });
}
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
fs.readFileSync(path.join(here, "invalid_utf8.hex"), "utf8").split("\n").filter((l) => l.length > 0)
  .forEach((hex, i) => {
    const bytes = Buffer.from(hex, "hex");
    cases.push({ id: "X" + (i + 1), text: decoder.decode(bytes), bytes: bytes.length });
  });

const names = ["o200k_base", "cl100k_base"];
const encoders = names.map((n) => get_encoding(n));
const out = [
  `# Token counts from the npm package tiktoken ${version} (JS/WASM), encode_ordinary; made by make_reference.sh.`,
  "# fnv: FNV-1a (32-bit) over the token ids as little-endian uint32. bytes: the input's size in bytes.",
  ["# id", "bytes", ...names.flatMap((n) => [n, n + "_fnv"])].join("\t"),
];
for (const c of cases) {
  const started = Date.now();
  const row = [c.id, c.bytes ?? Buffer.byteLength(c.text, "utf8")];
  for (const enc of encoders) {
    const ids = enc.encode_ordinary(c.text);
    row.push(ids.length, fnv(ids));
  }
  out.push(row.join("\t"));
  const seconds = (Date.now() - started) / 1000;
  if (seconds > 1) console.error(`make_reference: ${c.id} took ${seconds.toFixed(1)} s`);
}
encoders.forEach((e) => e.free());
process.stdout.write(out.join("\n") + "\n");
