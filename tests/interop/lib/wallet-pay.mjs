// A person paying the gateway's wallet paywall in a real browser: headless Chromium opens the
// priced URL, a test EIP-1193 wallet (injected into the page, signing in this process with the
// given key) connects, "Pay now" is clicked, and the page shows what the gateway answered.
// The page reads balances through the chain's default RPC URL (127.0.0.1:8545 for chain
// 31337); those requests are passed on to --rpc-url.
//
//   node lib/wallet-pay.mjs --url URL --rpc-url URL --private-key 0x.. [--chromium PATH]
// Prints one JSON line: {ok, text, url, walletCalls, pageErrors, rpcCalls}.
import puppeteer from "puppeteer-core";
import { privateKeyToAccount } from "viem/accounts";

import { parseArgs } from "./cli.mjs";

const args = {
  chromium: process.env.CHROMIUM || "/usr/bin/chromium",
  "timeout-ms": "60000",
  ...parseArgs(process.argv.slice(2), {
    url: "str",
    "rpc-url": "str",
    "private-key": "str",
    chromium: "str",
    "timeout-ms": "str",
  }),
};
const timeout = Number(args["timeout-ms"]);
const account = privateKeyToAccount(args["private-key"]);
const chainId = Number(
  (
    await (
      await fetch(args["rpc-url"], {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] }),
      })
    ).json()
  ).result,
);

const browser = await puppeteer.launch({
  executablePath: args.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
});
const out = { ok: false, text: "", url: "", walletCalls: [], pageErrors: [], rpcCalls: 0 };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => out.pageErrors.push(String(e.message).slice(0, 300)));

  // The default RPC of the page's chain is the devnet's.
  await page.setRequestInterception(true);
  page.on("request", async (r) => {
    const u = new URL(r.url());
    if (u.host !== "127.0.0.1:8545") return r.continue();
    const cors = {
      "Access-Control-Allow-Origin": "*",
      "Access-Control-Allow-Headers": "*",
      "Access-Control-Allow-Methods": "POST, OPTIONS",
    };
    if (r.method() === "OPTIONS") return r.respond({ status: 204, headers: cors });
    out.rpcCalls++;
    try {
      const res = await fetch(args["rpc-url"], {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: r.postData(),
      });
      r.respond({ status: res.status, headers: cors, contentType: "application/json", body: await res.text() });
    } catch (e) {
      r.respond({ status: 502, headers: cors, body: String(e) });
    }
  });

  // The wallet: accounts and chain from here, signatures from this process's key.
  await page.exposeFunction("__walletLog", (method) => {
    out.walletCalls.push(method);
  });
  await page.exposeFunction("__walletSign", async (json) => {
    const typed = JSON.parse(json);
    const types = { ...typed.types };
    delete types.EIP712Domain;
    const message = { ...typed.message };
    for (const f of types[typed.primaryType] ?? []) {
      if (/^u?int/.test(f.type)) message[f.name] = BigInt(message[f.name]);
    }
    return account.signTypedData({ domain: typed.domain, types, primaryType: typed.primaryType, message });
  });
  await page.evaluateOnNewDocument(
    (address, chainHex) => {
      const listeners = {};
      window.ethereum = {
        isMetaMask: true,
        on(event, f) {
          (listeners[event] ??= []).push(f);
        },
        removeListener() {},
        async request({ method, params }) {
          window.__walletLog(method);
          switch (method) {
            case "eth_requestAccounts":
            case "eth_accounts":
              return [address];
            case "eth_chainId":
              return chainHex;
            case "wallet_requestPermissions":
            case "wallet_getPermissions":
              return [{ parentCapability: "eth_accounts" }];
            case "wallet_switchEthereumChain":
              if (params?.[0]?.chainId?.toLowerCase() === chainHex) return null;
              throw Object.assign(new Error("unknown chain"), { code: 4902 });
            case "eth_signTypedData_v4":
              return window.__walletSign(params[1]);
            default:
              throw Object.assign(new Error(`unsupported ${method}`), { code: 4200 });
          }
        },
      };
    },
    account.address,
    "0x" + chainId.toString(16),
  );

  await page.goto(args.url, { waitUntil: "load", timeout });
  await page.waitForSelector("select", { timeout });
  const options = await page.$$eval("select option", (os) => os.map((o) => o.value));
  await page.select("select", options.find((v) => v === "injected") ?? options.find((v) => v && !/coinbase/i.test(v)));
  await page.click("button.button-primary");
  await page.waitForFunction(
    () => [...document.querySelectorAll("button")].some((b) => b.textContent === "Pay now"),
    { timeout },
  );
  const before = page.url();
  await page.evaluate(() => [...document.querySelectorAll("button")].find((b) => b.textContent === "Pay now").click());
  // The paid answer replaces the page (HTML) or opens as a blob (anything else); a failure
  // is written on the page.
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    try {
      const text = await page.evaluate(() => document.body?.innerText ?? "");
      const moved = page.url() !== before;
      const replaced = text !== "" && !text.includes("Payment Required");
      const failed = /Request failed|Insufficient balance|rejected|failed/i.test(text);
      if (moved || replaced || failed) {
        out.text = text;
        if (text !== "") break;
      }
    } catch {
      // The page is navigating to the paid answer.
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  out.url = page.url();
  out.ok = out.text !== "" && !out.text.includes("Payment Required");
} catch (e) {
  out.pageErrors.push(String(e?.message ?? e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
