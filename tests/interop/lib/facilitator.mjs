#!/usr/bin/env node
// A REAL x402 facilitator for the interop tests: @x402/core's x402Facilitator with
// @x402/evm's ExactEvmScheme and UptoEvmScheme (Permit2; v2, "eip155:<chainId>") and, when the chain id has a v1
// network name (84532 -> "base-sepolia"), ExactEvmSchemeV1 for that name. It verifies
// signatures, simulates and submits transferWithAuthorization on the local anvil.
//
// HTTP (127.0.0.1, OS-chosen port unless --port):
//   POST /verify     {x402Version, paymentPayload, paymentRequirements} -> VerifyResponse
//   POST /settle     same body                                          -> SettleResponse
//   GET  /supported                                                     -> {kinds, extensions, signers}
//   GET  /health                                                        -> {ok:true}
//   GET  /__log      every request received (except /__*), oldest first
//   POST /__log/clear
//   GET  /__config   current fault-injection config
//   POST /__config   merge {style, delayMs, verifyDelayMs, settleDelayMs, settleReplyDelayMs,
//                          verifyOverride, settleOverride, supportedOverride,
//                          verifyDropConnection, settleDropConnection, settlePending}
//                    (see README)
//
// Status style for *invalid* results (isValid:false / success:false):
//   200 (default; like Coinbase's example facilitators) or 400 (like x402-rs).
// Malformed requests (non-JSON body, missing paymentPayload/paymentRequirements) are always 400.
// Unexpected exceptions are 500 with an isValid:false / success:false body.
//
// CLI: node lib/facilitator.mjs --rpc-url URL [--chain-id N] [--private-key 0x..]
//        [--style 200|400] [--delay-ms N] [--port N]
//      env fallbacks: FACILITATOR_RPC_URL, FACILITATOR_CHAIN_ID, FACILITATOR_PRIVATE_KEY,
//        FACILITATOR_STYLE, FACILITATOR_DELAY_MS, FACILITATOR_PORT
//      prints ONE JSON line: {facilitatorUrl, facilitatorSigner, networks, v1Networks}
//      and runs until SIGTERM/SIGINT or stdin closes.
import http from "node:http";
import { x402Facilitator } from "@x402/core/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { ExactEvmScheme } from "@x402/evm/exact/facilitator";
import { ExactEvmSchemeV1 } from "@x402/evm/exact/v1/facilitator";
import { UptoEvmScheme } from "@x402/evm/upto/facilitator";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/facilitator";
import { EVM_NETWORK_CHAIN_ID_MAP } from "@x402/evm/v1";
import { createWalletClient, encodeFunctionData, keccak256, http as viemHttp, nonceManager, parseAbi, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { anvilAccount, log, makeChain, ROLE_INDEX } from "./chain.mjs";
import { isMain, parseArgs, printJsonLine, untilShutdown } from "./cli.mjs";

/** v1 network names whose chain id is `chainId` (84532 -> ["base-sepolia"], 31337 -> []). */
export function v1NamesForChainId(chainId) {
  return Object.entries(EVM_NETWORK_CHAIN_ID_MAP)
    .filter(([, id]) => Number(id) === Number(chainId))
    .map(([name]) => name);
}

/** FacilitatorEvmSigner over a viem wallet client (local key, local nonce manager). */
export function makeFacilitatorSigner({ rpcUrl, chainId, privateKey, confirmationTimeoutMs = 30000 }) {
  const account = privateKeyToAccount(privateKey, { nonceManager });
  const client = createWalletClient({
    account,
    chain: makeChain(chainId, rpcUrl),
    transport: viemHttp(rpcUrl),
  }).extend(publicActions);
  const signer = toFacilitatorEvmSigner(
    {
      address: account.address,
      readContract: (a) => client.readContract({ ...a, args: a.args ?? [] }),
      verifyTypedData: (a) => client.verifyTypedData(a),
      writeContract: (a) => client.writeContract({ ...a, args: a.args ?? [] }),
      sendTransaction: (a) => client.sendTransaction(a),
      waitForTransactionReceipt: (a) => client.waitForTransactionReceipt(a),
      getCode: (a) => client.getCode(a),
    },
    { confirmationTimeoutMs },
  );
  return { signer, address: account.address, client };
}

const sleep = (ms) => (ms > 0 ? new Promise((r) => setTimeout(r, ms)) : undefined);

function payerOf(paymentPayload) {
  const p = paymentPayload?.payload;
  const from = p?.authorization?.from ?? p?.permit2Authorization?.from;
  return typeof from === "string" ? from : "";
}

function networkOf(paymentPayload, requirements) {
  return paymentPayload?.accepted?.network ?? paymentPayload?.network ?? requirements?.network ?? "";
}

const TRANSFER_WITH_AUTHORIZATION_ABI = parseAbi([
  "function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature)",
]);

const ADDRESS_RE = /^0x[0-9a-fA-F]{40}$/;
const UINT_RE = /^\d{1,78}$/;
const HEX_RE = /^0x[0-9a-fA-F]*$/;

/**
 * Shape check done before handing a request to @x402/core, so that malformed payments come
 * back as ordinary invalid results instead of exceptions (TypeError/SyntaxError -> 500).
 * Returns null when fine, else [reason, message].
 */
export function shapeProblem(paymentPayload, requirements) {
  if (typeof paymentPayload.x402Version !== "number") return ["invalid_x402_version", "paymentPayload.x402Version must be a number"];
  const inner = paymentPayload.payload;
  if (!inner || typeof inner !== "object") return ["invalid_payload", "paymentPayload.payload must be an object"];
  if (requirements?.scheme === "batch-settlement") {
    // Channel payloads and actions (deposit, voucher, refund, claim, settle): the scheme checks them.
    if (typeof inner.type !== "string") return ["invalid_payload", "batch-settlement payload lacks type"];
  } else if (inner.permit2Authorization) {
    if (typeof inner.signature !== "string" || !HEX_RE.test(inner.signature)) return ["invalid_payload", "bad signature"];
  } else {
    const a = inner.authorization;
    if (!a || typeof a !== "object") return ["invalid_payload", "payload lacks authorization"];
    if (typeof inner.signature !== "string" || !HEX_RE.test(inner.signature)) return ["invalid_payload", "payload.signature must be 0x-hex"];
    for (const k of ["from", "to"]) if (!ADDRESS_RE.test(String(a[k]))) return ["invalid_payload", `authorization.${k} is not an address`];
    for (const k of ["value", "validAfter", "validBefore"]) {
      if (typeof a[k] !== "string" || !UINT_RE.test(a[k])) return ["invalid_payload", `authorization.${k} must be a decimal string`];
    }
    if (!/^0x[0-9a-fA-F]{64}$/.test(String(a.nonce))) return ["invalid_payload", "authorization.nonce must be 0x + 64 hex"];
  }
  if (paymentPayload.x402Version >= 2 && (!paymentPayload.accepted || typeof paymentPayload.accepted !== "object")) {
    return ["invalid_payload", "paymentPayload.accepted must be an object"];
  }
  const amount = paymentPayload.x402Version === 1 ? requirements.maxAmountRequired : requirements.amount;
  if (typeof amount !== "string" || !UINT_RE.test(amount)) return ["invalid_payment_requirements", "requirements amount must be a decimal string"];
  for (const k of ["asset", "payTo"]) {
    if (!ADDRESS_RE.test(String(requirements[k]))) return ["invalid_payment_requirements", `requirements.${k} is not an address`];
  }
  if (typeof requirements.scheme !== "string" || typeof requirements.network !== "string") {
    return ["invalid_payment_requirements", "requirements.scheme/network must be strings"];
  }
  return null;
}

/** Maps @x402/core "no scheme registered" exceptions to ordinary invalid reasons. */
function reasonForRoutingError(err, requirements) {
  const msg = String(err?.message ?? err);
  if (/No facilitator registered for x402 version/i.test(msg)) return "invalid_x402_version";
  if (/No facilitator registered for scheme/i.test(msg)) {
    return requirements?.scheme === "exact" ? "invalid_network" : "unsupported_scheme";
  }
  return null;
}

/**
 * Starts the facilitator HTTP server.
 * @param {object} opts
 * @param {string} opts.rpcUrl
 * @param {number} [opts.chainId=31337]
 * @param {string} [opts.privateKey]  default: anvil account 1 (facilitator role)
 * @param {200|400} [opts.style=200]
 * @param {number} [opts.delayMs=0]   artificial delay before /verify and /settle are processed
 * @param {number} [opts.port=0]
 * @param {string} [opts.batchAuthorizerKey]  a receiver authorizer key this facilitator signs
 *   channel claims and refunds with (its /supported says `extra.receiverAuthorizer`); without
 *   it they must come signed
 */
export async function startFacilitator({
  rpcUrl,
  chainId = 31337,
  privateKey = anvilAccount(ROLE_INDEX.facilitator).privateKey,
  style = 200,
  delayMs = 0,
  port = 0,
  batchAuthorizerKey,
} = {}) {
  if (!rpcUrl) throw new Error("startFacilitator: rpcUrl is required");
  const { signer, address, client } = makeFacilitatorSigner({ rpcUrl, chainId, privateKey });

  const network = `eip155:${chainId}`;
  const v1Networks = v1NamesForChainId(chainId);
  const facilitator = new x402Facilitator();
  facilitator.register(network, new ExactEvmScheme(signer));
  facilitator.register(network, new UptoEvmScheme(signer));
  // Channels: claims and refunds come signed by the receiver authorizer (the gateway's key),
  // or this facilitator signs them with the one it was given.
  const batchAuthorizer = batchAuthorizerKey ? privateKeyToAccount(batchAuthorizerKey) : undefined;
  facilitator.register(network, new BatchSettlementEvmScheme(signer, batchAuthorizer));
  if (v1Networks.length) facilitator.registerV1(v1Networks, new ExactEvmSchemeV1(signer));

  const config = {
    style: Number(style) === 400 ? 400 : 200,
    delayMs: Number(delayMs) || 0,
    verifyDelayMs: null, // null = use delayMs
    settleDelayMs: null,
    // Delay after /settle was processed (the transfer is on chain), before the answer.
    settleReplyDelayMs: 0,
    verifyOverride: null, // {status, body, times?}: answer this instead of processing
    settleOverride: null,
    supportedOverride: null,
    // true or a count: process the call (on chain for /settle), then cut the connection
    // without answering.
    verifyDropConnection: false,
    settleDropConnection: false,
    // {landAfterMs: N | null}: /settle signs the transfer but answers `settlement_pending`
    // with its hash at once, then broadcasts it N ms later (null: never).
    settlePending: null,
  };
  const entries = [];
  let seq = 0;

  function takeOverride(key) {
    const o = config[key];
    if (!o) return null;
    if (typeof o.times === "number") {
      o.times -= 1;
      if (o.times <= 0) config[key] = null;
    }
    return o;
  }

  async function handleVerify(body) {
    if (!body || typeof body !== "object") {
      return [400, { isValid: false, invalidReason: "invalid_payload", invalidMessage: "body must be a JSON object", payer: "" }];
    }
    const { paymentPayload, paymentRequirements } = body;
    const payer = payerOf(paymentPayload);
    if (!paymentPayload || typeof paymentPayload !== "object") {
      return [400, { isValid: false, invalidReason: "invalid_payload", invalidMessage: "missing paymentPayload", payer }];
    }
    if (!paymentRequirements || typeof paymentRequirements !== "object") {
      return [
        400,
        { isValid: false, invalidReason: "invalid_payment_requirements", invalidMessage: "missing paymentRequirements", payer },
      ];
    }
    const problem = shapeProblem(paymentPayload, paymentRequirements);
    if (problem) return [config.style, { isValid: false, invalidReason: problem[0], invalidMessage: problem[1], payer }];
    try {
      const r = await facilitator.verify(paymentPayload, paymentRequirements);
      const out = { ...r, payer: r.payer ?? payer };
      return [out.isValid ? 200 : config.style, out];
    } catch (err) {
      const reason = reasonForRoutingError(err, paymentRequirements);
      if (reason) return [config.style, { isValid: false, invalidReason: reason, invalidMessage: err.message, payer }];
      log(`facilitator /verify exception: ${err?.stack ?? err}`);
      return [500, { isValid: false, invalidReason: "unexpected_verify_error", invalidMessage: String(err?.message ?? err), payer }];
    }
  }

  async function handleSettle(body) {
    const fail = (status, errorReason, errorMessage, payer = "", network = "") => [
      status,
      { success: false, errorReason, errorMessage, transaction: "", network, payer },
    ];
    if (!body || typeof body !== "object") return fail(400, "invalid_payload", "body must be a JSON object");
    const { paymentPayload, paymentRequirements } = body;
    const payer = payerOf(paymentPayload);
    const network = networkOf(paymentPayload, paymentRequirements);
    if (!paymentPayload || typeof paymentPayload !== "object") return fail(400, "invalid_payload", "missing paymentPayload", payer, network);
    if (!paymentRequirements || typeof paymentRequirements !== "object") {
      return fail(400, "invalid_payment_requirements", "missing paymentRequirements", payer, network);
    }
    const problem = shapeProblem(paymentPayload, paymentRequirements);
    if (problem) return fail(config.style, problem[0], problem[1], payer, network);
    if (config.settlePending && paymentPayload.payload?.authorization) {
      return settlePending(paymentPayload, paymentRequirements, payer, network, config.settlePending.landAfterMs);
    }
    try {
      const r = await facilitator.settle(paymentPayload, paymentRequirements);
      const out = { ...r, payer: r.payer ?? payer };
      if (!out.success && out.transaction === undefined) out.transaction = "";
      return [out.success ? 200 : config.style, out];
    } catch (err) {
      const reason = reasonForRoutingError(err, paymentRequirements);
      if (reason) return fail(config.style, reason, err.message, payer, network);
      log(`facilitator /settle exception: ${err?.stack ?? err}`);
      return fail(500, "unexpected_settle_error", String(err?.message ?? err), payer, network);
    }
  }

  /**
   * A settlement whose confirmation "could not be observed": the signed transfer's hash comes
   * back as `settlement_pending` before the transaction exists anywhere; it is broadcast
   * `landAfterMs` later (never when null).
   */
  async function settlePending(paymentPayload, requirements, payer, network, landAfterMs) {
    const a = paymentPayload.payload.authorization;
    const data = encodeFunctionData({
      abi: TRANSFER_WITH_AUTHORIZATION_ABI,
      functionName: "transferWithAuthorization",
      args: [a.from, a.to, BigInt(a.value), BigInt(a.validAfter), BigInt(a.validBefore), a.nonce, paymentPayload.payload.signature],
    });
    const request = await client.prepareTransactionRequest({ to: requirements.asset, data, gas: 200000n });
    const serializedTransaction = await client.signTransaction(request);
    const transaction = keccak256(serializedTransaction);
    if (landAfterMs !== null && landAfterMs !== undefined) {
      setTimeout(() => {
        client.sendRawTransaction({ serializedTransaction }).catch((e) => log(`pending settlement broadcast failed: ${e?.message ?? e}`));
      }, Number(landAfterMs));
    }
    return [
      config.style,
      { success: false, errorReason: "settlement_pending", errorMessage: "broadcast; receipt not observed", transaction, network, payer },
    ];
  }

  async function route(req, entry) {
    const path = entry.path;
    const parse = () => {
      if (entry.body === undefined) throw Object.assign(new Error("body is not valid JSON"), { badJson: true });
      return entry.body;
    };
    if (req.method === "GET" && path === "/health") return [200, { ok: true }];
    if (req.method === "GET" && path === "/supported") {
      const o = takeOverride("supportedOverride");
      if (o) return [o.status ?? 200, o.body];
      return [200, facilitator.getSupported()];
    }
    if (req.method === "POST" && (path === "/verify" || path === "/settle")) {
      const isVerify = path === "/verify";
      const d = isVerify ? config.verifyDelayMs ?? config.delayMs : config.settleDelayMs ?? config.delayMs;
      await sleep(d);
      const o = takeOverride(isVerify ? "verifyOverride" : "settleOverride");
      if (o) return [o.status ?? 200, o.body];
      let body;
      try {
        body = parse();
      } catch {
        return isVerify
          ? [400, { isValid: false, invalidReason: "invalid_payload", invalidMessage: "body is not valid JSON", payer: "" }]
          : [400, { success: false, errorReason: "invalid_payload", errorMessage: "body is not valid JSON", transaction: "", network: "", payer: "" }];
      }
      return isVerify ? handleVerify(body) : handleSettle(body);
    }
    if (req.method === "GET" && path === "/__log") return [200, entries];
    if (req.method === "POST" && path === "/__log/clear") {
      const n = entries.length;
      entries.length = 0;
      return [200, { cleared: n }];
    }
    if (path === "/__config") {
      if (req.method === "POST") {
        const patch = parse() ?? {};
        for (const k of Object.keys(patch)) {
          if (!(k in config)) return [400, { error: `unknown config key ${k}` }];
        }
        Object.assign(config, patch);
        if (patch.style !== undefined) config.style = Number(patch.style) === 400 ? 400 : 200;
      }
      return [200, config];
    }
    return [404, { error: `no route ${req.method} ${path}` }];
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const rawBody = Buffer.concat(chunks).toString("utf8");
      const url = new URL(req.url, "http://127.0.0.1");
      let body = null;
      if (rawBody.length) {
        try {
          body = JSON.parse(rawBody);
        } catch {
          body = undefined; // not JSON; raw text kept in entry.rawBody
        }
      }
      const entry = {
        seq: ++seq,
        time: new Date().toISOString(),
        method: req.method,
        path: url.pathname,
        query: url.search || "",
        headers: req.headers,
        body,
        ...(body === undefined ? { rawBody } : {}),
        response: null,
      };
      // Logged BEFORE processing, so a hung/slow verify or settle is already visible.
      if (!url.pathname.startsWith("/__")) entries.push(entry);
      const t0 = Date.now();
      let status;
      let payload;
      try {
        [status, payload] = await route(req, entry);
      } catch (err) {
        status = err?.badJson ? 400 : 500;
        payload = { error: String(err?.message ?? err) };
      }
      if (url.pathname === "/settle" && config.settleReplyDelayMs > 0) await sleep(config.settleReplyDelayMs);
      entry.response = { status, body: payload, durationMs: Date.now() - t0 };
      const dropKey = url.pathname === "/settle" ? "settleDropConnection" : url.pathname === "/verify" ? "verifyDropConnection" : null;
      if (dropKey && config[dropKey]) {
        if (typeof config[dropKey] === "number") {
          config[dropKey] -= 1;
          if (config[dropKey] <= 0) config[dropKey] = false;
        }
        entry.response.dropped = true;
        req.socket.destroy();
        return;
      }
      const text = typeof payload === "string" ? payload : JSON.stringify(payload);
      res.writeHead(status, {
        "content-type": typeof payload === "string" ? "text/plain" : "application/json",
        "content-length": Buffer.byteLength(text),
      });
      res.end(text);
    });
  });

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(Number(port) || 0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const actualPort = server.address().port;
  const url = `http://127.0.0.1:${actualPort}`;
  log(`facilitator ${address} listening on ${url} (${[network, ...v1Networks].join(", ")}; style ${config.style})`);

  return {
    url,
    port: actualPort,
    signerAddress: address,
    network,
    v1Networks,
    facilitator,
    config,
    entries,
    async close() {
      await new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      });
    },
  };
}

