#!/usr/bin/env node
// Self-check of the interop harness against the REFERENCE x402 servers (`npm test`).
//
// Round v2 (chain 31337): devnet.mjs (CLI) -> @x402/express server (x402ResourceServer +
//   HTTPFacilitatorClient -> our facilitator, ExactEvmScheme from @x402/evm/exact/server) ->
//   pay-v2.mjs (CLI, @x402/fetch). Checks exact balance movements, receipt, replay rejection,
//   header-only mode + direct /verify + tampering, unfunded payer, facilitator log and 400 style.
// Round v1 (chain 84532): devnet.mjs --chain-id 84532 -> legacy x402-express 1.2.0 ->
//   pay-v1.mjs (CLI, x402-fetch 1.2.0). Checks balances, X-PAYMENT-RESPONSE, replay, and that a
//   header built by pay-v1 --create-header-only for hand-written v1 requirements passes /verify.
//
// Flags: --verbose  also print the decoded wire examples (PAYMENT-REQUIRED, PAYMENT-SIGNATURE,
//                   X-PAYMENT, /supported, receipts) on stdout.
// Ends with a line "N passed, M failed"; exit status is non-zero on any failure.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { decodePaymentRequiredHeader, decodePaymentSignatureHeader, HTTPFacilitatorClient } from "@x402/core/http";
import { x402ResourceServer } from "@x402/core/server";
import { ExactEvmScheme } from "@x402/evm/exact/server";
import { paymentMiddleware } from "@x402/express";
import express from "express";
import { paymentMiddleware as legacyPaymentMiddleware } from "x402-express";
import { createPublicClient, hashDomain, http, parseSignature, serializeSignature, toHex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { generatePayer, makeChain, startDevChain, TestUSD } from "./lib/chain.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const VERBOSE = process.argv.includes("--verbose");
const OVERALL_TIMEOUT_MS = 55_000;
const PRICE = 10000n;

let passed = 0;
let failed = 0;
const cleanups = [];

function check(cond, what, detail) {
  if (cond) {
    passed += 1;
    console.log(`ok - ${what}`);
  } else {
    failed += 1;
    console.log(`not ok - ${what}${detail !== undefined ? `\n    ${typeof detail === "string" ? detail : JSON.stringify(detail)}` : ""}`);
  }
  return !!cond;
}

function show(label, obj) {
  if (VERBOSE) console.log(`# ${label}\n${JSON.stringify(obj, null, 2)}`);
}

/** Runs one of our CLIs and parses its single stdout JSON line. */
async function runJson(script, args, { timeoutMs = 30000 } = {}) {
  const child = spawn(process.execPath, [join(here, "lib", script), ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [code] = await once(child, "exit");
  clearTimeout(timer);
  const lines = out.trim().split("\n").filter(Boolean);
  if (code !== 0 || lines.length !== 1) {
    throw new Error(`${script} ${args.join(" ")} exited ${code} with ${lines.length} stdout lines\nstdout: ${out}\nstderr: ${err}`);
  }
  return JSON.parse(lines[0]);
}

/** Spawns lib/devnet.mjs, waits (with a deadline) for its JSON line; stop() closes its stdin. */
async function spawnDevnet(args) {
  const child = spawn(process.execPath, [join(here, "lib", "devnet.mjs"), ...args], { stdio: ["pipe", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
    if (VERBOSE) process.stderr.write(d);
  });
  const exited = once(child, "exit");
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.stdin.end(); // devnet exits when its stdin closes
    const t = setTimeout(() => child.kill("SIGKILL"), 8000);
    await exited;
    clearTimeout(t);
  };
  cleanups.push(stop);
  const info = await new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error(`devnet did not start in 30 s\n${err}`)), 30000);
    child.stdout.on("data", (d) => {
      buf += d;
      const nl = buf.indexOf("\n");
      if (nl >= 0) {
        clearTimeout(timer);
        try {
          resolve(JSON.parse(buf.slice(0, nl)));
        } catch (e) {
          reject(e);
        }
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`devnet exited early (${code})\n${err}`));
    });
  });
  return { info, stop, child, exited };
}

async function listen(app) {
  const server = app.listen(0, "127.0.0.1");
  await once(server, "listening");
  const close = () =>
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections?.();
    });
  cleanups.push(close);
  return { url: `http://127.0.0.1:${server.address().port}`, close };
}

