// Local EVM chain for the interop tests: anvil (from the pinned npm package) + TestUSD.
//
// Account roles (anvil's default mnemonic "test test ... junk", BIP-44 m/44'/60'/0'/0/i):
//   index 0  deployer   — deploys TestUSD, owns it (only it can mint), installs Multicall3Lite
//   index 1  facilitator signer — submits transferWithAuthorization, pays gas
//   index 2  payTo      — the merchant address requirements point at
//   index 3+ payers     — funded with tokens by devnet.mjs (`--payers N`, max 7 of these);
//                         more payers / unfunded payers come from generatePayer() (random keys)
// All accounts 0..9 start with 10000 ETH. Payers need no ETH: EIP-3009 is gasless for them.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  createPublicClient,
  createTestClient,
  createWalletClient,
  defineChain,
  getAddress,
  http,
  nonceManager,
  publicActions,
  toHex,
} from "viem";
import { generatePrivateKey, mnemonicToAccount, privateKeyToAccount } from "viem/accounts";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

export const ANVIL_MNEMONIC = "test test test test test test test test test test test junk";
export const ROLE_INDEX = Object.freeze({ deployer: 0, facilitator: 1, payTo: 2, firstPayer: 3 });
export const MAX_DEFAULT_PAYERS = 7; // indices 3..9
export const MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11";
export const DEFAULT_TOKEN_NAME = "Test USD";
export const DEFAULT_TOKEN_VERSION = "1";
export const TOKEN_DECIMALS = 6;

export const TestUSD = JSON.parse(readFileSync(join(here, "..", "contracts", "TestUSD.json"), "utf8"));
export const Multicall3Lite = JSON.parse(
  readFileSync(join(here, "..", "contracts", "Multicall3Lite.json"), "utf8"),
);
export const Permit2Lite = JSON.parse(readFileSync(join(here, "..", "contracts", "Permit2Lite.json"), "utf8"));
export const UptoPermit2Proxy = JSON.parse(
  readFileSync(join(here, "..", "contracts", "UptoPermit2Proxy.json"), "utf8"),
);
export const BatchSettlementLite = JSON.parse(
  readFileSync(join(here, "..", "contracts", "BatchSettlementLite.json"), "utf8"),
);
export const Erc3009DepositCollectorLite = JSON.parse(
  readFileSync(join(here, "..", "contracts", "Erc3009DepositCollectorLite.json"), "utf8"),
);
export const Permit2DepositCollectorLite = JSON.parse(
  readFileSync(join(here, "..", "contracts", "Permit2DepositCollectorLite.json"), "utf8"),
);
/** Where the reference x402 clients expect Permit2 and the `upto` proxy. */
export const PERMIT2_ADDRESS = "0x000000000022D473030F116dDEE9F6B43aC78BA3";
export const UPTO_PROXY_ADDRESS = "0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002";
/**
 * Where the reference x402 packages expect the `batch-settlement` channel contract and its
 * ERC-3009 and Permit2 deposit collectors.
 */
export const BATCH_SETTLEMENT_ADDRESS = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003";
export const ERC3009_COLLECTOR_ADDRESS = "0x4020806089470a89826cB9fB1f4059150b550004";
export const PERMIT2_COLLECTOR_ADDRESS = "0x4020425FAf3B746C082C2f942b4E5159887B0005";

/** Writes a diagnostic line to stderr (stdout is reserved for the CLIs' single JSON line). */
export function log(...args) {
  if (process.env.INTEROP_QUIET === "1") return;
  process.stderr.write(`[interop ${new Date().toISOString()}] ${args.join(" ")}\n`);
}

/**
 * Polls `fn` until it returns a truthy value or the deadline passes. Errors thrown by `fn` are
 * retried (remembered for the timeout message) unless they carry `fatal: true`.
 */