// ------------------------------------------------------------------------------------ CLI
async function main() {
  const args = parseArgs(process.argv.slice(2), {
    "rpc-url": "str",
    "chain-id": "str",
    "private-key": "str",
    style: "str",
    "delay-ms": "str",
    port: "str",
    "batch-authorizer-key": "str",
  });
  const env = process.env;
  const fac = await startFacilitator({
    rpcUrl: args["rpc-url"] ?? env.FACILITATOR_RPC_URL,
    chainId: Number(args["chain-id"] ?? env.FACILITATOR_CHAIN_ID ?? 31337),
    privateKey: args["private-key"] ?? env.FACILITATOR_PRIVATE_KEY ?? undefined,
    style: Number(args.style ?? env.FACILITATOR_STYLE ?? 200),
    delayMs: Number(args["delay-ms"] ?? env.FACILITATOR_DELAY_MS ?? 0),
    port: Number(args.port ?? env.FACILITATOR_PORT ?? 0),
    batchAuthorizerKey: args["batch-authorizer-key"],
  });
  await printJsonLine({
    facilitatorUrl: fac.url,
    facilitatorSigner: fac.signerAddress,
    networks: [fac.network],
    v1Networks: fac.v1Networks,
  });
  const why = await untilShutdown();
  log(`facilitator shutting down (${why})`);
  await fac.close();
  process.exit(0);
}

if (isMain(import.meta.url)) {
  main().catch((e) => {
    process.stderr.write(`facilitator: ${e?.stack ?? e}\n`);
    process.exit(1);
  });
}
