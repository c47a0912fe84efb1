#!/usr/bin/env node
// Builds one `batch-settlement` voucher payment for a URL's 402, as the reference client would
// for the channel it would use (the same configuration: payer and payer authorizer = the key's
// address, the offer's receiver, receiver authorizer, token and withdraw delay, salt 0), signed
// with the reference `signVoucher` — or deliberately wrong, for refusal tests:
//
//   node lib/batch-voucher.mjs --url URL --private-key 0x.. --max N
//        [--signer-key 0x..]   sign with another key than the payer authorizer
//        [--receiver 0x..]     a channel paying another receiver
//        [--payer 0x..]        the channel of this smart-wallet payer (payer authorizer: the
//                              zero address, vouchers checked by ERC-1271), signed by the key
//        [--deposit N]         a deposit of N with the voucher (ERC-3009, reference builder)
//        [--refund all|N]      a refund payload (the reference shape: the voucher names what
//                              was charged; `all` sends no amount)
//
// Prints ONE JSON line: {header: <PAYMENT-SIGNATURE value>, channelId, error}
import { decodePaymentRequiredHeader } from "@x402/core/http";
import {
  computeChannelId,
  createBatchSettlementEIP3009DepositPayload,
  signVoucher,
} from "@x402/evm/batch-settlement/client";
import { getAddress, zeroAddress } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { errorText, isMain, parseArgs, printJsonLine } from "./cli.mjs";

export async function buildVoucher({ url, privateKey, max, signerKey, receiver, deposit, refund, payerAddress }) {
  const res = await fetch(url);
  const header = res.headers.get("payment-required");
  if (res.status !== 402 || !header) throw new Error(`expected a 402 with PAYMENT-REQUIRED, got ${res.status}`);
  const pr = decodePaymentRequiredHeader(header);
  const accepted = pr.accepts.find((a) => a.scheme === "batch-settlement");
  if (!accepted) throw new Error("no batch-settlement offer");
  const payer = privateKeyToAccount(privateKey);
  const signer = signerKey ? privateKeyToAccount(signerKey) : payer;
  const channelConfig = {
    payer: payerAddress ? getAddress(payerAddress) : payer.address,
    payerAuthorizer: payerAddress ? zeroAddress : payer.address,
    receiver: getAddress(receiver ?? accepted.payTo),
    receiverAuthorizer: getAddress(accepted.extra.receiverAuthorizer),
    token: getAddress(accepted.asset),
    withdrawDelay: accepted.extra.withdrawDelay,
    salt: "0x0000000000000000000000000000000000000000000000000000000000000000",
  };
  const channelId = computeChannelId(channelConfig, accepted.network);
  let inner;
  if (deposit) {
    const built = await createBatchSettlementEIP3009DepositPayload(
      payer,
      2,
      accepted,
      channelConfig,
      String(deposit),
      String(max),
      signer,
    );
    inner = built.payload;
  } else {
    const voucher = await signVoucher(signer, channelId, String(max), accepted.network);
    inner = { type: refund ? "refund" : "voucher", channelConfig, voucher };
    if (refund && refund !== "all") inner.amount = String(refund);
  }
  const payload = { x402Version: 2, resource: pr.resource, accepted, payload: inner };
  return { header: Buffer.from(JSON.stringify(payload)).toString("base64"), channelId, error: null };
}

if (isMain(import.meta.url)) {
  let out;
  try {
    const a = parseArgs(process.argv.slice(2), {
      url: "str",
      "private-key": "str",
      max: "str",
      "signer-key": "str",
      receiver: "str",
      deposit: "str",
      refund: "str",
      payer: "str",
    });
    out = await buildVoucher({
      url: a.url,
      privateKey: a["private-key"],
      max: a.max,
      signerKey: a["signer-key"],
      receiver: a.receiver,
      deposit: a.deposit,
      refund: a.refund,
      payerAddress: a.payer,
    });
  } catch (e) {
    out = { header: null, channelId: null, error: errorText(e) };
  }
  printJsonLine(out);
}