function tokenReader(info) {
  const client = createPublicClient({ chain: makeChain(info.chainId, info.rpcUrl), transport: http(info.rpcUrl) });
  return {
    balanceOf: (addr) =>
      client.readContract({ address: info.token.address, abi: TestUSD.abi, functionName: "balanceOf", args: [addr] }),
    authorizationState: (addr, nonce) =>
      client.readContract({
        address: info.token.address,
        abi: TestUSD.abi,
        functionName: "authorizationState",
        args: [addr, nonce],
      }),
  };
}

async function postJson(url, body) {
  const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: r.status, body: await r.json() };
}

// ---------------------------------------------------------------------------- token round
const SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const authTypes = (primaryType) => ({
  [primaryType]: [
    { name: "from", type: "address" },
    { name: "to", type: "address" },
    { name: "value", type: "uint256" },
    { name: "validAfter", type: "uint256" },
    { name: "validBefore", type: "uint256" },
    { name: "nonce", type: "bytes32" },
  ],
});

async function roundToken() {
  console.log("# token round: TestUSD EIP-3009 semantics on a bare anvil (lib/chain.mjs API)");
  const { chain, token, payers } = await startDevChain({ chainId: 31337, payers: 1, payerBalance: 1_000_000n });
  cleanups.push(() => chain.stop());
  const payer = payers[0];
  const payerAcct = privateKeyToAccount(payer.privateKey);
  const relayer = chain.walletFor(chain.accounts.facilitator.privateKey);
  const payTo = chain.accounts.payTo.address;
  const pc = chain.publicClient;
  const domain = { name: token.name, version: token.version, chainId: chain.chainId, verifyingContract: token.address };
  const now = async () => (await pc.getBlock()).timestamp;

  const sep = await pc.readContract({ address: token.address, abi: TestUSD.abi, functionName: "DOMAIN_SEPARATOR" });
  const eip712DomainType = [
    { name: "name", type: "string" },
    { name: "version", type: "string" },
    { name: "chainId", type: "uint256" },
    { name: "verifyingContract", type: "address" },
  ];
  check(
    sep === hashDomain({ domain, types: { EIP712Domain: eip712DomainType } }),
    "DOMAIN_SEPARATOR() equals viem's EIP-712 domain hash",
  );
  const [nm, ver, dec, sym] = await Promise.all(
    ["name", "version", "decimals", "symbol"].map((f) => pc.readContract({ address: token.address, abi: TestUSD.abi, functionName: f })),
  );
  check(nm === "Test USD" && ver === "1" && dec === 6 && sym === "TUSD", "name/version/decimals/symbol", { nm, ver, dec, sym });

  const sign = async (msg, primaryType = "TransferWithAuthorization", acct = payerAcct) =>
    acct.signTypedData({ domain, types: authTypes(primaryType), primaryType, message: msg });
  const mkMsg = async (over = {}) => ({
    from: payer.address,
    to: payTo,
    value: 1000n,
    validAfter: 0n,
    validBefore: (await now()) + 3600n,
    nonce: toHex(crypto.getRandomValues(new Uint8Array(32))),
    ...over,
  });
  const vrsArgs = (m, sig) => {
    const { r, s, v } = parseSignature(sig);
    return [m.from, m.to, m.value, m.validAfter, m.validBefore, m.nonce, Number(v), r, s];
  };
  const bytesArgs = (m, sig) => [m.from, m.to, m.value, m.validAfter, m.validBefore, m.nonce, sig];
  const simulate = async (functionName, args, account = relayer.account) => {
    try {
      await pc.simulateContract({ address: token.address, abi: TestUSD.abi, functionName, args, account });
      return "ok";
    } catch (e) {
      return e.shortMessage + " " + (e.details ?? "") + " " + (e.cause?.reason ?? "");
    }
  };
  const send = async (functionName, args, wallet = relayer) => {
    const hash = await wallet.writeContract({ address: token.address, abi: TestUSD.abi, functionName, args });
    return wallet.waitForTransactionReceipt({ hash });
  };

  // Valid (v,r,s) transfer, submitted by the facilitator account.
  const m1 = await mkMsg();
  const s1 = await sign(m1);
  const before = await chain.balanceOf(token, payTo);
  const r1 = await send("transferWithAuthorization", vrsArgs(m1, s1));
  check(r1.status === "success" && (await chain.balanceOf(token, payTo)) - before === 1000n, "transferWithAuthorization(v,r,s) moves value");
  check(r1.logs.length === 2, "emits AuthorizationUsed + Transfer", r1.logs.length);
  check((await chain.authorizationState(token, payer.address, m1.nonce)) === true, "authorizationState true after use");
  check(/used/.test(await simulate("transferWithAuthorization", vrsArgs(m1, s1))), "reused nonce reverts (used)");

  // bytes overload.
  const m2 = await mkMsg();
  const r2 = await send("transferWithAuthorization", bytesArgs(m2, await sign(m2)));
  check(r2.status === "success", "transferWithAuthorization(..., bytes signature) works");

  const t = await now();
  const m3 = await mkMsg({ validBefore: t - 1n });
  check(/expired/.test(await simulate("transferWithAuthorization", vrsArgs(m3, await sign(m3)))), "validBefore in the past reverts (expired)");
  const m4 = await mkMsg({ validAfter: t + 3600n, validBefore: t + 7200n });
  check(/not yet valid/.test(await simulate("transferWithAuthorization", vrsArgs(m4, await sign(m4)))), "validAfter in the future reverts (not yet valid)");
  const m5 = await mkMsg();
  const other = privateKeyToAccount(generatePayer().privateKey);
  check(/invalid signature/.test(await simulate("transferWithAuthorization", vrsArgs(m5, await sign(m5, undefined, other)))), "signature by another key reverts (invalid signature)");
  const m6 = await mkMsg({ value: 2000n });
  check(/invalid signature/.test(await simulate("transferWithAuthorization", vrsArgs(m6, s1))), "signature over other fields reverts");
  // High-s twin of a valid signature must be rejected (malleability check).
  const m7 = await mkMsg();
  const p7 = parseSignature(await sign(m7));
  const highS = serializeSignature({ r: p7.r, s: toHex(SECP256K1_N - BigInt(p7.s), { size: 32 }), yParity: 1 - p7.yParity });
  check(/invalid signature/.test(await simulate("transferWithAuthorization", bytesArgs(m7, highS))), "high-s (malleable) signature reverts");
  check(/invalid signature/.test(await simulate("transferWithAuthorization", bytesArgs(m7, "0x1234"))), "short signature reverts");
  const big = await mkMsg({ value: 10n ** 12n });
  check(/exceeds balance/.test(await simulate("transferWithAuthorization", vrsArgs(big, await sign(big)))), "value above balance reverts (exceeds balance)");

  // receiveWithAuthorization: only the payee may submit.
  const m8 = await mkMsg();
  const s8 = await sign(m8, "ReceiveWithAuthorization");
  check(/payee/.test(await simulate("receiveWithAuthorization", vrsArgs(m8, s8))), "receiveWithAuthorization by non-payee reverts");
  await chain.fundEth(payTo);
  const r8 = await send("receiveWithAuthorization", vrsArgs(m8, s8), chain.walletFor(chain.accounts.payTo.privateKey));
  check(r8.status === "success", "receiveWithAuthorization by the payee works");

  // Owner-only mint; helpers.
  check(/not the owner/.test(await simulate("mint", [payTo, 1n])), "mint by non-owner reverts");
  const fresh = generatePayer();
  await chain.mint(token, fresh.address, 500n);
  await chain.fundEth(fresh.address);
  await chain.transfer(token, fresh.privateKey, payTo, 200n);
  check((await chain.balanceOf(token, fresh.address)) === 300n, "generatePayer + mint + fundEth + transfer helpers");
  await chain.stop();
}

