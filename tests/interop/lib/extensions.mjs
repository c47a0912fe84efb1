#!/usr/bin/env node
// The reference packages' view of the gateway's protocol extensions, payment flows and
// discovery documents.
//
//   node lib/extensions.mjs pay --url URL --private-key 0x.. [--payment-id ID] [--unknown-flow]
//        [--method POST]
//     Fetches the 402, optionally puts first an offer with an unknown `extra.paymentFlow`, and
//     lets the reference x402Client (@x402/core + @x402/evm exact, spend controls off; with the
//     @x402/extensions payment-identifier hook when --payment-id is given) build the payment,
//     without sending it. Prints ONE JSON line:
//       {paymentRequired, paymentPayload, header, bazaar: {valid, errors, spec, discovery},
//        paymentIdentifier: {valid, errors}, validation: <@agentcash/discovery 402 check>,
//        error}
//
//   node lib/extensions.mjs siwx-fetch --url URL --private-key 0x..
//     The reference Sign-In-With-X client (wrapFetchWithSIWx from @x402/extensions): on a 402
//     that offers sign-in it signs the challenge and asks again. Prints ONE JSON line:
//       {status, body, error}
//
//   node lib/extensions.mjs siwx-header --url URL --private-key 0x.. [--domain D]
//     Builds (does not send) a sign-in for the 402's challenge with the reference message
//     format and signer; --domain signs it for another domain. Prints {header, address, error}.
//
//   node lib/extensions.mjs pay-upto --url URL --private-key 0x..
//     Pays with the reference `upto` client (@x402/evm/upto/client in @x402/fetch). Prints
//       {status, headers, body, receipt, accepted, error}
//
//   node lib/extensions.mjs discover --origin URL
//     Runs @agentcash/discovery on the origin (OpenAPI at /openapi.json), validates the OpenAPI
//     document with @readme/openapi-parser, and reads /.well-known/x402. Prints ONE JSON line:
//       {discovery, openapiValid, openapiErrors, warnings, wellKnown, legacy, error}
//
// Exit status: 0 whenever the JSON line was printed (failures are in "error"); 2 on bad usage.
import { discoverOriginSchema, getOpenAPI, getWarningsForOpenAPI, probeLegacyWellKnown, validatePaymentRequiredDetailed } from "@agentcash/discovery";
import { validate as validateOpenApi } from "@readme/openapi-parser";
import { x402Client, x402HTTPClient } from "@x402/core/client";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { UptoEvmScheme } from "@x402/evm/upto/client";
import { wrapFetchWithPayment } from "@x402/fetch";
import { extractDiscoveryInfo, validateDiscoveryExtension, validateDiscoveryExtensionSpec } from "@x402/extensions/bazaar";
import { appendPaymentIdentifierToExtensions, validatePaymentIdentifier } from "@x402/extensions/payment-identifier";
import { createSIWxMessage, encodeSIWxHeader, signEVMMessage, wrapFetchWithSIWx } from "@x402/extensions/sign-in-with-x";
import { decodePaymentRequiredHeader, decodePaymentResponseHeader } from "@x402/core/http";
import { privateKeyToAccount } from "viem/accounts";
import { errorText, isMain, parseArgs, printJsonLine } from "./cli.mjs";

/** Builds (does not send) the reference client's payment for the 402 at `url`. */
export async function pay({ url, privateKey, paymentId, unknownFlow, method = "GET" }) {
  const out = { paymentRequired: null, paymentPayload: null, header: null, bazaar: null, paymentIdentifier: null, validation: null, error: null };
  try {
    const client = new x402Client();
    client.register("eip155:*", new ExactEvmScheme(privateKeyToAccount(privateKey)));
    client.setSpendControls(false);
    if (paymentId) {
      client.onBeforePaymentCreation(async (ctx) => {
        appendPaymentIdentifierToExtensions(ctx.paymentRequired.extensions ?? {}, paymentId);
      });
    }
    const http = new x402HTTPClient(client);
    const init = { method, signal: AbortSignal.timeout(30000) };
    if (method !== "GET" && method !== "HEAD") {
      init.body = "{}";
      init.headers = { "content-type": "application/json" };
    }
    const res = await fetch(url, init);
    const text = await res.text();
    if (res.status !== 402) throw new Error(`expected a 402, got ${res.status}`);
    let body;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {}
    const paymentRequired = http.getPaymentRequiredResponse((n) => res.headers.get(n), body);
    out.paymentRequired = structuredClone(paymentRequired);
    out.validation = validatePaymentRequiredDetailed(paymentRequired);
    const bazaar = paymentRequired.extensions?.bazaar;
    if (bazaar) {
      const v = validateDiscoveryExtension(bazaar);
      out.bazaar = { valid: v.valid, errors: v.errors ?? [], spec: validateDiscoveryExtensionSpec(bazaar) };
    }
    const pid = paymentRequired.extensions?.["payment-identifier"];
    if (pid) {
      const v = validatePaymentIdentifier(pid);
      out.paymentIdentifier = { valid: v.valid, errors: v.errors ?? [] };
    }
    if (unknownFlow) {
      const first = paymentRequired.accepts[0];
      paymentRequired.accepts.unshift({ ...first, amount: "1", extra: { ...first.extra, paymentFlow: "teleport" } });
    }
    const payload = await http.createPaymentPayload(paymentRequired);
    out.paymentPayload = payload;
    const [, value] = Object.entries(http.encodePaymentSignatureHeader(payload))[0];
    out.header = value;
    if (out.bazaar) out.bazaar.discovery = extractDiscoveryInfo(payload, payload.accepted);
  } catch (e) {
    out.error = errorText(e);
  }
  return out;
}

