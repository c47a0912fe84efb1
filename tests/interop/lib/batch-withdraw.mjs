#!/usr/bin/env node
// The payer's side of a `batch-settlement` timed withdrawal on the channel the reference
// client uses for a URL's offer (salt 0, payer = payer authorizer = the key's address):
//
//   node lib/batch-withdraw.mjs --url URL --rpc-url RPC --private-key 0x.. --amount N
//        starts it (initiateWithdraw)
//   node lib/batch-withdraw.mjs --url URL --rpc-url RPC --private-key 0x.. --finalize
//        finalizes it (finalizeWithdraw; the chain's clock must be past the delay)
//
// Prints ONE JSON line: {transaction, channelId, error}
import { decodePaymentRequiredHeader } from "@x402/core/http";
import { computeChannelId } from "@x402/evm/batch-settlement/client";
import { createWalletClient, getAddress, http, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { BATCH_SETTLEMENT_ADDRESS, BatchSettlementLite, makeChain } from "./chain.mjs";
import { errorText, isMain, parseArgs, printJsonLine } from "./cli.mjs";

export async function withdraw({ url, rpcUrl, privateKey, amount, finalize }) {
  const res = await fetch(url);
  const pr = decodePaymentRequiredHeader(res.headers.get("payment-required") ?? "");
  const offer = pr.accepts.find((a) => a.scheme === "batch-settlement");
  if (!offer) throw new Error("no batch-settlement offer");
  const payer = privateKeyToAccount(privateKey);
  const config = {
    payer: payer.address,
    payerAuthorizer: payer.address,
    receiver: getAddress(offer.payTo),
    receiverAuthorizer: getAddress(offer.extra.receiverAuthorizer),
    token: getAddress(offer.asset),
    withdrawDelay: offer.extra.withdrawDelay,
    salt: "0x0000000000000000000000000000000000000000000000000000000000000000",
  };
  const chainId = Number(offer.network.split(":")[1]);
  const w = createWalletClient({ account: payer, chain: makeChain(chainId, rpcUrl), transport: http(rpcUrl) }).extend(
    publicActions,
  );
  const hash = await w.writeContract({
    address: BATCH_SETTLEMENT_ADDRESS,
    abi: BatchSettlementLite.abi,
    functionName: finalize ? "finalizeWithdraw" : "initiateWithdraw",
    args: finalize ? [config] : [config, BigInt(amount)],
  });
  const receipt = await w.waitForTransactionReceipt({ hash });
  if (receipt.status !== "success") throw new Error(`reverted: ${hash}`);
  return { transaction: hash, channelId: computeChannelId(config, offer.network), error: null };
}

if (isMain(import.meta.url)) {
  let out;
  try {
    const a = parseArgs(process.argv.slice(2), {
      url: "str",
      "rpc-url": "str",
      "private-key": "str",
      amount: "str",
      finalize: "bool",
    });
    out = await withdraw({
      url: a.url,
      rpcUrl: a["rpc-url"],
      privateKey: a["private-key"],
      amount: a.amount ?? "0",
      finalize: !!a.finalize,
    });
  } catch (e) {
    out = { transaction: null, channelId: null, error: errorText(e) };
  }
  printJsonLine(out);
}
