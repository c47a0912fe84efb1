#!/usr/bin/env node
// x402 v1 paying client = the legacy reference stack: x402-fetch 1.2.0
//   wrapFetchWithPayment(fetch, walletClient, maxValue)
// which reads the 402 JSON *body* ({x402Version:1, accepts:[...]}) and retries with X-PAYMENT.
// v1 names networks ("base-sepolia" = chain 84532), so run the devnet with --chain-id 84532.
//
// Usage:
//   node lib/pay-v1.mjs --url URL [--private-key 0x..] [--chain-id 84532] [--max-value UNITS]
//        [--method GET] [--body STRING] [--header "Name: value"]... [--timeout-ms 30000]
//        [--create-header-only] [--payment-required JSON]
//   The key may also come from env PAYER_PRIVATE_KEY.
//   --chain-id selects the wallet's chain, which x402-fetch maps to the v1 network name it
//   accepts (84532 -> base-sepolia). --max-value defaults to x402-fetch's own default
//   (100000 = 0.10 USDC); larger prices make it refuse ("Payment amount exceeds maximum allowed").
//
// Default mode prints ONE JSON line:
//   {status, headers:{lowercased}, body:"text", receipt:<decoded X-PAYMENT-RESPONSE>|null,
//    error|null, paymentHeader:"<X-PAYMENT sent>"|null, paymentRequired:<402 JSON body>|null,
//    requests:<count>}
// --create-header-only: GETs the 402 (or uses --payment-required, the 402 body JSON) and builds
//   the X-PAYMENT value with x402/client's selectPaymentRequirements + createPaymentHeader,
//   without sending it. Prints {paymentRequired, selected, header, headerName:"X-PAYMENT",
//   paymentPayload, status, error}.
// Exit status: 0 whenever the JSON line was printed; 2 on bad usage.
import { createPaymentHeader, selectPaymentRequirements } from "x402/client";
import { ChainIdToNetwork, PaymentRequirementsSchema } from "x402/types";
import { decodeXPaymentResponse, wrapFetchWithPayment } from "x402-fetch";
import { createWalletClient, custom } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { makeChain } from "./chain.mjs";
import { errorText, isMain, parseArgs, printJsonLine } from "./cli.mjs";
import { headersToObject, parseHeaderFlags } from "./pay-v2.mjs";

/** viem wallet client the legacy packages accept as a Signer. It never makes RPC calls. */
export function makeV1Wallet(privateKey, chainId = 84532) {
  const account = privateKeyToAccount(privateKey);
  return createWalletClient({
    account,
    chain: makeChain(chainId, "http://127.0.0.1:0"),
    transport: custom({
      async request({ method }) {
        throw new Error(`pay-v1 makes no RPC calls (attempted ${method})`);
      },
    }),
  });
}

export function decodeXPayment(header) {
  return JSON.parse(Buffer.from(header, "base64").toString("utf8"));
}

export async function payV1({
  url,
  privateKey,
  chainId = 84532,
  maxValue,
  method = "GET",
  body,
  headers = {},
  timeoutMs = 30000,
}) {
  const wallet = makeV1Wallet(privateKey, chainId);
  const result = {
    status: null,
    headers: {},
    body: null,
    receipt: null,
    error: null,
    paymentHeader: null,
    paymentRequired: null,
    requests: 0,
  };
  const spyFetch = async (input, init) => {
    result.requests += 1;
    const h = new Headers(init?.headers ?? {});
    if (h.get("x-payment")) result.paymentHeader = h.get("x-payment");
    const { __is402Retry, ...cleanInit } = init ?? {};
    const res = await fetch(input, cleanInit);
    if (res.status === 402 && result.paymentRequired === null) {
      try {
        result.paymentRequired = JSON.parse(await res.clone().text());
      } catch {}
    }
    return res;
  };
  const payFetch = wrapFetchWithPayment(spyFetch, wallet, maxValue === undefined ? undefined : BigInt(maxValue));
  try {
    const init = { method, headers, signal: AbortSignal.timeout(timeoutMs) };
    if (body !== undefined) init.body = body;
    const res = await payFetch(url, init);
    result.status = res.status;
    result.headers = headersToObject(res.headers);
    result.body = await res.text();
    const rh = res.headers.get("x-payment-response");
    if (rh) {
      try {
        result.receipt = decodeXPaymentResponse(rh);
      } catch (e) {
        result.receiptError = `undecodable x-payment-response: ${e.message}`;
      }
    }
  } catch (e) {
    result.error = errorText(e);
  }
  return result;
}

/**
 * Builds an X-PAYMENT value for a v1 402 body without sending it.
 * `paymentRequired` may be given directly (object or JSON string); otherwise `url` is fetched.
 */
export async function createV1Header({
  url,
  privateKey,
  chainId = 84532,
  method = "GET",
  body,
  headers = {},
  timeoutMs = 30000,
  paymentRequired: given,
}) {
  const wallet = makeV1Wallet(privateKey, chainId);
  const out = {
    paymentRequired: null,
    selected: null,
    header: null,
    headerName: "X-PAYMENT",
    paymentPayload: null,
    status: null,
    error: null,
  };
  try {
    let pr = typeof given === "string" ? JSON.parse(given) : given;
    if (!pr) {
      const init = { method, headers, signal: AbortSignal.timeout(timeoutMs) };
      if (body !== undefined) init.body = body;
      const res = await fetch(url, init);
      out.status = res.status;
      const text = await res.text();
      if (res.status !== 402) throw new Error(`expected a 402, got ${res.status}`);
      pr = JSON.parse(text);
    }
    out.paymentRequired = pr;
    const accepts = (pr.accepts ?? []).map((x) => PaymentRequirementsSchema.parse(x));
    const selected = selectPaymentRequirements(accepts, ChainIdToNetwork[chainId], "exact");
    out.selected = selected;
    out.header = await createPaymentHeader(wallet, pr.x402Version ?? 1, selected);
    out.paymentPayload = decodeXPayment(out.header);
  } catch (e) {
    out.error = errorText(e);
  }
  return out;
}

async function main() {
  let a;
  try {
    a = parseArgs(process.argv.slice(2), {
      url: "str",
      "private-key": "str",
      "chain-id": "str",
      "max-value": "str",
      method: "str",
      body: "str",
      header: "list",
      "timeout-ms": "str",
      "create-header-only": "bool",
      "payment-required": "str",
    });
    if (!a.url && !a["payment-required"]) throw new Error("--url is required");
    a.key = a["private-key"] ?? process.env.PAYER_PRIVATE_KEY;
    if (!a.key) throw new Error("--private-key or PAYER_PRIVATE_KEY is required");
    a.headers = parseHeaderFlags(a.header);
  } catch (e) {
    process.stderr.write(`pay-v1: ${e.message}\n`);
    process.exit(2);
  }
  const common = {
    url: a.url,
    privateKey: a.key,
    chainId: Number(a["chain-id"] ?? 84532),
    method: (a.method ?? "GET").toUpperCase(),
    body: a.body,
    headers: a.headers,
    timeoutMs: Number(a["timeout-ms"] ?? 30000),
  };
  const out =
    a["create-header-only"] || a["payment-required"]
      ? await createV1Header({ ...common, paymentRequired: a["payment-required"] })
      : await payV1({ ...common, maxValue: a["max-value"] });
  await printJsonLine(out);
}

if (isMain(import.meta.url)) {
  main().then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`pay-v1: ${e?.stack ?? e}\n`);
      process.exit(1);
    },
  );
}