// ------------------------------------------------------------------------------- v2 round
async function roundV2() {
  console.log("# v2 round: @x402/express 2.27 + @x402/fetch 2.27 on eip155:31337");
  const dn = await spawnDevnet(["--chain-id", "31337", "--payers", "2"]);
  const info = dn.info;
  check(info.network === "eip155:31337" && info.v1Network === null, "devnet reports eip155:31337 without v1 name", info);
  check(/^http:\/\/127\.0\.0\.1:\d+$/.test(info.facilitatorUrl), "facilitator on 127.0.0.1", info.facilitatorUrl);
  const tok = tokenReader(info);

  const supported = await (await fetch(`${info.facilitatorUrl}/supported`)).json();
  show("facilitator GET /supported (31337)", supported);
  check(
    supported.kinds?.some((k) => k.x402Version === 2 && k.scheme === "exact" && k.network === "eip155:31337"),
    "/supported lists v2 exact eip155:31337",
    supported,
  );

  // Reference resource server.
  const resourceServer = new x402ResourceServer(new HTTPFacilitatorClient({ url: info.facilitatorUrl }));
  resourceServer.register(info.network, new ExactEvmScheme());
  const app = express();
  app.use(
    paymentMiddleware(
      {
        "GET /weather": {
          accepts: {
            scheme: "exact",
            network: info.network,
            payTo: info.payTo,
            price: { amount: PRICE.toString(), asset: info.token.address, extra: { name: info.token.name, version: info.token.version } },
          },
          description: "Weather report",
          mimeType: "application/json",
        },
      },
      resourceServer,
    ),
  );
  app.get("/weather", (_req, res) => res.json({ weather: "sunny", temperature: 21 }));
  const srv = await listen(app);
  const url = `${srv.url}/weather`;

  // Unpaid request.
  const unpaid = await fetch(url);
  const prHeader = unpaid.headers.get("payment-required");
  check(unpaid.status === 402 && !!prHeader, "unpaid request -> 402 with PAYMENT-REQUIRED", unpaid.status);
  const pr = decodePaymentRequiredHeader(prHeader);
  show("decoded PAYMENT-REQUIRED (reference @x402/express 2.27)", pr);
  check(pr.x402Version === 2 && pr.accepts?.[0]?.amount === PRICE.toString(), "PAYMENT-REQUIRED is v2 with amount 10000", pr);

  // Paid request through pay-v2.mjs.
  const payer = info.payers[0];
  const b0 = { payer: await tok.balanceOf(payer.address), payTo: await tok.balanceOf(info.payTo) };
  const paid = await runJson("pay-v2.mjs", ["--url", url, "--private-key", payer.privateKey]);
  show("pay-v2.mjs stdout", paid);
  check(paid.status === 200 && paid.error === null, "pay-v2 gets 200", paid);
  check(JSON.parse(paid.body ?? "{}").weather === "sunny", "pay-v2 gets the handler body", paid.body);
  check(paid.receipt?.success === true && /^0x[0-9a-f]{64}$/i.test(paid.receipt?.transaction ?? ""), "receipt success with tx hash", paid.receipt);
  check(paid.headers["payment-response"] !== undefined, "response headers are lowercased and include payment-response", Object.keys(paid.headers));
  const b1 = { payer: await tok.balanceOf(payer.address), payTo: await tok.balanceOf(info.payTo) };
  check(b0.payer - b1.payer === PRICE, "payer balance dropped by exactly 10000", { b0, b1 });
  check(b1.payTo - b0.payTo === PRICE, "payTo balance rose by exactly 10000", { b0, b1 });
  const sentPayload = decodePaymentSignatureHeader(paid.paymentHeader);
  show("decoded PAYMENT-SIGNATURE (@x402/fetch 2.27)", sentPayload);
  check(
    (await tok.authorizationState(payer.address, sentPayload.payload.authorization.nonce)) === true,
    "authorizationState(payer, nonce) is true after settlement",
  );

  // Replay the exact same PAYMENT-SIGNATURE.
  const replay = await fetch(url, { headers: { "PAYMENT-SIGNATURE": paid.paymentHeader } });
  const replayPr = replay.headers.get("payment-required");
  const replayErr = replayPr ? decodePaymentRequiredHeader(replayPr).error : null;
  await replay.text();
  check(replay.status === 402, `replayed header is refused (402, error ${JSON.stringify(replayErr)})`, replay.status);
  const b2 = { payer: await tok.balanceOf(payer.address), payTo: await tok.balanceOf(info.payTo) };
  check(b2.payer === b1.payer && b2.payTo === b1.payTo, "replay moved no tokens", { b1, b2 });

  // Header-only mode, direct /verify, tampering, then spend it at the server.
  const made = await runJson("pay-v2.mjs", ["--url", url, "--private-key", payer.privateKey, "--create-header-only"]);
  check(made.error === null && made.headerName === "PAYMENT-SIGNATURE" && !!made.header, "pay-v2 --create-header-only builds a header", made.error);
  const madePayload = decodePaymentSignatureHeader(made.header);
  const v = await postJson(`${info.facilitatorUrl}/verify`, {
    x402Version: 2,
    paymentPayload: madePayload,
    paymentRequirements: made.paymentRequired.accepts[0],
  });
  check(v.status === 200 && v.body.isValid === true && v.body.payer === payer.address, "facilitator /verify accepts the built header", v);
  const tampered = structuredClone(madePayload);
  tampered.payload.authorization.value = "1";
  const vt = await postJson(`${info.facilitatorUrl}/verify`, {
    x402Version: 2,
    paymentPayload: tampered,
    paymentRequirements: made.paymentRequired.accepts[0],
  });
  check(vt.status === 200 && vt.body.isValid === false && !!vt.body.invalidReason && vt.body.payer === payer.address, `tampered value -> isValid:false (${vt.body.invalidReason}) with HTTP 200`, vt);
  const spent = await fetch(url, { headers: { [made.headerName]: made.header } });
  await spent.text();
  const b3 = { payer: await tok.balanceOf(payer.address), payTo: await tok.balanceOf(info.payTo) };
  check(spent.status === 200 && b2.payer - b3.payer === PRICE, "pre-built header is accepted by the server and settles 10000", { status: spent.status, b2, b3 });

  // Unfunded payer.
  const poor = generatePayer();
  const broke = await runJson("pay-v2.mjs", ["--url", url, "--private-key", poor.privateKey]);
  const brokeErr = broke.headers["payment-required"] ? decodePaymentRequiredHeader(broke.headers["payment-required"]).error : null;
  check(broke.status === 402 && /insufficient/i.test(brokeErr ?? ""), `unfunded payer -> 402 (${brokeErr})`, broke);

  // Facilitator log and 400 style.
  const logEntries = await (await fetch(`${info.facilitatorUrl}/__log`)).json();
  const paths = logEntries.map((e) => `${e.method} ${e.path}`);
  check(paths.includes("GET /supported") && paths.includes("POST /verify") && paths.includes("POST /settle"), "facilitator /__log recorded supported/verify/settle", paths);
  const settleEntry = logEntries.find((e) => e.path === "/settle");
  check(settleEntry?.body?.paymentPayload?.x402Version === 2 && settleEntry?.response?.status === 200, "log entries carry parsed body and response", settleEntry);
  await postJson(`${info.facilitatorUrl}/__config`, { style: 400 });
  const v400 = await postJson(`${info.facilitatorUrl}/verify`, { x402Version: 2, paymentPayload: tampered, paymentRequirements: made.paymentRequired.accepts[0] });
  check(v400.status === 400 && v400.body.isValid === false, "style 400: invalid verify -> HTTP 400 with isValid:false", v400);
  const cleared = await postJson(`${info.facilitatorUrl}/__log/clear`, {});
  check(cleared.body.cleared >= 5 && (await (await fetch(`${info.facilitatorUrl}/__log`)).json()).length === 0, "POST /__log/clear empties the log", cleared);

  await srv.close();
  await dn.stop();
  check(dn.child.exitCode === 0, "devnet exits 0 when its stdin closes", dn.child.exitCode);
}

