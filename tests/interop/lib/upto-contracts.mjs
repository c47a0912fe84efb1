#!/usr/bin/env node
// Our Permit2 and `upto` proxy contracts on their own, driven by the reference packages: a
// devnet (payers approve Permit2), the reference @x402/evm `upto` client signs a permit for a
// ceiling, and the reference `upto` facilitator verifies it and settles less than the ceiling
// on chain; then what the contracts must refuse: the same permit again (nonce spent), more
// than signed, a settlement sent by another account than the witnessed facilitator, a
// permit signed for another recipient.
//
//   node lib/upto-contracts.mjs
// Prints ONE JSON line: {steps: {name: {ok, detail}}, error}
import { x402Facilitator } from "@x402/core/facilitator";
import { UptoEvmScheme as UptoClient } from "@x402/evm/upto/client";
import { UptoEvmScheme as UptoFacilitator } from "@x402/evm/upto/facilitator";
import { encodeFunctionData, getAddress } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { UPTO_PROXY_ADDRESS, UptoPermit2Proxy } from "./chain.mjs";
import { errorText, isMain, printJsonLine } from "./cli.mjs";
import { startDevnet } from "./devnet.mjs";
import { makeFacilitatorSigner } from "./facilitator.mjs";

const CEILING = 50_000n;

export async function run() {
  const out = { steps: {}, error: null };
  const step = (name, ok, detail = "") => {
    out.steps[name] = { ok: !!ok, detail: String(detail) };
  };
  const devnet = await startDevnet({ payers: 2, facilitator: false, permit2Approve: true });
  try {
    const { chain, token } = devnet;
    const network = `eip155:${chain.chainId}`;
    const { signer, address: facilitatorAddress } = makeFacilitatorSigner({
      rpcUrl: chain.rpcUrl,
      chainId: chain.chainId,
      privateKey: chain.accounts.facilitator.privateKey,
    });
    const facilitator = new x402Facilitator();
    facilitator.register(network, new UptoFacilitator(signer));
    const payer = devnet.info.payers[0];
    const payTo = chain.accounts.payTo.address;
    const requirements = (amount, to = payTo) => ({
      scheme: "upto",
      network,
      amount: amount.toString(),
      asset: token.address,
      payTo: to,
      maxTimeoutSeconds: 300,
      extra: { name: token.name, version: token.version, assetTransferMethod: "permit2", facilitatorAddress },
    });
    const client = new UptoClient(privateKeyToAccount(payer.privateKey));
    const sign = async (reqs) => {
      const partial = await client.createPaymentPayload(2, reqs);
      return { x402Version: 2, accepted: reqs, payload: partial.payload, resource: { url: "http://local/upto" } };
    };
    const balances = async () => [await chain.balanceOf(token, payer.address), await chain.balanceOf(token, payTo)];

    // Signed for the ceiling, verified for the ceiling, settled for less.
    const reqs = requirements(CEILING);
    const payload = await sign(reqs);
    const verified = await facilitator.verify(payload, reqs);
    step("verify", verified.isValid, JSON.stringify(verified));
    const [payerBefore, payToBefore] = await balances();
    const settled = await facilitator.settle(payload, { ...reqs, amount: "12345" });
    const [payerAfter, payToAfter] = await balances();
    step(
      "settle_less_than_ceiling",
      settled.success && payerBefore - payerAfter === 12345n && payToAfter - payToBefore === 12345n,
      JSON.stringify({ settled, moved: (payerBefore - payerAfter).toString() }),
    );

    // The same permit again: the nonce is spent.
    const again = await facilitator.settle(payload, { ...reqs, amount: "1" });
    step("replay_refused", !again.success, JSON.stringify(again));

    // More than signed.
    const over = await sign(reqs);
    const tooMuch = await facilitator.settle(over, { ...reqs, amount: (CEILING + 1n).toString() });
    step("over_ceiling_refused", !tooMuch.success, JSON.stringify(tooMuch));

    // A settlement sent by another account than the witnessed facilitator reverts on chain.
    const p = over.payload.permit2Authorization;
    const args = [
      { permitted: { token: getAddress(p.permitted.token), amount: BigInt(p.permitted.amount) }, nonce: BigInt(p.nonce), deadline: BigInt(p.deadline) },
      1000n,
      getAddress(p.from),
      { to: getAddress(p.witness.to), facilitator: getAddress(p.witness.facilitator), validAfter: BigInt(p.witness.validAfter) },
      over.payload.signature,
    ];
    const intruder = chain.walletFor(chain.accounts.deployer.privateKey);
    let intruderReverted = false;
    try {
      await chain.publicClient.call({
        account: intruder.account,
        to: UPTO_PROXY_ADDRESS,
        data: encodeFunctionData({ abi: UptoPermit2Proxy.abi, functionName: "settle", args }),
      });
    } catch (e) {
      intruderReverted = /UnauthorizedFacilitator|0x[0-9a-f]{8}|revert/i.test(errorText(e));
    }
    step("other_sender_refused", intruderReverted);

    // Signed for one recipient, settled for another: the signature does not match.
    const elsewhere = await sign(requirements(CEILING));
    const otherTo = devnet.info.payers[1].address;
    const wrongTo = {
      ...elsewhere,
      payload: {
        ...elsewhere.payload,
        permit2Authorization: {
          ...elsewhere.payload.permit2Authorization,
          witness: { ...elsewhere.payload.permit2Authorization.witness, to: otherTo },
        },
      },
    };
    const redirected = await facilitator.settle(wrongTo, { ...requirements(CEILING, otherTo), amount: "1000" });
    step("other_recipient_refused", !redirected.success, JSON.stringify(redirected));

    // A zero charge moves nothing.
    const zeroPayload = await sign(reqs);
    const [b1] = await balances();
    const zero = await facilitator.settle(zeroPayload, { ...reqs, amount: "0" });
    const [b2] = await balances();
    step("zero_moves_nothing", zero.success && b1 === b2 && !zero.transaction, JSON.stringify(zero));
  } catch (e) {
    out.error = errorText(e);
  } finally {
    await devnet.stop();
  }
  return out;
}

if (isMain(import.meta.url)) {
  printJsonLine(await run());
}