/** Pays `url` with the reference `upto` client. */
export async function payUpto({ url, privateKey }) {
  const out = { status: null, headers: {}, body: null, receipt: null, accepted: null, error: null };
  try {
    const client = new x402Client();
    client.register("eip155:*", new UptoEvmScheme(privateKeyToAccount(privateKey)));
    client.setSpendControls(false);
    client.onAfterPaymentCreation(async (ctx) => {
      out.accepted = ctx.paymentPayload.accepted;
    });
    const f = wrapFetchWithPayment(fetch, client);
    const res = await f(url, { signal: AbortSignal.timeout(30000) });
    out.status = res.status;
    res.headers.forEach((v, k) => {
      out.headers[k] = v;
    });
    out.body = await res.text();
    const rh = res.headers.get("payment-response");
    if (rh) out.receipt = decodePaymentResponseHeader(rh);
  } catch (e) {
    out.error = errorText(e);
  }
  return out;
}

/** Fetches `url` through the reference sign-in client. */
export async function siwxFetch({ url, privateKey }) {
  const out = { status: null, body: null, error: null };
  try {
    const f = wrapFetchWithSIWx(fetch, privateKeyToAccount(privateKey));
    const res = await f(url, { signal: AbortSignal.timeout(30000) });
    out.status = res.status;
    out.body = await res.text();
  } catch (e) {
    out.error = errorText(e);
  }
  return out;
}

/** A sign-in for the challenge of the 402 at `url`, signed as the reference client signs. */
export async function siwxHeader({ url, privateKey, domain }) {
  const out = { header: null, address: null, error: null };
  try {
    const account = privateKeyToAccount(privateKey);
    const res = await fetch(url, { signal: AbortSignal.timeout(30000) });
    if (res.status !== 402) throw new Error(`expected a 402, got ${res.status}`);
    const pr = decodePaymentRequiredHeader(res.headers.get("payment-required"));
    const ext = pr.extensions?.["sign-in-with-x"];
    if (!ext) throw new Error("the 402 offers no sign-in");
    const chain = ext.supportedChains[0];
    const info = { ...ext.info, chainId: chain.chainId, type: chain.type };
    if (domain) info.domain = domain;
    const signature = await signEVMMessage(createSIWxMessage(info, account.address), account);
    out.address = account.address;
    out.header = encodeSIWxHeader({ ...info, address: account.address, signature });
  } catch (e) {
    out.error = errorText(e);
  }
  return out;
}

/** What the discovery packages make of the gateway's documents. */
export async function discover({ origin }) {
  const out = { discovery: null, openapiValid: false, openapiErrors: [], warnings: [], wellKnown: null, legacy: null, error: null };
  try {
    out.discovery = await discoverOriginSchema({ target: origin });
    const source = await getOpenAPI(origin);
    if (source.isErr()) throw new Error(`openapi fetch: ${source.error.message}`);
    out.warnings = getWarningsForOpenAPI(source.value);
    const doc = await (await fetch(`${origin}/openapi.json`)).json();
    const v = await validateOpenApi(doc);
    out.openapiValid = v.valid;
    out.openapiErrors = v.errors ?? [];
    const wk = await fetch(`${origin}/.well-known/x402`);
    out.wellKnown = { status: wk.status, body: wk.status === 200 ? await wk.json() : null };
    out.legacy = await probeLegacyWellKnown(origin);
  } catch (e) {
    out.error = errorText(e);
  }
  return out;
}

async function main() {
  const [mode, ...rest] = process.argv.slice(2);
  let a;
  try {
    a = parseArgs(rest, {
      url: "str",
      "private-key": "str",
      "payment-id": "str",
      "unknown-flow": "bool",
      method: "str",
      origin: "str",
      domain: "str",
    });
    const modes = ["pay", "pay-upto", "siwx-fetch", "siwx-header", "discover"];
    if (!modes.includes(mode)) throw new Error(`mode is one of ${modes.join(", ")}`);
    if (mode === "discover" ? !a.origin : !a.url || !a["private-key"]) {
      throw new Error(mode === "discover" ? "discover needs --origin" : `${mode} needs --url and --private-key`);
    }
  } catch (e) {
    process.stderr.write(`extensions: ${e.message}\n`);
    process.exit(2);
  }
  const common = { url: a.url, privateKey: a["private-key"] };
  let out;
  if (mode === "pay") {
    out = await pay({
      ...common,
      paymentId: a["payment-id"],
      unknownFlow: !!a["unknown-flow"],
      method: (a.method ?? "GET").toUpperCase(),
    });
  } else if (mode === "pay-upto") {
    out = await payUpto(common);
  } else if (mode === "siwx-fetch") {
    out = await siwxFetch(common);
  } else if (mode === "siwx-header") {
    out = await siwxHeader({ ...common, domain: a.domain });
  } else {
    out = await discover({ origin: a.origin });
  }
  printJsonLine(out);
}

if (isMain(import.meta.url)) await main();
