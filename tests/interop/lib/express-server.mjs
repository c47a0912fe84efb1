#!/usr/bin/env node
// The REFERENCE x402 resource server (@x402/express 2.27 + x402ResourceServer +
// HTTPFacilitatorClient + ExactEvmScheme from @x402/evm/exact/server) as a CLI, pointed at any
// facilitator URL: used to prove that another x402 server can use the gateway's facilitator API.
//
//   node lib/express-server.mjs --facilitator-url URL --pay-to 0x… --token 0x…
//        [--token-name "Test USD"] [--token-version 1] [--network eip155:31337]
//        [--price 10000] [--path /weather] [--port 0] [--max-timeout-seconds 300]
//        [--fixed-body N]
//
// GET <path> costs `--price` atomic units of `--token` on `--network`, paid to `--pay-to`;
// the handler answers {"weather":"sunny","temperature":21}, or with `--fixed-body N` what the
// demo origin's /fixed/N answers (N bytes of "x", application/octet-stream: the peer of
// benches/load.sh). Prints ONE JSON line when listening:
//   {"url":"http://127.0.0.1:PORT","resource":"http://127.0.0.1:PORT/weather","pid":N}
// then runs until stdin reaches EOF (when stdin is a pipe) or SIGTERM/SIGINT/SIGHUP.
// The resource server fetches the facilitator's /supported on the first request.
import { once } from "node:events";
import { HTTPFacilitatorClient } from "@x402/core/http";
import { x402ResourceServer } from "@x402/core/server";
import { ExactEvmScheme } from "@x402/evm/exact/server";
import { paymentMiddleware } from "@x402/express";
import express from "express";
import { log } from "./chain.mjs";
import { errorText, isMain, parseArgs, printJsonLine, untilShutdown } from "./cli.mjs";

/**
 * Starts the reference server. Returns {url, resource, close()}.
 */
export async function startExpressServer({
  facilitatorUrl,
  payTo,
  token,
  tokenName = "Test USD",
  tokenVersion = "1",
  network = "eip155:31337",
  price = "10000",
  path = "/weather",
  port = 0,
  maxTimeoutSeconds = 300,
  fixedBody,
}) {
  if (!facilitatorUrl || !payTo || !token) throw new Error("--facilitator-url, --pay-to and --token are required");
  const resourceServer = new x402ResourceServer(new HTTPFacilitatorClient({ url: facilitatorUrl }));
  resourceServer.register(network, new ExactEvmScheme());
  const app = express();
  app.use(
    paymentMiddleware(
      {
        [`GET ${path}`]: {
          accepts: {
            scheme: "exact",
            network,
            payTo,
            price: { amount: String(price), asset: token, extra: { name: tokenName, version: tokenVersion } },
            maxTimeoutSeconds: Number(maxTimeoutSeconds),
          },
          description: "Weather report",
          mimeType: "application/json",
        },
      },
      resourceServer,
    ),
  );
  if (fixedBody === undefined) {
    app.get(path, (_req, res) => res.json({ weather: "sunny", temperature: 21 }));
  } else {
    const body = Buffer.alloc(Number(fixedBody), "x");
    app.get(path, (_req, res) => res.type("application/octet-stream").send(body));
  }
  // Errors from the middleware (for example an unreachable facilitator) as JSON, logged.
  app.use((err, _req, res, _next) => {
    log(`express-server: ${errorText(err)}`);
    res.status(500).json({ error: errorText(err) });
  });
  const server = app.listen(port, "127.0.0.1");
  await once(server, "listening");
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    resource: `${url}${path}`,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
}

async function main() {
  const a = parseArgs(process.argv.slice(2), {
    "facilitator-url": "str",
    "pay-to": "str",
    token: "str",
    "token-name": "str",
    "token-version": "str",
    network: "str",
    price: "str",
    path: "str",
    port: "str",
    "max-timeout-seconds": "str",
    "fixed-body": "str",
  });
  const srv = await startExpressServer({
    facilitatorUrl: a["facilitator-url"],
    payTo: a["pay-to"],
    token: a.token,
    tokenName: a["token-name"],
    tokenVersion: a["token-version"],
    network: a.network,
    price: a.price,
    path: a.path,
    port: Number(a.port ?? 0),
    maxTimeoutSeconds: a["max-timeout-seconds"] ?? 300,
    fixedBody: a["fixed-body"],
  });
  const shutdown = untilShutdown();
  await printJsonLine({ url: srv.url, resource: srv.resource, pid: process.pid });
  const why = await shutdown;
  log(`express-server shutting down (${why})`);
  await srv.close();
  process.exit(0);
}

if (isMain(import.meta.url)) {
  main().catch((e) => {
    process.stderr.write(`express-server: ${e?.stack ?? e}\n`);
    process.exit(1);
  });
}
