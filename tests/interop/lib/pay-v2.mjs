#!/usr/bin/env node
// x402 v2 paying client = the reference @x402/fetch 2.27 stack:
//   wrapFetchWithPayment(fetch, new x402Client().register("eip155:*", new ExactEvmScheme(account)))
//
// Usage:
//   node lib/pay-v2.mjs --url URL [--private-key 0x..] [--method GET] [--body STRING]
//        [--header "Name: value"]... [--timeout-ms 30000] [--register-v1]
//        [--create-header-only] [--payment-required B64|JSON]
//   The key may also come from env PAYER_PRIVATE_KEY.
//
// Default mode: performs the request, pays a 402 once, prints ONE JSON line:
//   {status, headers:{lowercased: value}, body:"text", receipt:<decoded PAYMENT-RESPONSE>|null,
//    error:"message"|null, paymentHeader:"<PAYMENT-SIGNATURE sent>"|null,
//    paymentRequired:<decoded PAYMENT-REQUIRED of the first 402>|null, requests:<count>}
//   `status` is null when no final response was obtained (error says why).
//
// --create-header-only: fetches the URL once (expects a 402), builds the payment with the
//   core client APIs (x402HTTPClient.getPaymentRequiredResponse -> createPaymentPayload ->
//   encodePaymentSignatureHeader) and does NOT send it. Prints ONE JSON line:
//   {paymentRequired, header, headerName:"PAYMENT-SIGNATURE"|"X-PAYMENT", paymentPayload,
//    status:<status of the unpaid response>, error:null}
//   With --payment-required (a PAYMENT-REQUIRED header value, or its JSON) no request is made.
//
// Spend controls: @x402/core 2.27's x402Client by default only pays "default assets" (USDC on
// known chains) up to $1; our TestUSD on anvil is not one, so this client disables them
// (setSpendControls(false)).
//
// Exit status: 0 whenever the JSON line was printed (failures are in "error"); 2 on bad usage.
import { x402Client, x402HTTPClient } from "@x402/core/client";
import { decodePaymentRequiredHeader, decodePaymentResponseHeader } from "@x402/core/http";
import { ExactEvmScheme, registerExactEvmScheme } from "@x402/evm/exact/client";
import { wrapFetchWithPayment } from "@x402/fetch";
import { privateKeyToAccount } from "viem/accounts";
import { errorText, isMain, parseArgs, printJsonLine } from "./cli.mjs";

export function headersToObject(headers) {
  const out = {};
  headers.forEach((value, key) => {
    out[key.toLowerCase()] = value;
  });
  return out;
}