// ------------------------------------------------------------------------------- v1 round
async function roundV1() {
  console.log("# v1 round: legacy x402-express 1.2.0 + x402-fetch 1.2.0 on base-sepolia (chain 84532)");
  const dn = await spawnDevnet(["--chain-id", "84532", "--payers", "1"]);
  const info = dn.info;
  check(info.network === "eip155:84532" && info.v1Network === "base-sepolia", "devnet 84532 reports v1Network base-sepolia", info);
  const tok = tokenReader(info);
  const supported = await (await fetch(`${info.facilitatorUrl}/supported`)).json();
  show("facilitator GET /supported (84532)", supported);
  check(
    supported.kinds?.some((k) => k.x402Version === 1 && k.network === "base-sepolia") &&
      supported.kinds?.some((k) => k.x402Version === 2 && k.network === "eip155:84532"),
    "/supported lists v1 base-sepolia and v2 eip155:84532",
    supported,
  );

  const app = express();
  app.use(
    legacyPaymentMiddleware(
      info.payTo,
      {
        "GET /v1/weather": {
          price: {
            amount: PRICE.toString(),
            asset: { address: info.token.address, decimals: 6, eip712: { name: info.token.name, version: info.token.version } },
          },
          network: "base-sepolia",
          config: { description: "Weather report (v1)", mimeType: "application/json" },
        },
      },
      { url: info.facilitatorUrl },
    ),
  );
  app.get("/v1/weather", (_req, res) => res.json({ weather: "foggy" }));
  const srv = await listen(app);
  const url = `${srv.url}/v1/weather`;

  const unpaid = await fetch(url);
  const unpaidBody = await unpaid.json();
  show("legacy x402-express 402 body", unpaidBody);
  check(unpaid.status === 402 && unpaidBody.x402Version === 1, "legacy unpaid -> 402 with v1 body", unpaidBody);

  const payer = info.payers[0];
  const b0 = { payer: await tok.balanceOf(payer.address), payTo: await tok.balanceOf(info.payTo) };
  const paid = await runJson("pay-v1.mjs", ["--url", url, "--private-key", payer.privateKey, "--chain-id", "84532"]);
  show("pay-v1.mjs stdout", paid);
  check(paid.status === 200 && JSON.parse(paid.body ?? "{}").weather === "foggy", "pay-v1 gets 200 and the body", paid);
  check(paid.receipt?.success === true && paid.receipt?.network === "base-sepolia", "X-PAYMENT-RESPONSE receipt success on base-sepolia", paid.receipt);
  const xPayment = JSON.parse(Buffer.from(paid.paymentHeader, "base64").toString("utf8"));
  show("decoded X-PAYMENT (x402-fetch 1.2.0)", xPayment);
  const b1 = { payer: await tok.balanceOf(payer.address), payTo: await tok.balanceOf(info.payTo) };
  check(b0.payer - b1.payer === PRICE && b1.payTo - b0.payTo === PRICE, "v1: balances moved by exactly 10000", { b0, b1 });

  const replay = await fetch(url, { headers: { "X-PAYMENT": paid.paymentHeader } });
  const replayBody = await replay.json();
  const b2 = { payer: await tok.balanceOf(payer.address), payTo: await tok.balanceOf(info.payTo) };
  check(replay.status === 402 && b2.payer === b1.payer, `v1 replay refused (${replayBody.error}) and moved no tokens`, { replayBody, b1, b2 });

  // Hand-written v1 requirements (as a gateway would emit) -> header-only -> /verify.
  const reqs = {
    scheme: "exact",
    network: "base-sepolia",
    maxAmountRequired: PRICE.toString(),
    resource: "http://127.0.0.1/v1/hand-written",
    description: "hand-written v1 requirements",
    mimeType: "application/json",
    payTo: info.payTo,
    maxTimeoutSeconds: 60,
    asset: info.token.address,
    extra: { name: info.token.name, version: info.token.version },
  };
  const made = await runJson("pay-v1.mjs", [
    "--private-key",
    payer.privateKey,
    "--create-header-only",
    "--payment-required",
    JSON.stringify({ x402Version: 1, error: "X-PAYMENT header is required", accepts: [reqs] }),
  ]);
  check(made.error === null && made.headerName === "X-PAYMENT" && made.paymentPayload?.x402Version === 1, "pay-v1 --create-header-only builds an X-PAYMENT", made);
  const v = await postJson(`${info.facilitatorUrl}/verify`, { x402Version: 1, paymentPayload: made.paymentPayload, paymentRequirements: reqs });
  check(v.status === 200 && v.body.isValid === true, "facilitator /verify accepts the v1 header for hand-written requirements", v);

  await srv.close();
  await dn.stop();
  check(dn.child.exitCode === 0, "v1 devnet exits 0 when its stdin closes", dn.child.exitCode);
}

async function main() {
  const t0 = Date.now();
  const guard = setTimeout(() => {
    console.log(`not ok - selftest exceeded ${OVERALL_TIMEOUT_MS} ms`);
    failed += 1;
    finish(1);
  }, OVERALL_TIMEOUT_MS);
  for (const [name, round] of [["token", roundToken], ["v2", roundV2], ["v1", roundV1]]) {
    try {
      await round();
    } catch (e) {
      check(false, `${name} round ran without exceptions`, e?.stack ?? String(e));
    }
  }
  clearTimeout(guard);
  console.log(`# finished in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await finish(failed ? 1 : 0);
}

let finishing = false;
async function finish(code) {
  if (finishing) return;
  finishing = true;
  for (const c of cleanups.reverse()) await c().catch(() => {});
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code);
}

process.on("SIGINT", () => finish(130));
process.on("SIGTERM", () => finish(143));
main();
