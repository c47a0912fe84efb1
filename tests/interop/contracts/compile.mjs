#!/usr/bin/env node
// Compiles contracts/{TestUSD,Multicall3Lite,Permit2Lite,UptoPermit2Proxy,BatchSettlementLite,
// SmartWalletLite}.sol
// with the pinned `solc` npm package (soljson, no native compiler needed) and writes one
// committed artifact per contract:
//   contracts/TestUSD.json        {contractName, compiler, abi, bytecode, deployedBytecode}
//   contracts/Multicall3Lite.json, Permit2Lite.json, UptoPermit2Proxy.json,
//   BatchSettlementLite.json, Erc3009DepositCollectorLite.json, Permit2DepositCollectorLite.json,
//   SmartWalletLite.json (same shape)
// Tests never compile: they load the JSON. Re-run after editing a .sol file:
//   npm run compile        (or: node contracts/compile.mjs)
// `node contracts/compile.mjs --check` writes nothing and exits 1 if a committed artifact is stale.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
// [source file (without .sol), contract]
const CONTRACTS = [
  ["TestUSD", "TestUSD"],
  ["Multicall3Lite", "Multicall3Lite"],
  ["Permit2Lite", "Permit2Lite"],
  ["UptoPermit2Proxy", "UptoPermit2Proxy"],
  ["BatchSettlementLite", "BatchSettlementLite"],
  ["BatchSettlementLite", "Erc3009DepositCollectorLite"],
  ["BatchSettlementLite", "Permit2DepositCollectorLite"],
  ["SmartWalletLite", "SmartWalletLite"],
];
const SOURCES = [...new Set(CONTRACTS.map(([file]) => file))];
const CHECK = process.argv.includes("--check");

const input = {
  language: "Solidity",
  sources: Object.fromEntries(
    SOURCES.map((f) => [`${f}.sol`, { content: readFileSync(join(here, `${f}.sol`), "utf8") }]),
  ),
  settings: {
    // "cancun" runs on every anvil hardfork from cancun on (anvil 1.x defaults to a newer one).
    evmVersion: "cancun",
    optimizer: { enabled: true, runs: 200 },
    metadata: { bytecodeHash: "none" },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

// `import "./X.sol"` resolves to the sources above.
const findImports = (path) => {
  const name = path.replace(/^\.\//, "");
  return existsSync(join(here, name)) ? { contents: readFileSync(join(here, name), "utf8") } : { error: `not found: ${path}` };
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) process.stderr.write(`${e.formattedMessage}\n`);
if (errors.length) {
  process.stderr.write(`compile failed with ${errors.length} error(s)\n`);
  process.exit(1);
}

for (const [file, name] of CONTRACTS) {
  const c = output.contracts[`${file}.sol`][name];
  const artifact = {
    contractName: name,
    compiler: `solc ${solc.version()}`,
    abi: c.abi,
    bytecode: `0x${c.evm.bytecode.object}`,
    deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
  };
  const out = join(here, `${name}.json`);
  const text = `${JSON.stringify(artifact, null, 2)}\n`;
  if (CHECK) {
    if (!existsSync(out) || readFileSync(out, "utf8") !== text) {
      process.stderr.write(`${out} is stale: run npm run compile\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(`${out} is up to date\n`);
    }
    continue;
  }
  writeFileSync(out, text);
  process.stderr.write(`wrote ${out} (${(c.evm.bytecode.object.length / 2) | 0} bytes init code)\n`);
}
