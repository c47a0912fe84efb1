#!/usr/bin/env node
// Watch a payment happen: starts a local chain with our EIP-3009 token, a real x402
// facilitator, the demo origin and the gateway, then pays a priced URL with the reference
// @x402/fetch client and prints the 402, the receipt and the balances before and after.
// Run it through scripts/see-it-pay.sh, which builds the binaries and the npm harness first.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const interop = join(root, "tests", "interop", "lib");
const { startDevnet } = await import(join(interop, "devnet.mjs"));
const { payV2 } = await import(join(interop, "pay-v2.mjs"));
const { readBalances } = await import(join(interop, "balances.mjs"));

const bin = (name) => join(process.env.X402_BIN_DIR ?? join(root, "target", "release"), name);
const work = mkdtempSync(join(tmpdir(), "x402-see-it-pay-"));
const children = [];
const say = (...a) => console.log(...a);

function start(cmd, args) {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "inherit"] });
  children.push(child);
  return child;
}

async function waitFile(path, what) {
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    if (existsSync(path)) {
      const text = readFileSync(path, "utf8");
      if (text) return text;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what} did not start`);
}

let devnet;
try {
  say("Starting a local chain, the TestUSD token and a facilitator…");
  devnet = await startDevnet({ chainId: 31337, payers: 1 });
  const info = devnet.info;

  start(bin("demo-origin"), ["--listen", "127.0.0.1:0", "--ready-file", join(work, "origin.ready")]);
  const originAddr = (await waitFile(join(work, "origin.ready"), "demo origin")).trim();

  mkdirSync(join(work, "rules"));
  writeFileSync(
    join(work, "rules", "weather.toml"),
    `[[rule]]\nid = "weather"\npath = "/api/weather"\nprice = "$0.01"\ndescription = "Current weather"\nmime_type = "application/json"\n`,
  );
  writeFileSync(
    join(work, "gateway.toml"),
    `[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[upstreams.origin]
peers = ["${originAddr}"]
[[networks]]
id = "${info.network}"
[[assets]]
id = "tusd"
network = "${info.network}"
address = "${info.token.address}"
name = "${info.token.name}"
version = "${info.token.version}"
decimals = ${info.token.decimals}
usd = true
[payment]
pay_to = "${info.payTo}"
networks = ["${info.network}"]
[[facilitators]]
name = "local"
url = "${info.facilitatorUrl}"
[logging]
level = "warn"
`,
  );
  start(bin("x402-gateway"), ["run", "-c", join(work, "gateway.toml"), "--ready-file", join(work, "gateway.ready")]);
  const ready = JSON.parse(await waitFile(join(work, "gateway.ready"), "gateway"));
  const url = `http://${ready.listen[0]}/api/weather`;
  say(`Gateway on ${ready.listen[0]} in front of the demo origin on ${originAddr}.\n`);

  say(`1. An unpaid request: GET ${url}`);
  const unpaid = await fetch(url);
  const required = JSON.parse(Buffer.from(unpaid.headers.get("payment-required"), "base64").toString("utf8"));
  say(`   ${unpaid.status} ${unpaid.statusText}`);
  say(`   PAYMENT-REQUIRED (decoded):\n${JSON.stringify(required, null, 2).replace(/^/gm, "     ")}\n`);

  const payer = info.payers[0];
  const who = [payer.address, info.payTo];
  const before = (await readBalances({ rpcUrl: info.rpcUrl, token: info.token.address, addresses: who })).balances;

  say("2. The @x402/fetch client signs an EIP-3009 authorization and retries:");
  const res = await payV2({ url, privateKey: payer.privateKey });
  say(`   ${res.status}  body: ${res.body}`);
  say(`   PAYMENT-RESPONSE (decoded): ${JSON.stringify(res.receipt)}\n`);

  const after = (await readBalances({ rpcUrl: info.rpcUrl, token: info.token.address, addresses: who })).balances;
  const units = (v) => (Number(BigInt(v)) / 1e6).toFixed(6);
  say("3. Token balances on chain (TUSD):");
  for (const [name, addr] of [["payer", payer.address], ["merchant", info.payTo]]) {
    const b = before[addr] ?? before[addr.toLowerCase()];
    const a = after[addr] ?? after[addr.toLowerCase()];
    say(`   ${name.padEnd(8)} ${addr}  ${units(b)} -> ${units(a)}  (${BigInt(a) - BigInt(b) >= 0n ? "+" : ""}${units(BigInt(a) - BigInt(b))})`);
  }
  const ok = res.status === 200 && res.receipt?.success === true;
  say(ok ? "\nPaid, settled on chain, served." : "\nThe payment did not go through.");
  process.exitCode = ok ? 0 : 1;
} catch (e) {
  console.error(e);
  process.exitCode = 1;
} finally {
  for (const c of children) c.kill("SIGTERM");
  if (devnet) await devnet.stop();
  rmSync(work, { recursive: true, force: true });
}
