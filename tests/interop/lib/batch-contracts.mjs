#!/usr/bin/env node
// Our `batch-settlement` channel contract and ERC-3009 and Permit2 deposit collectors on their
// own, driven by the reference packages: the reference @x402/evm batch-settlement client signs
// a deposit and cumulative vouchers, the reference batch-settlement facilitator deposits,
// claims, settles and refunds through our contracts; then what the contracts must refuse or
// ignore (a claim above the voucher or the escrow, a forged voucher, a batch signed by someone
// else, a claim replayed, a refund nonce reused, a collector called directly, a withdraw delay
// out of range); a deposit through Permit2 (`assetTransferMethod: "permit2"`, the reference
// client's own deposit payload: refused before the payer approved Permit2, then deposited,
// its replay and its permit moved to another channel refused); and the payer's timed
// withdrawal (claims still land during the delay; afterwards only unclaimed escrow leaves).
// The timed withdrawal runs last: it moves the chain's clock.
//
//   node lib/batch-contracts.mjs
// Prints ONE JSON line: {steps: {name: {ok, detail}}, error}
import { x402Facilitator } from "@x402/core/facilitator";
import { toClientEvmSigner } from "@x402/evm";
import {
  BatchSettlementEvmScheme as BatchClient,
  computeChannelId,
  createBatchSettlementEIP3009DepositPayload,
  signVoucher,
} from "@x402/evm/batch-settlement/client";
import { BatchSettlementEvmScheme as BatchFacilitator } from "@x402/evm/batch-settlement/facilitator";
import { encodeAbiParameters, encodeFunctionData, keccak256, toFunctionSelector, toHex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import {
  BATCH_SETTLEMENT_ADDRESS,
  BatchSettlementLite,
  ERC3009_COLLECTOR_ADDRESS,
  Erc3009DepositCollectorLite,
  PERMIT2_COLLECTOR_ADDRESS,
  Permit2DepositCollectorLite,
} from "./chain.mjs";
import { errorText, isMain, printJsonLine } from "./cli.mjs";
import { startDevnet } from "./devnet.mjs";
import { makeFacilitatorSigner } from "./facilitator.mjs";

const DEPOSIT = 1_000_000n;
const PRICE = 10_000n;
const WITHDRAW_DELAY = 900;

export async function run() {
  const out = { steps: {}, error: null };
  const step = (name, ok, detail = "") => {
    out.steps[name] = { ok: !!ok, detail: String(detail) };
  };
  const devnet = await startDevnet({ payers: 2, facilitator: false });
  try {
    const { chain, token } = devnet;
    const { publicClient } = chain;
    const network = `eip155:${chain.chainId}`;
    const { signer } = makeFacilitatorSigner({
      rpcUrl: chain.rpcUrl,
      chainId: chain.chainId,
      privateKey: chain.accounts.facilitator.privateKey,
    });
    const authorizer = privateKeyToAccount(generatePrivateKey());
    const facilitator = new x402Facilitator();
    facilitator.register(network, new BatchFacilitator(signer, authorizer));
    const receiver = chain.accounts.payTo.address;
    const requirements = {
      scheme: "batch-settlement",
      network,
      amount: PRICE.toString(),
      asset: token.address,
      payTo: receiver,
      maxTimeoutSeconds: 300,
      extra: { name: token.name, version: token.version, receiverAuthorizer: authorizer.address, withdrawDelay: WITHDRAW_DELAY },
    };
    const read = (functionName, args) =>
      publicClient.readContract({ address: BATCH_SETTLEMENT_ADDRESS, abi: BatchSettlementLite.abi, functionName, args });
    // What an eth_call of `functionName` from `from` reverts with ("" when it would succeed).
    const revertOf = async (from, functionName, args, address = BATCH_SETTLEMENT_ADDRESS, abi = BatchSettlementLite.abi) => {
      try {
        await publicClient.call({ account: from, to: address, data: encodeFunctionData({ abi, functionName, args }) });
        return "";
      } catch (e) {
        return errorText(e);
      }
    };
    // A step that passes when the call reverted with our contract's custom error `error`.
    const refused = (name, text, error) =>
      step(name, text.includes(toFunctionSelector(`${error}()`)), `${error}: ${text.slice(0, 160)}`);
    const send = async (privateKey, functionName, args) => {
      const w = chain.walletFor(privateKey);
      const hash = await w.writeContract({ address: BATCH_SETTLEMENT_ADDRESS, abi: BatchSettlementLite.abi, functionName, args });
      const receipt = await w.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new Error(`${functionName} reverted: ${hash}`);
      return receipt;
    };

    const payer = devnet.info.payers[0];
    const payerAccount = privateKeyToAccount(payer.privateKey);
    const channelConfig = (salt) => ({
      payer: payer.address,
      payerAuthorizer: payer.address,
      receiver,
      receiverAuthorizer: authorizer.address,
      token: token.address,
      withdrawDelay: WITHDRAW_DELAY,
      salt,
    });
    const config = channelConfig(toHex(1n, { size: 32 }));
    const channelId = computeChannelId(config, network);
    const onChainId = await read("getChannelId", [config]);
    step("channel_id_matches_reference", onChainId.toLowerCase() === channelId.toLowerCase(), `${onChainId} ${channelId}`);

    // Deposit (with the first voucher) through the reference facilitator.
    const payerBefore = await chain.balanceOf(token, payer.address);
    const deposit = await createBatchSettlementEIP3009DepositPayload(
      payerAccount, 2, requirements, config, DEPOSIT.toString(), PRICE.toString(),
    );
    const depositPayload = { x402Version: 2, accepted: requirements, payload: deposit.payload, resource: { url: "http://local/batch" } };
    const verified = await facilitator.verify(depositPayload, requirements);
    step("deposit_verify", verified.isValid, JSON.stringify(verified));
    const deposited = await facilitator.settle(depositPayload, requirements);
    const [balance] = await read("channels", [channelId]);
    step(
      "deposit_settle",
      deposited.success && balance === DEPOSIT && payerBefore - (await chain.balanceOf(token, payer.address)) === DEPOSIT
        && (await chain.balanceOf(token, BATCH_SETTLEMENT_ADDRESS)) === DEPOSIT,
      JSON.stringify({ deposited, balance: balance.toString() }),
    );
    const sameAgain = await facilitator.settle(depositPayload, requirements);
    const [balanceAgain] = await read("channels", [channelId]);
    step("deposit_replay_refused", !sameAgain.success && balanceAgain === DEPOSIT, JSON.stringify(sameAgain));

    // Cumulative vouchers, verified by the reference facilitator against our contract's state.
    const vouchers = [];
    for (let i = 1n; i <= 3n; i++) vouchers.push(await signVoucher(payerAccount, channelId, (PRICE * i).toString(), network));
    const voucherPayload = (v) => ({ x402Version: 2, accepted: requirements, payload: { type: "voucher", channelConfig: config, voucher: v } });
    const vOk = await facilitator.verify(voucherPayload(vouchers[2]), requirements);
    step("voucher_verify", vOk.isValid, JSON.stringify(vOk));
    const forged = await signVoucher(privateKeyToAccount(generatePrivateKey()), channelId, (PRICE * 4n).toString(), network);
    const vBad = await facilitator.verify(voucherPayload(forged), requirements);
    step("forged_voucher_refused_by_facilitator", !vBad.isValid, JSON.stringify(vBad));

    const claimRow = (v, total, cfg = config) => ({
      voucher: { channel: cfg, maxClaimableAmount: v.maxClaimableAmount },
      signature: v.signature,
      totalClaimed: total.toString(),
    });
    const contractRow = (row) => ({
      voucher: { channel: row.voucher.channel, maxClaimableAmount: BigInt(row.voucher.maxClaimableAmount) },
      signature: row.signature,
      totalClaimed: BigInt(row.totalClaimed),
    });

    // What the contract refuses before anything is claimed.
    const receiverKey = chain.accounts.payTo.privateKey;
    const over = await revertOf(receiver, "claim", [[contractRow(claimRow(vouchers[1], PRICE * 3n))]]);
    refused("claim_above_voucher_refused", over, "ClaimExceedsCeiling");
    const bigVoucher = await signVoucher(payerAccount, channelId, (DEPOSIT * 2n).toString(), network);
    const beyond = await revertOf(receiver, "claim", [[contractRow(claimRow(bigVoucher, DEPOSIT + 1n))]]);
    refused("claim_above_escrow_refused", beyond, "ClaimExceedsBalance");
    const forgedClaim = await revertOf(receiver, "claim", [[contractRow(claimRow(forged, PRICE * 4n))]]);
    refused("forged_voucher_refused_on_chain", forgedClaim, "InvalidSignature");
    const stranger = await revertOf(devnet.info.payers[1].address, "claim", [[contractRow(claimRow(vouchers[0], PRICE))]]);
    refused("claim_by_stranger_refused", stranger, "NotAuthorizedToClaim");
    const wrongBatchSig = await authorizer.signMessage({ message: "not a claim batch" });
    const badBatch = await revertOf(devnet.info.payers[1].address, "claimWithSignature", [
      [contractRow(claimRow(vouchers[0], PRICE))],
      wrongBatchSig,
    ]);
    refused("batch_signed_by_someone_else_refused", badBatch, "InvalidSignature");

    // Claim the second voucher through the facilitator (claimWithSignature by the authorizer).
    const claimed = await facilitator.settle(
      { x402Version: 2, accepted: requirements, payload: { type: "claim", claims: [claimRow(vouchers[1], PRICE * 2n)] } },
      requirements,
    );
    const [, totalClaimed] = await read("channels", [channelId]);
    const [receiverClaimed] = await read("receivers", [receiver, token.address]);
    step(
      "claim",
      claimed.success && totalClaimed === PRICE * 2n && receiverClaimed === PRICE * 2n,
      JSON.stringify({ claimed, totalClaimed: totalClaimed.toString() }),
    );
    // The same claim again, or an older voucher, changes nothing and does not revert.
    await send(receiverKey, "claim", [[contractRow(claimRow(vouchers[1], PRICE * 2n)), contractRow(claimRow(vouchers[0], PRICE))]]);
    const [, afterReplay] = await read("channels", [channelId]);
    step("claim_replay_is_a_no_op", afterReplay === PRICE * 2n, afterReplay.toString());

    // Settle sweeps what was claimed to the receiver, once.
    const receiverBefore = await chain.balanceOf(token, receiver);
    const settled = await facilitator.settle(
      { x402Version: 2, accepted: requirements, payload: { type: "settle", receiver, token: token.address } },
      requirements,
    );
    const receiverAfter = await chain.balanceOf(token, receiver);
    step("settle", settled.success && receiverAfter - receiverBefore === PRICE * 2n, JSON.stringify(settled));
    await send(receiverKey, "settle", [receiver, token.address]);
    step("settle_twice_pays_once", (await chain.balanceOf(token, receiver)) === receiverAfter);

    // Cooperative refund with a final claim in the same transaction (multicall): the payer
    // gets back the escrow less everything claimed, the nonce advances.
    const payerBeforeRefund = await chain.balanceOf(token, payer.address);
    const refunded = await facilitator.settle(
      {
        x402Version: 2,
        accepted: requirements,
        payload: {
          type: "refund",
          channelConfig: config,
          voucher: vouchers[2],
          amount: DEPOSIT.toString(),
          refundNonce: "0",
          claims: [claimRow(vouchers[2], PRICE * 3n)],
        },
      },
      requirements,
    );
    const [balanceAfterRefund, claimedAfterRefund] = await read("channels", [channelId]);
    const refundedAmount = (await chain.balanceOf(token, payer.address)) - payerBeforeRefund;
    step(
      "refund_with_claim",
      refunded.success && claimedAfterRefund === PRICE * 3n && balanceAfterRefund === PRICE * 3n
        && refundedAmount === DEPOSIT - PRICE * 3n && (await read("refundNonce", [channelId])) === 1n,
      JSON.stringify({ refunded, refundedAmount: refundedAmount.toString() }),
    );
    const refundSig = await authorizer.signTypedData({
      domain: { name: "x402 Batch Settlement", version: "1", chainId: chain.chainId, verifyingContract: BATCH_SETTLEMENT_ADDRESS },
      types: { Refund: [{ name: "channelId", type: "bytes32" }, { name: "nonce", type: "uint256" }, { name: "amount", type: "uint128" }] },
      primaryType: "Refund",
      message: { channelId, nonce: 0n, amount: DEPOSIT },
    });
    const reused = await revertOf(receiver, "refundWithSignature", [config, DEPOSIT, 0n, refundSig]);
    refused("refund_nonce_reuse_refused", reused, "InvalidRefundNonce");

    // The collector only serves the channel contract.
    const collectorData = encodeAbiParameters(
      [{ type: "uint256" }, { type: "uint256" }, { type: "uint256" }, { type: "bytes" }],
      [0n, 2n ** 40n, 7n, "0x"],
    );
    const direct = await revertOf(
      receiver,
      "collect",
      [payer.address, token.address, 1n, channelId, collectorData],
      ERC3009_COLLECTOR_ADDRESS,
      Erc3009DepositCollectorLite.abi,
    );
    refused("collector_called_directly_refused", direct, "OnlySettlement");
    const shortDelay = await revertOf(receiver, "deposit", [
      { ...config, withdrawDelay: 899 },
      1n,
      ERC3009_COLLECTOR_ADDRESS,
      collectorData,
    ]);
    refused("withdraw_delay_out_of_range_refused", shortDelay, "WithdrawDelayOutOfRange");

    // A deposit through Permit2, signed by the reference client for an offer that asks for it.
    const p2Payer = devnet.info.payers[1];
    const p2Account = privateKeyToAccount(p2Payer.privateKey);
    const p2Requirements = { ...requirements, extra: { ...requirements.extra, assetTransferMethod: "permit2" } };
    const p2Client = new BatchClient(toClientEvmSigner(p2Account, publicClient), {
      salt: toHex(3n, { size: 32 }),
      depositPolicy: { depositMultiplier: 100 },
    });
    const p2Deposit = await p2Client.createPaymentPayload(2, p2Requirements);
    const p2Auth = p2Deposit.payload.deposit?.authorization?.permit2Authorization;
    step(
      "permit2_deposit_signed_by_reference_client",
      p2Deposit.payload.type === "deposit" && p2Auth?.spender === PERMIT2_COLLECTOR_ADDRESS,
      JSON.stringify(p2Deposit.payload).slice(0, 300),
    );
    const p2Payload = { x402Version: 2, accepted: p2Requirements, payload: p2Deposit.payload, resource: { url: "http://local/batch" } };
    const unapproved = await facilitator.verify(p2Payload, p2Requirements);
    step("permit2_deposit_needs_allowance", !unapproved.isValid, JSON.stringify(unapproved));
    await chain.approvePermit2(token, p2Payer.privateKey);
    const p2Verified = await facilitator.verify(p2Payload, p2Requirements);
    step("permit2_deposit_verify", p2Verified.isValid, JSON.stringify(p2Verified));
    const p2Config = p2Deposit.payload.channelConfig;
    const p2Id = computeChannelId(p2Config, network);
    const p2Amount = BigInt(p2Deposit.payload.deposit.amount);
    // The permit, its nonce still unspent, cannot fund another channel of the same payer: the
    // witness names the channel, so Permit2 recovers someone else from the signature.
    const p2Data = (nonce) => encodeAbiParameters(
      [{ type: "uint256" }, { type: "uint256" }, { type: "bytes" }, { type: "bytes" }],
      [BigInt(nonce), BigInt(p2Auth.deadline), p2Auth.signature, "0x"],
    );
    const otherChannel = { ...p2Config, salt: toHex(4n, { size: 32 }) };
    const moved = await revertOf(receiver, "deposit", [otherChannel, p2Amount, PERMIT2_COLLECTOR_ADDRESS, p2Data(p2Auth.nonce)]);
    refused("permit2_deposit_bound_to_its_channel", moved, "InvalidSigner");
    const p2Before = await chain.balanceOf(token, p2Payer.address);
    const p2Settled = await facilitator.settle(p2Payload, p2Requirements);
    const [p2Balance] = await read("channels", [p2Id]);
    step(
      "permit2_deposit_settle",
      p2Settled.success && p2Amount > 0n && p2Balance === p2Amount
        && p2Before - (await chain.balanceOf(token, p2Payer.address)) === p2Amount,
      JSON.stringify({ p2Settled, balance: p2Balance.toString() }),
    );
    const p2Again = await facilitator.settle(p2Payload, p2Requirements);
    const [p2BalanceAgain] = await read("channels", [p2Id]);
    step("permit2_deposit_replay_refused", !p2Again.success && p2BalanceAgain === p2Amount, JSON.stringify(p2Again));
    const p2Direct = await revertOf(
      receiver,
      "collect",
      [p2Payer.address, token.address, 1n, p2Id, p2Data(1n)],
      PERMIT2_COLLECTOR_ADDRESS,
      Permit2DepositCollectorLite.abi,
    );
    refused("permit2_collector_called_directly_refused", p2Direct, "OnlySettlement");

    // Timed withdrawal on a second channel: the payer announces it, the receiver side still
    // claims during the delay, and after the delay only the unclaimed escrow leaves.
    const config2 = channelConfig(toHex(2n, { size: 32 }));
    const id2 = computeChannelId(config2, network);
    const deposit2 = await createBatchSettlementEIP3009DepositPayload(
      payerAccount, 2, requirements, config2, DEPOSIT.toString(), PRICE.toString(),
    );
    const d2 = await facilitator.settle(
      { x402Version: 2, accepted: requirements, payload: deposit2.payload, resource: { url: "http://local/batch" } },
      requirements,
    );
    if (!d2.success) throw new Error(`second deposit failed: ${JSON.stringify(d2)}`);
    await send(payer.privateKey, "initiateWithdraw", [config2, DEPOSIT]);
    const early = await revertOf(payer.address, "finalizeWithdraw", [config2]);
    refused("withdraw_before_delay_refused", early, "WithdrawDelayNotElapsed");
    const v2 = await signVoucher(payerAccount, id2, (PRICE * 5n).toString(), network);
    const lateClaim = await facilitator.settle(
      { x402Version: 2, accepted: requirements, payload: { type: "claim", claims: [claimRow(v2, PRICE * 5n, config2)] } },
      requirements,
    );
    step("claim_during_withdraw_delay", lateClaim.success, JSON.stringify(lateClaim));
    await chain.testClient.increaseTime({ seconds: WITHDRAW_DELAY });
    await chain.testClient.mine({ blocks: 1 });
    const payerBeforeWithdraw = await chain.balanceOf(token, payer.address);
    await send(payer.privateKey, "finalizeWithdraw", [config2]);
    const withdrawn = (await chain.balanceOf(token, payer.address)) - payerBeforeWithdraw;
    const [bal2, claimed2] = await read("channels", [id2]);
    step(
      "withdraw_after_delay_takes_only_unclaimed",
      withdrawn === DEPOSIT - PRICE * 5n && bal2 === PRICE * 5n && claimed2 === PRICE * 5n,
      JSON.stringify({ withdrawn: withdrawn.toString(), balance: bal2.toString() }),
    );
    const [pendingAmount, pendingAt] = await read("pendingWithdrawals", [id2]);
    step("withdrawal_cleared", pendingAmount === 0n && pendingAt === 0);
    // Every token the contract holds is owed to someone: claimed-unsettled plus unclaimed escrow.
    const [rc, rs] = await read("receivers", [receiver, token.address]);
    const held = await chain.balanceOf(token, BATCH_SETTLEMENT_ADDRESS);
    const [p2Escrow, p2Claimed] = await read("channels", [p2Id]);
    const owed = rc - rs + (bal2 - claimed2) + (balanceAfterRefund - claimedAfterRefund) + (p2Escrow - p2Claimed);
    step("contract_holds_exactly_what_it_owes", held === owed, `${held} ${owed}`);
    // keccak256 is used for the ERC-3009 nonce the collector derives; the client's must match.
    step(
      "deposit_nonce_binds_channel",
      await chain.authorizationState(
        token,
        payer.address,
        keccak256(encodeAbiParameters([{ type: "bytes32" }, { type: "uint256" }], [channelId, BigInt(deposit.payload.deposit.authorization.erc3009Authorization.salt)])),
      ),
    );
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
