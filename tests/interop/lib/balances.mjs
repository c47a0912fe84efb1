#!/usr/bin/env node
// Prints token balances as ONE JSON line (for demo scripts and quick checks).
//
// Usage: node lib/balances.mjs --rpc-url URL --token 0xTOKEN [--address 0x..]... [0x..]...
//   (addresses may be given with --address or positionally)
// Output: {"token":"0x..","rpcUrl":"..","blockNumber":"123",
//          "balances":{"0xAddr":"100000000",...}}   amounts are decimal strings (atomic units)
import { createPublicClient, getAddress, http } from "viem";
import { TestUSD } from "./chain.mjs";
import { isMain, parseArgs, printJsonLine } from "./cli.mjs";

export async function readBalances({ rpcUrl, token, addresses }) {
  const client = createPublicClient({ transport: http(rpcUrl) });
  const blockNumber = await client.getBlockNumber();
  const balances = {};
  for (const a of addresses) {
    const addr = getAddress(a);
    const v = await client.readContract({
      address: getAddress(token),
      abi: TestUSD.abi,
      functionName: "balanceOf",
      args: [addr],
      blockNumber,
    });
    balances[addr] = v.toString();
  }
  return { token: getAddress(token), rpcUrl, blockNumber: blockNumber.toString(), balances };
}

async function main() {
  let a;
  try {
    a = parseArgs(process.argv.slice(2), { "rpc-url": "str", token: "str", address: "list" }, { allowPositional: true });
    if (!a["rpc-url"] || !a.token) throw new Error("--rpc-url and --token are required");
  } catch (e) {
    process.stderr.write(`balances: ${e.message}\n`);
    process.exit(2);
  }
  const out = await readBalances({ rpcUrl: a["rpc-url"], token: a.token, addresses: [...(a.address ?? []), ...a._] });
  await printJsonLine(out);
}

if (isMain(import.meta.url)) {
  main().then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`balances: ${e?.stack ?? e}\n`);
      process.exit(1);
    },
  );
}