export function parseHeaderFlags(list = []) {
  const h = {};
  for (const line of list) {
    const i = line.indexOf(":");
    if (i <= 0) throw new Error(`bad --header ${JSON.stringify(line)} (want "Name: value")`);
    h[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return h;
}

/** x402Client paying with `privateKey` on every eip155 chain (optionally v1 names too). */
export function makeV2Client(privateKey, { registerV1 = false } = {}) {
  const account = privateKeyToAccount(privateKey);
  const client = new x402Client();
  if (registerV1) registerExactEvmScheme(client, { signer: account });
  else client.register("eip155:*", new ExactEvmScheme(account));
  client.setSpendControls(false);
  return { client, account };
}

function decodeMaybe(fn, value) {
  if (!value) return null;
  try {
    return fn(value);
  } catch {
    return null;
  }
}

/** Pays `url` with @x402/fetch and returns the CLI's result object. */
export async function payV2({ url, privateKey, method = "GET", body, headers = {}, timeoutMs = 30000, registerV1 = false }) {
  const { client } = makeV2Client(privateKey, { registerV1 });
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
  // Observe what wrapFetchWithPayment sends/receives, without changing it.
  const spyFetch = async (input, init) => {
    const req = input instanceof Request ? input : new Request(input, init);
    result.requests += 1;
    const sig = req.headers.get("payment-signature") ?? req.headers.get("x-payment");
    if (sig) result.paymentHeader = sig;
    const res = await fetch(req);
    if (res.status === 402 && result.paymentRequired === null) {
      result.paymentRequired = decodeMaybe(decodePaymentRequiredHeader, res.headers.get("payment-required"));
    }
    return res;
  };
  const payFetch = wrapFetchWithPayment(spyFetch, client);
  try {
    const init = { method, headers, signal: AbortSignal.timeout(timeoutMs) };
    if (body !== undefined) init.body = body;
    const res = await payFetch(url, init);
    result.status = res.status;
    result.headers = headersToObject(res.headers);
    result.body = await res.text();
    const rh = res.headers.get("payment-response") ?? res.headers.get("x-payment-response");
    if (rh) {
      try {
        result.receipt = decodePaymentResponseHeader(rh);
      } catch (e) {
        result.receipt = null;
        result.receiptError = `undecodable payment-response: ${e.message}`;
      }
    }
  } catch (e) {
    result.error = errorText(e);
  }
  return result;
}

/** Fetches the 402 (or takes a given PAYMENT-REQUIRED) and builds the payment header only. */
export async function createV2Header({
  url,
  privateKey,
  method = "GET",
  body,
  headers = {},
  timeoutMs = 30000,
  registerV1 = false,
  paymentRequiredValue,
}) {
  const { client } = makeV2Client(privateKey, { registerV1 });
  const httpClient = new x402HTTPClient(client);
  const out = { paymentRequired: null, header: null, headerName: null, paymentPayload: null, status: null, error: null };
  try {
    let paymentRequired;
    if (paymentRequiredValue) {
      const v = paymentRequiredValue.trim();
      paymentRequired = v.startsWith("{") ? JSON.parse(v) : decodePaymentRequiredHeader(v);
    } else {
      const init = { method, headers, signal: AbortSignal.timeout(timeoutMs) };
      if (body !== undefined) init.body = body;
      const res = await fetch(url, init);
      out.status = res.status;
      const text = await res.text();
      if (res.status !== 402) throw new Error(`expected a 402, got ${res.status}`);
      let parsed;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {}
      paymentRequired = httpClient.getPaymentRequiredResponse((n) => res.headers.get(n), parsed);
    }
    out.paymentRequired = paymentRequired;
    const payload = await httpClient.createPaymentPayload(paymentRequired);
    const encoded = httpClient.encodePaymentSignatureHeader(payload);
    const [name, value] = Object.entries(encoded)[0];
    out.headerName = name;
    out.header = value;
    out.paymentPayload = payload;
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
      method: "str",
      body: "str",
      header: "list",
      "timeout-ms": "str",
      "register-v1": "bool",
      "create-header-only": "bool",
      "payment-required": "str",
    });
    if (!a.url && !a["payment-required"]) throw new Error("--url is required");
    a.key = a["private-key"] ?? process.env.PAYER_PRIVATE_KEY;
    if (!a.key) throw new Error("--private-key or PAYER_PRIVATE_KEY is required");
    a.headers = parseHeaderFlags(a.header);
  } catch (e) {
    process.stderr.write(`pay-v2: ${e.message}\n`);
    process.exit(2);
  }
  const common = {
    url: a.url,
    privateKey: a.key,
    method: (a.method ?? "GET").toUpperCase(),
    body: a.body,
    headers: a.headers,
    timeoutMs: Number(a["timeout-ms"] ?? 30000),
    registerV1: !!a["register-v1"],
  };
  const out =
    a["create-header-only"] || a["payment-required"]
      ? await createV2Header({ ...common, paymentRequiredValue: a["payment-required"] })
      : await payV2(common);
  await printJsonLine(out);
}

if (isMain(import.meta.url)) {
  main().then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`pay-v2: ${e?.stack ?? e}\n`);
      process.exit(1);
    },
  );
}