export async function waitFor(fn, { timeoutMs = 15000, intervalMs = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      if (e?.fatal) throw e;
      lastErr = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${lastErr.message}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** {address, privateKey} of anvil's default account `index`. */
export function anvilAccount(index) {
  const acct = mnemonicToAccount(ANVIL_MNEMONIC, { addressIndex: index });
  return { address: acct.address, privateKey: toHex(acct.getHdKey().privateKey) };
}

/** A fresh random key (unfunded): for "insufficient funds" tests or more payers than 7. */
export function generatePayer() {
  const privateKey = generatePrivateKey();
  return { address: privateKeyToAccount(privateKey).address, privateKey };
}

/** Absolute path of the anvil binary shipped by @foundry-rs/anvil-linux-amd64. */
export function anvilBinary() {
  if (process.env.ANVIL_BIN) return process.env.ANVIL_BIN;
  const pkg = require.resolve("@foundry-rs/anvil-linux-amd64/package.json");
  const bin = join(dirname(pkg), "bin", "anvil");
  if (!existsSync(bin)) throw new Error(`anvil binary missing at ${bin} (run npm ci in tests/interop)`);
  return bin;
}

let setprivAvailable;
function hasSetpriv() {
  if (setprivAvailable === undefined) {
    const r = spawnSync("setpriv", ["--help"], { stdio: "ignore" });
    setprivAvailable = r.status === 0;
  }
  return setprivAvailable;
}

/** viem chain object for an anvil instance. */
export function makeChain(chainId, rpcUrl) {
  return defineChain({
    id: chainId,
    name: `anvil-${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
}

const liveChildren = new Set();
let exitHookInstalled = false;
function installExitHook() {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous last resort: if node exits without stop() (uncaught error, process.exit),
  // kill anvil. A SIGKILL of node itself is covered by setpriv --pdeathsig.
  process.on("exit", () => {
    for (const child of liveChildren) {
      try {
        child.kill("SIGKILL");
      } catch {}
    }
  });
}

/**
 * Starts anvil on 127.0.0.1 with an OS-chosen port (`--port 0`; anvil prints
 * "Listening on 127.0.0.1:<port>" on stdout) and waits until JSON-RPC answers.
 *
 * @param {object} [opts]
 * @param {number} [opts.chainId=31337]
 * @param {number} [opts.port=0]       0 = let the OS choose
 * @param {number} [opts.timeoutMs=20000]
 * @param {string[]} [opts.extraArgs]  more anvil flags (e.g. ["--block-time","1"])
 * @returns {Promise<Chain>}
 */
export async function startAnvil({ chainId = 31337, port = 0, timeoutMs = 20000, extraArgs = [] } = {}) {
  installExitHook();
  const bin = anvilBinary();
  const args = ["--host", "127.0.0.1", "--port", String(port), "--chain-id", String(chainId), ...extraArgs];
  // setpriv --pdeathsig KILL: the kernel kills anvil if the node process dies, even by SIGKILL.
  const [cmd, argv] = hasSetpriv() ? ["setpriv", ["--pdeathsig", "KILL", "--", bin, ...args]] : [bin, args];
  const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
  liveChildren.add(child);

  let output = "";
  const verbose = process.env.INTEROP_ANVIL_LOG === "1";
  const onData = (buf) => {
    const s = buf.toString();
    if (output.length < 65536) output += s;
    if (verbose) process.stderr.write(s);
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);

  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      liveChildren.delete(child);
      resolve(exited);
    });
  });

  const actualPort = await waitFor(
    () => {
      if (exited) throw Object.assign(new Error(`anvil exited early (${JSON.stringify(exited)}):\n${output}`), { fatal: true });
      const m = output.match(/Listening on 127\.0\.0\.1:(\d+)/);
      return m ? Number(m[1]) : 0;
    },
    { timeoutMs, intervalMs: 20, what: "anvil to report its port" },
  ).catch((e) => {
    child.kill("SIGKILL");
    throw e;
  });

  const rpcUrl = `http://127.0.0.1:${actualPort}`;
  const chain = makeChain(chainId, rpcUrl);
  const publicClient = createPublicClient({ chain, transport: http(rpcUrl) });
  await waitFor(async () => {
    if (exited) throw Object.assign(new Error(`anvil exited (${JSON.stringify(exited)}):\n${output}`), { fatal: true });
    return (await publicClient.getChainId()) === chainId;
  }, {
    timeoutMs,
    what: `anvil JSON-RPC at ${rpcUrl}`,
  }).catch((e) => {
    child.kill("SIGKILL");
    throw e;
  });
  log(`anvil pid ${child.pid} listening on ${rpcUrl} (chain id ${chainId})`);

  const testClient = createTestClient({ chain, mode: "anvil", transport: http(rpcUrl) });
  const wallets = new Map();
  /** viem wallet client (+public actions) for a private key, with a local nonce manager. */
  function walletFor(privateKey) {
    let w = wallets.get(privateKey);
    if (!w) {
      const account = privateKeyToAccount(privateKey, { nonceManager });
      w = createWalletClient({ account, chain, transport: http(rpcUrl) }).extend(publicActions);
      wallets.set(privateKey, w);
    }
    return w;
  }

  const self = {
    rpcUrl,
    chainId,
    port: actualPort,
    pid: child.pid,
    chain,
    publicClient,
    testClient,
    walletFor,
    accounts: {
      deployer: anvilAccount(ROLE_INDEX.deployer),
      facilitator: anvilAccount(ROLE_INDEX.facilitator),
      payTo: anvilAccount(ROLE_INDEX.payTo),
    },
    /** default payer i (0-based) = anvil account 3+i, i < 7 */
    defaultPayer(i) {
      if (i < 0 || i >= MAX_DEFAULT_PAYERS) throw new Error(`default payer index ${i} out of range`);
      return anvilAccount(ROLE_INDEX.firstPayer + i);
    },
    /** Puts Multicall3Lite's runtime code at the canonical Multicall3 address. */
    async installMulticall3() {
      await testClient.setCode({ address: MULTICALL3_ADDRESS, bytecode: Multicall3Lite.deployedBytecode });
    },
    /**
     * Puts our Permit2 (signature transfers) at Permit2's canonical address, and our `upto`
     * proxy at the address the reference x402 packages use: the proxy is deployed (its
     * constructor bakes Permit2's address into the code), then its runtime code is copied there.
     */
    async installPermit2() {
      await testClient.setCode({ address: PERMIT2_ADDRESS, bytecode: Permit2Lite.deployedBytecode });
      const w = walletFor(self.accounts.deployer.privateKey);
      const hash = await w.deployContract({
        abi: UptoPermit2Proxy.abi,
        bytecode: UptoPermit2Proxy.bytecode,
        args: [PERMIT2_ADDRESS],
      });
      const receipt = await w.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success" || !receipt.contractAddress) throw new Error(`upto proxy deploy failed: ${hash}`);
      const code = await publicClient.getCode({ address: receipt.contractAddress });
      await testClient.setCode({ address: UPTO_PROXY_ADDRESS, bytecode: code });
    },
    /**
     * Puts our `batch-settlement` channel contract (no constructor state), our ERC-3009 and
     * Permit2 deposit collectors (each deployed with the channel contract's address, and
     * Permit2's, baked in, then its runtime code copied) at the addresses the reference x402
     * packages use (Permit2 itself is `installPermit2`'s).
     */
    async installBatchSettlement() {
      await testClient.setCode({ address: BATCH_SETTLEMENT_ADDRESS, bytecode: BatchSettlementLite.deployedBytecode });
      const w = walletFor(self.accounts.deployer.privateKey);
      const collectors = [
        [Erc3009DepositCollectorLite, [BATCH_SETTLEMENT_ADDRESS], ERC3009_COLLECTOR_ADDRESS],
        [Permit2DepositCollectorLite, [BATCH_SETTLEMENT_ADDRESS, PERMIT2_ADDRESS], PERMIT2_COLLECTOR_ADDRESS],
      ];
      for (const [artifact, args, address] of collectors) {
        const hash = await w.deployContract({ abi: artifact.abi, bytecode: artifact.bytecode, args });
        const receipt = await w.waitForTransactionReceipt({ hash });
        if (receipt.status !== "success" || !receipt.contractAddress) {
          throw new Error(`${artifact.contractName} deploy failed: ${hash}`);
        }
        const code = await publicClient.getCode({ address: receipt.contractAddress });
        await testClient.setCode({ address, bytecode: code });
      }
    },
    /** The payer (by key) lets Permit2 move its tokens (ERC-20 approve, unlimited). */
    async approvePermit2(token, privateKey) {
      const w = walletFor(privateKey);
      const hash = await w.writeContract({
        address: tokenAddress(token),
        abi: TestUSD.abi,
        functionName: "approve",
        args: [PERMIT2_ADDRESS, 2n ** 256n - 1n],
      });
      const receipt = await w.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new Error(`approve reverted: ${hash}`);
    },
    /**
     * Deploys TestUSD from the deployer account.
     * @returns {Promise<{address, name, version, decimals, symbol}>}
     */
    async deployToken({ name = DEFAULT_TOKEN_NAME, version = DEFAULT_TOKEN_VERSION } = {}) {
      const w = walletFor(self.accounts.deployer.privateKey);
      const hash = await w.deployContract({ abi: TestUSD.abi, bytecode: TestUSD.bytecode, args: [name, version] });
      const receipt = await w.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success" || !receipt.contractAddress) throw new Error(`TestUSD deploy failed: ${hash}`);
      const address = getAddress(receipt.contractAddress);
      log(`TestUSD deployed at ${address} (name "${name}", version "${version}")`);
      return { address, name, version, decimals: TOKEN_DECIMALS, symbol: "TUSD" };
    },
    /** Owner-only mint (sent by the deployer), waits for the receipt. */
    async mint(token, to, amount) {
      const w = walletFor(self.accounts.deployer.privateKey);
      const hash = await w.writeContract({
        address: tokenAddress(token),
        abi: TestUSD.abi,
        functionName: "mint",
        args: [to, BigInt(amount)],
      });
      const receipt = await w.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new Error(`mint reverted: ${hash}`);
      return hash;
    },
    /** Plain ERC-20 transfer signed by `fromPrivateKey` (needs ETH for gas: fundEth first). */
    async transfer(token, fromPrivateKey, to, amount) {
      const w = walletFor(fromPrivateKey);
      const hash = await w.writeContract({
        address: tokenAddress(token),
        abi: TestUSD.abi,
        functionName: "transfer",
        args: [to, BigInt(amount)],
      });
      const receipt = await w.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new Error(`transfer reverted: ${hash}`);
      return hash;
    },
    /** Sets an address' ETH balance (anvil_setBalance). */
    async fundEth(address, wei = 10n ** 19n) {
      await testClient.setBalance({ address, value: BigInt(wei) });
    },
    async balanceOf(token, address) {
      return publicClient.readContract({
        address: tokenAddress(token),
        abi: TestUSD.abi,
        functionName: "balanceOf",
        args: [address],
      });
    },
    async authorizationState(token, authorizer, nonce) {
      return publicClient.readContract({
        address: tokenAddress(token),
        abi: TestUSD.abi,
        functionName: "authorizationState",
        args: [authorizer, nonce],
      });
    },
    /** Kills anvil (SIGTERM, then SIGKILL after 3 s) and waits for it to exit. */
    async stop() {
      if (exited) return exited;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 3000);
      const r = await exitPromise;
      clearTimeout(t);
      log(`anvil pid ${child.pid} stopped`);
      return r;
    },
    exited: exitPromise,
  };
  return self;
}

function tokenAddress(token) {
  return typeof token === "string" ? token : token.address;
}

/**
 * Starts anvil, installs Multicall3Lite, deploys TestUSD, installs Permit2, the `upto`
 * proxy and the `batch-settlement` contracts, and funds payers.
 * @param {object} [opts]
 * @param {number} [opts.chainId=31337]
 * @param {number} [opts.payers=3]          number of funded payers (first 7 are anvil accounts 3..9,
 *                                          the rest are random keys)
 * @param {bigint|string|number} [opts.payerBalance=100000000] token units per payer (100 TUSD)
 * @param {string} [opts.tokenName]
 * @param {string} [opts.tokenVersion]
 */
export async function startDevChain({
  chainId = 31337,
  payers = 3,
  payerBalance = 100_000_000n,
  tokenName = DEFAULT_TOKEN_NAME,
  tokenVersion = DEFAULT_TOKEN_VERSION,
  anvilArgs = [],
} = {}) {
  const chain = await startAnvil({ chainId, extraArgs: anvilArgs });
  try {
    await chain.installMulticall3();
    const token = await chain.deployToken({ name: tokenName, version: tokenVersion });
    // After the token: its address stays the deployer's first contract.
    await chain.installPermit2();
    await chain.installBatchSettlement();
    const payerList = [];
    for (let i = 0; i < payers; i++) payerList.push(i < MAX_DEFAULT_PAYERS ? chain.defaultPayer(i) : generatePayer());
    for (const p of payerList) await chain.mint(token, p.address, payerBalance);
    return { chain, token, payers: payerList };
  } catch (e) {
    await chain.stop();
    throw e;
  }
}
