// Small helpers shared by the CLIs in lib/.
import { fstatSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** True when the module at `metaUrl` is the script node was started with. */
export function isMain(metaUrl) {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(fileURLToPath(metaUrl)) === realpathSync(process.argv[1]);
  } catch {
    return false;
  }
}

/**
 * Minimal flag parser: `--name value`, `--name=value`, boolean `--flag`.
 * spec maps flag name -> "str" | "bool" | "list" (repeatable). Positional arguments are
 * collected in `_` (rejected unless `allowPositional`).
 */
export function parseArgs(argv, spec, { allowPositional = false } = {}) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) {
      if (!allowPositional) throw new Error(`unexpected argument ${a}`);
      out._.push(a);
      continue;
    }
    let [k, v] = a.slice(2).split(/=(.*)/s, 2);
    const kind = spec[k];
    if (!kind) throw new Error(`unknown flag --${k}`);
    if (kind === "bool") {
      out[k] = v === undefined ? true : v !== "false";
      continue;
    }
    if (v === undefined) {
      v = argv[++i];
      if (v === undefined) throw new Error(`--${k} needs a value`);
    }
    if (kind === "list") (out[k] ??= []).push(v);
    else out[k] = v;
  }
  return out;
}

/** True when fd 0 is a pipe or socket (not a TTY, not /dev/null, not a file). */
function stdinIsPipe() {
  try {
    const st = fstatSync(0);
    return st.isFIFO() || st.isSocket();
  } catch {
    return false;
  }
}

/**
 * Resolves when SIGTERM/SIGINT/SIGHUP arrives or stdin reaches EOF. Stdin is watched only
 * when it is a pipe/socket, so running with stdin=/dev/null (CI) does not stop at once.
 */
export function untilShutdown() {
  return new Promise((resolve) => {
    const done = (why) => resolve(why);
    process.once("SIGTERM", () => done("SIGTERM"));
    process.once("SIGINT", () => done("SIGINT"));
    process.once("SIGHUP", () => done("SIGHUP"));
    if (stdinIsPipe()) {
      process.stdin.on("data", () => {});
      process.stdin.once("end", () => done("stdin closed"));
      process.stdin.once("error", () => done("stdin error"));
      process.stdin.resume();
    }
  });
}


/** Writes exactly one JSON line to stdout and resolves once it is flushed. */
export function printJsonLine(obj) {
  return new Promise((resolve) => {
    process.stdout.write(`${JSON.stringify(obj)}\n`, () => resolve());
  });
}

/** Error message including the cause (fetch's "fetch failed" hides ECONNREFUSED etc.). */
export function errorText(e) {
  const msg = String(e?.message ?? e);
  const c = e?.cause;
  if (!c) return msg;
  const cm = c.code ? `${c.code}${c.message ? ` ${c.message}` : ""}` : String(c.message ?? c);
  return msg.includes(cm) ? msg : `${msg}: ${cm}`;
}
