#!/usr/bin/env node
// Deploys our ERC-1271 smart wallet (`contracts/SmartWalletLite.sol`) owned by a key, and funds
// it with tokens from the owner's own balance: a payer whose signatures are checked by the
// wallet contract rather than by ECDSA recovery.
//
//   node lib/smart-wallet.mjs --rpc-url URL --private-key 0x.. --token 0x.. --fund UNITS
// Prints ONE JSON line: {address, error}
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createWalletClient, http, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { TestUSD, makeChain } from "./chain.mjs";
import { errorText, isMain, parseArgs, printJsonLine } from "./cli.mjs";

const here = dirname(fileURLToPath(import.meta.url));
export const SmartWalletLite = JSON.parse(readFileSync(join(here, "..", "contracts", "SmartWalletLite.json"), "utf8"));

/** Deploys a wallet owned by `privateKey` and moves `fund` units of `token` into it. */
export async function deploySmartWallet({ rpcUrl, privateKey, token, fund }) {
  const probe = createWalletClient({ transport: http(rpcUrl) }).extend(publicActions);
  const chain = makeChain(await probe.getChainId(), rpcUrl);
  const account = privateKeyToAccount(privateKey);
  const w = createWalletClient({ account, chain, transport: http(rpcUrl) }).extend(publicActions);
  const deployed = await w.waitForTransactionReceipt({
    hash: await w.deployContract({ abi: SmartWalletLite.abi, bytecode: SmartWalletLite.bytecode, args: [account.address] }),
  });
  if (deployed.status !== "success" || !deployed.contractAddress) throw new Error("wallet deploy failed");
  const funded = await w.waitForTransactionReceipt({
    hash: await w.writeContract({
      address: token,
      abi: TestUSD.abi,
      functionName: "transfer",
      args: [deployed.contractAddress, BigInt(fund)],
    }),
  });
  if (funded.status !== "success") throw new Error("wallet funding failed");
  return { address: deployed.contractAddress, error: null };
}

if (isMain(import.meta.url)) {
  let out;
  try {
    const a = parseArgs(process.argv.slice(2), { "rpc-url": "str", "private-key": "str", token: "str", fund: "str" });
    out = await deploySmartWallet({ rpcUrl: a["rpc-url"], privateKey: a["private-key"], token: a.token, fund: a.fund });
  } catch (e) {
    out = { address: null, error: errorText(e) };
  }
  printJsonLine(out);
}
