// Writes the EVM page of the reference @x402/paywall package (its prebuilt, self-contained
// EVM_PAYWALL_TEMPLATE, unmodified) from the package's dist/esm/evm/index.js to a file the
// gateway serves ([paywall] wallet). Usage: node paywall-extract.mjs INDEX_JS OUT_HTML
import fs from "node:fs";
import path from "node:path";
import vm from "node:vm";

const [src, out] = process.argv.slice(2);
if (!src || !out) {
  console.error("usage: node paywall-extract.mjs INDEX_JS OUT_HTML");
  process.exit(2);
}
const line = fs
  .readFileSync(src, "utf8")
  .split("\n")
  .map((l) => l.trim())
  .find((l) => l.startsWith("EVM_PAYWALL_TEMPLATE = '") || l.startsWith('EVM_PAYWALL_TEMPLATE = "'));
if (!line) {
  console.error(`${src}: no EVM_PAYWALL_TEMPLATE assignment`);
  process.exit(1);
}
// The assignment is a plain string literal: evaluate it alone, with nothing else in scope.
const html = vm.runInNewContext(`var EVM_PAYWALL_TEMPLATE; ${line}; EVM_PAYWALL_TEMPLATE`, {});
if (typeof html !== "string" || !html.includes("</head>") || !html.includes("<script")) {
  console.error(`${src}: EVM_PAYWALL_TEMPLATE is not the expected HTML page`);
  process.exit(1);
}
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out + ".tmp", html);
fs.renameSync(out + ".tmp", out);
console.log(`${out}: ${html.length} bytes`);
