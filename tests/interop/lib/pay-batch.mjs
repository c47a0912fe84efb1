#!/usr/bin/env node
// x402 `batch-settlement` paying client = the reference @x402/fetch 2.27 stack with the
// reference @x402/evm batch-settlement client scheme (one channel per payer and receiver; a
// deposit on the first payment, cumulative vouchers after; corrective 402s resynchronize it):
//   wrapFetchWithPayment(fetch, new x402Client().register("eip155:*",
//                        new BatchSettlementEvmScheme(signer, {depositPolicy, salt})))
//
// Usage:
//   node lib/pay-batch.mjs --url URL[,URL2,...] --rpc-url RPC [--private-key 0x..]
//        [--requests 1] [--concurrency 1] [--deposit-multiplier 5] [--salt 0x..(32 bytes)]
//        [--method GET] [--timeout-ms 30000] [--refund all|AMOUNT] [--wallet 0x..]
//   The key may also come from env PAYER_PRIVATE_KEY. With several URLs (replicas of one
//   gateway), request i goes to URL i mod n. `--concurrency C` runs C workers that share the
//   client (and so the channel). `--refund` then asks for the channel's escrow back through
//   the reference client's cooperative refund (`scheme.refund(url, {amount})`) at the first
//   URL: all that was not charged, or AMOUNT atomic units. `--wallet` pays from that ERC-1271
//   smart wallet (`lib/smart-wallet.mjs`) whose owner is the key: the channel's payer is the
//   wallet and its payer authorizer the zero address, so its vouchers and deposits are checked
//   by the wallet contract, never by ECDSA recovery.
//
// Prints ONE JSON line:
//   {results: [{status, body, receipt, sent: "deposit"|"voucher"|null, error}],
//    sent: {deposit, voucher, refund, none}, statuses: {"200": n, ...},
//    refund: {receipt, error} (with --refund), error}
// `sent` counts the payload types the client put on the wire (retries after corrective 402s
// included). Exit status 0 whenever the JSON line was printed; 2 on bad usage.
import { x402Client } from "@x402/core/client";
import { decodePaymentResponseHeader } from "@x402/core/http";
import { toClientEvmSigner } from "@x402/evm";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import { wrapFetchWithPayment } from "@x402/fetch";
import { createPublicClient, getAddress, http, zeroAddress } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { errorText, isMain, parseArgs, printJsonLine } from "./cli.mjs";

function decodeSignature(value) {
  try {
    return JSON.parse(Buffer.from(value, "base64").toString("utf8"));
  } catch {
    return null;
  }
}

/** Pays `urls` `requests` times through one batch-settlement client. */
export async function payBatch({
  urls,
  rpcUrl,
  privateKey,
  requests = 1,
  concurrency = 1,
  depositMultiplier = 5,
  salt,
  method = "GET",
  timeoutMs = 30000,
  refund,
  wallet,
}) {
  const account = privateKeyToAccount(privateKey);
  const publicClient = createPublicClient({ transport: http(rpcUrl) });
  // A smart wallet signs with its owner's key under its own address.
  const who = wallet ? { address: getAddress(wallet), signTypedData: (t) => account.signTypedData(t) } : account;
  const signer = toClientEvmSigner(who, publicClient);
  const options = { depositPolicy: { depositMultiplier } };
  if (salt) options.salt = salt;
  if (wallet) options.payerAuthorizer = zeroAddress;
  const client = new x402Client();
  const scheme = new BatchSettlementEvmScheme(signer, options);
  client.register("eip155:*", scheme);
  client.setSpendControls(false);
  const sent = { deposit: 0, voucher: 0, refund: 0, none: 0 };
  // Counts what goes on the wire, then fetches.
  const countingFetch = async (input, init) => {
    const req = new Request(input, init);
    const header = req.headers.get("payment-signature");
    const kind = header ? decodeSignature(header)?.payload?.type : null;
    if (kind && kind in sent) sent[kind] += 1;
    else sent.none += 1;
    return fetch(req);
  };
  const pay = wrapFetchWithPayment(countingFetch, client);
  const results = new Array(requests);
  let next = 0;
  async function worker() {
    for (;;) {
      const i = next++;
      if (i >= requests) return;
      const url = urls[i % urls.length];
      const r = { status: null, body: null, receipt: null, error: null };
      try {
        const res = await pay(url, { method, signal: AbortSignal.timeout(timeoutMs) });
        r.status = res.status;
        r.body = await res.text();
        const header = res.headers.get("payment-response");
        if (header) {
          try {
            r.receipt = decodePaymentResponseHeader(header);
          } catch {}
        }
      } catch (e) {
        r.error = errorText(e);
      }
      results[i] = r;
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  const statuses = {};
  for (const r of results) {
    const k = String(r?.status ?? "none");
    statuses[k] = (statuses[k] ?? 0) + 1;
  }
  const out = { results, sent, statuses, error: null };
  if (refund) {
    out.refund = { receipt: null, error: null };
    try {
      out.refund.receipt = await scheme.refund(urls[0], {
        amount: refund === "all" ? undefined : String(refund),
        fetch: countingFetch,
      });
    } catch (e) {
      out.refund.error = errorText(e);
    }
  }
  return out;
}

if (isMain(import.meta.url)) {
  let a;
  try {
    a = parseArgs(process.argv.slice(2), {
      url: "str",
      "rpc-url": "str",
      "private-key": "str",
      requests: "str",
      concurrency: "str",
      "deposit-multiplier": "str",
      salt: "str",
      method: "str",
      "timeout-ms": "str",
      refund: "str",
      wallet: "str",
    });
  } catch (e) {
    process.stderr.write(`${errorText(e)}\n`);
    process.exit(2);
  }
  const privateKey = a["private-key"] ?? process.env.PAYER_PRIVATE_KEY;
  if (!a.url || !a["rpc-url"] || !privateKey) {
    process.stderr.write("usage: pay-batch.mjs --url URL[,URL2] --rpc-url RPC --private-key 0x.. [--requests N]\n");
    process.exit(2);
  }
  let out;
  try {
    out = await payBatch({
      urls: String(a.url).split(","),
      rpcUrl: a["rpc-url"],
      privateKey,
      requests: Number(a.requests ?? 1),
      concurrency: Number(a.concurrency ?? 1),
      depositMultiplier: Number(a["deposit-multiplier"] ?? 5),
      salt: a.salt,
      method: a.method ?? "GET",
      timeoutMs: Number(a["timeout-ms"] ?? 30000),
      refund: a.refund,
      wallet: a.wallet,
    });
  } catch (e) {
    out = { results: [], sent: {}, statuses: {}, error: errorText(e) };
  }
  printJsonLine(out);
}
