#!/usr/bin/env node
// One process = one disposable x402 test network:
//   anvil (127.0.0.1, OS-chosen port) + Multicall3Lite + Permit2 and the x402 `upto` proxy (our
//   own contracts at the canonical addresses) + TestUSD + N funded payers + facilitator.
// Prints ONE JSON line on stdout when everything is ready (logs go to stderr):
//   {rpcUrl, chainId, network, v1Network, token:{address,name,version,decimals,symbol},
//    payTo, facilitatorUrl, facilitatorSigner, facilitatorStyle,
//    payers:[{address,privateKey}], deployer:{address,privateKey}, anvilPid, pid}
// then runs until stdin reaches EOF (when stdin is a pipe) or SIGTERM/SIGINT/SIGHUP, and
// then stops the facilitator and anvil and exits 0. anvil is started under
// `setpriv --pdeathsig KILL`, so it also dies if this process is killed with SIGKILL.
//
// Flags:
//   --chain-id N                 default 31337; 84532 also registers the v1 name "base-sepolia"
//   --payers N                   funded payers (default 3; first 7 are anvil accounts 3..9)
//   --payer-balance UNITS        token units minted to each payer (default 100000000 = 100 TUSD)
//   --token-name S               EIP-712 name (default "Test USD")
//   --token-version S            EIP-712 version (default "1")
//   --facilitator-style 200|400  HTTP status for invalid verify/settle results (default 200)
//   --facilitator-delay-ms N     artificial delay before /verify and /settle (default 0)
//   --no-facilitator             do not start the facilitator (facilitatorUrl: null)
//   --permit2-approve            every payer approves Permit2 for the token (for `upto`)
//   --batch-authorizer-key 0x..  the facilitator signs channel claims and refunds with this
//                                receiver authorizer key (batch-settlement)
import { startDevChain, log } from "./chain.mjs";
import { isMain, parseArgs, printJsonLine, untilShutdown } from "./cli.mjs";
import { startFacilitator, v1NamesForChainId } from "./facilitator.mjs";

/**
 * Programmatic form of the CLI. Returns {info, stop()} where info is the JSON printed by the CLI.
 */
export async function startDevnet({
  chainId = 31337,
  payers = 3,
  payerBalance = 100_000_000n,
  tokenName,
  tokenVersion,
  facilitator = true,
  facilitatorStyle = 200,
  facilitatorDelayMs = 0,
  permit2Approve = false,
  batchAuthorizerKey,
} = {}) {
  const { chain, token, payers: payerList } = await startDevChain({
    chainId,
    payers,
    payerBalance: BigInt(payerBalance),
    tokenName,
    tokenVersion,
  });
  let fac = null;
  try {
    if (permit2Approve) for (const p of payerList) await chain.approvePermit2(token, p.privateKey);
    if (facilitator) {
      fac = await startFacilitator({
        rpcUrl: chain.rpcUrl,
        chainId,
        privateKey: chain.accounts.facilitator.privateKey,
        style: facilitatorStyle,
        delayMs: facilitatorDelayMs,
        batchAuthorizerKey,
      });
    }
  } catch (e) {
    await chain.stop();
    throw e;
  }
  const v1Names = v1NamesForChainId(chainId);
  const info = {
    rpcUrl: chain.rpcUrl,
    chainId,
    network: `eip155:${chainId}`,
    v1Network: v1Names[0] ?? null,
    token: {
      address: token.address,
      name: token.name,
      version: token.version,
      decimals: token.decimals,
      symbol: token.symbol,
    },
    payTo: chain.accounts.payTo.address,
    facilitatorUrl: fac?.url ?? null,
    facilitatorSigner: chain.accounts.facilitator.address,
    facilitatorStyle: fac ? fac.config.style : null,
    payers: payerList,
    deployer: chain.accounts.deployer,
    anvilPid: chain.pid,
    pid: process.pid,
  };
  let stopped = false;
  return {
    info,
    chain,
    token,
    facilitator: fac,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (fac) await fac.close().catch(() => {});
      await chain.stop();
    },
  };
}

async function main() {
  const a = parseArgs(process.argv.slice(2), {
    "chain-id": "str",
    payers: "str",
    "payer-balance": "str",
    "token-name": "str",
    "token-version": "str",
    "facilitator-style": "str",
    "batch-authorizer-key": "str",
    "facilitator-delay-ms": "str",
    "no-facilitator": "bool",
    "permit2-approve": "bool",
  });
  const devnet = await startDevnet({
    chainId: Number(a["chain-id"] ?? 31337),
    payers: Number(a.payers ?? 3),
    payerBalance: BigInt(a["payer-balance"] ?? 100_000_000),
    tokenName: a["token-name"],
    tokenVersion: a["token-version"],
    facilitator: !a["no-facilitator"],
    facilitatorStyle: Number(a["facilitator-style"] ?? 200),
    facilitatorDelayMs: Number(a["facilitator-delay-ms"] ?? 0),
    permit2Approve: !!a["permit2-approve"],
    batchAuthorizerKey: a["batch-authorizer-key"],
  });
  const shutdown = untilShutdown();
  let stoppingNow = false;
  // If anvil dies on its own, there is nothing left to serve: exit non-zero.
  devnet.chain.exited.then((r) => {
    if (!stoppingNow) {
      log(`anvil exited unexpectedly (${JSON.stringify(r)}); devnet exiting`);
      devnet.stop().finally(() => process.exit(1));
    }
  });
  await printJsonLine(devnet.info);
  const why = await shutdown;
  stoppingNow = true;
  log(`devnet shutting down (${why})`);
  await devnet.stop();
  process.exit(0);
}

if (isMain(import.meta.url)) {
  main().catch((e) => {
    process.stderr.write(`devnet: ${e?.stack ?? e}\n`);
    process.exit(1);
  });
}
