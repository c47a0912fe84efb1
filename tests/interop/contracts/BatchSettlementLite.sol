// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import "./Permit2Lite.sol";

interface IERC20Min {
    function balanceOf(address account) external view returns (uint256);
    function transfer(address to, uint256 value) external returns (bool);
}

/// What a deposit collector does for the channel contract: pull `amount` of `token` from
/// `payer` (however the collector's own authorization works) and hand it to the caller.
interface IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external;
}

/// Sends `value` of `token` to `to`; accepts tokens that return nothing or `true`.
library TokenSend {
    error TokenTransferFailed();

    function send(address token, address to, uint256 value) internal {
        (bool ok, bytes memory ret) = token.call(abi.encodeWithSelector(IERC20Min.transfer.selector, to, value));
        if (!ok || (ret.length != 0 && !abi.decode(ret, (bool)))) revert TokenTransferFailed();
    }
}

/// Checks a signature over an EIP-712 digest: a 65-byte ECDSA signature (low s, v 27/28) from
/// the expected address, or, when that address is a contract, its ERC-1271 answer.
library Signatures {
    uint256 private constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    bytes4 private constant ERC1271_MAGIC = 0x1626ba7e;

    function recover(bytes32 digest, bytes calldata sig) internal pure returns (address) {
        if (sig.length != 65) return address(0);
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v != 27 && v != 28) return address(0);
        if (uint256(s) > HALF_ORDER) return address(0);
        return ecrecover(digest, v, r, s);
    }

    function isValid(address signer, bytes32 digest, bytes calldata sig) internal view returns (bool) {
        if (signer == address(0)) return false;
        if (recover(digest, sig) == signer) return true;
        if (signer.code.length == 0) return false;
        (bool ok, bytes memory ret) = signer.staticcall(abi.encodeWithSelector(ERC1271_MAGIC, digest, sig));
        return ok && ret.length >= 32 && abi.decode(ret, (bytes32)) == bytes32(ERC1271_MAGIC);
    }
}

/// The x402 `batch-settlement` channel contract, written from the scheme's specification and
/// the ABI the reference x402 EVM packages call. A payer escrows tokens in a channel whose
/// identity is the EIP-712 hash of its immutable configuration; the payer then signs
/// cumulative vouchers off chain; the receiver side claims the latest voucher of many channels
/// at once (claimed value stays escrowed until `settle` sweeps it to the receiver); idle
/// escrow goes back to the payer by a cooperative refund or, without the receiver's help, a
/// timed withdrawal. Installed at the address the reference packages expect on the local chain:
/// it has no constructor state (the EIP-712 domain is computed from this address).
contract BatchSettlementLite {
    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    struct VoucherClaim {
        Voucher voucher;
        bytes signature;
        uint128 totalClaimed;
    }

    /// Escrow (`balance`, deposits less refunds and withdrawals) and the cumulative amount the
    /// receiver side has claimed against it (`totalClaimed <= balance` always).
    struct Channel {
        uint128 balance;
        uint128 totalClaimed;
    }

    struct Withdrawal {
        uint128 amount;
        uint40 initiatedAt;
    }

    struct ReceiverTotals {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    uint40 public constant MIN_WITHDRAW_DELAY = 900;
    uint40 public constant MAX_WITHDRAW_DELAY = 2_592_000;

    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("x402 Batch Settlement");
    bytes32 private constant VERSION_HASH = keccak256("1");

    mapping(bytes32 => Channel) public channels;
    mapping(bytes32 => Withdrawal) public pendingWithdrawals;
    /// Spent by every cooperative refund (signed or not), so a signed refund runs once.
    mapping(bytes32 => uint256) public refundNonce;
    mapping(address => mapping(address => ReceiverTotals)) public receivers;

    bool private transient entered;

    event ChannelCreated(bytes32 indexed channelId, ChannelConfig config);
    event ChannelClosed(bytes32 indexed channelId, ChannelConfig config);
    event Deposited(bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 newBalance);
    event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed);
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
    event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount);
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 finalizeAfter);
    event WithdrawFinalized(bytes32 indexed channelId, address indexed sender, uint128 amount);

    error Reentered();
    error InvalidChannel();
    error WithdrawDelayOutOfRange();
    error ZeroDeposit();
    error InvalidCollector();
    error DepositOverflow();
    error DepositCollectionFailed();
    error EmptyBatch();
    error NotAuthorizedToClaim();
    error NotReceiverAuthorizer();
    error InvalidSignature();
    error ClaimExceedsCeiling();
    error ClaimExceedsBalance();
    error NotAuthorizedToRefund();
    error InvalidRefundNonce();
    error ZeroRefund();
    error NotAuthorizedToWithdraw();
    error NothingToWithdraw();
    error WithdrawalAlreadyPending();
    error WithdrawAmountExceedsAvailable();
    error WithdrawalNotPending();
    error WithdrawDelayNotElapsed();

    modifier oneAtATime() {
        if (entered) revert Reentered();
        entered = true;
        _;
        entered = false;
    }

    // ---------------------------------------------------------------- deposits

    /// Escrows exactly `amount` more in the channel `config` names; `collector` pulls it from
    /// the payer with the authorization in `collectorData`. Anyone may relay a deposit.
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        oneAtATime
    {
        if (
            config.payer == address(0) || config.receiver == address(0) || config.receiverAuthorizer == address(0)
                || config.token == address(0)
        ) revert InvalidChannel();
        if (config.withdrawDelay < MIN_WITHDRAW_DELAY || config.withdrawDelay > MAX_WITHDRAW_DELAY) {
            revert WithdrawDelayOutOfRange();
        }
        if (amount == 0) revert ZeroDeposit();
        if (collector == address(0)) revert InvalidCollector();

        bytes32 id = getChannelId(config);
        Channel storage ch = channels[id];
        if (uint256(ch.balance) + amount > type(uint128).max) revert DepositOverflow();
        bool wasEmpty = ch.balance == 0 && ch.totalClaimed == 0;
        ch.balance += amount;

        uint256 held = IERC20Min(config.token).balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, config.token, amount, id, collectorData);
        if (IERC20Min(config.token).balanceOf(address(this)) != held + amount) revert DepositCollectionFailed();

        if (wasEmpty) emit ChannelCreated(id, config);
        emit Deposited(id, msg.sender, amount, ch.balance);
    }

    // ---------------------------------------------------------------- claims and settlement

    /// Records the vouchers' cumulative amounts; the caller must be each channel's receiver or
    /// receiver authorizer.
    function claim(VoucherClaim[] calldata voucherClaims) external oneAtATime {
        if (voucherClaims.length == 0) revert EmptyBatch();
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            ChannelConfig calldata c = voucherClaims[i].voucher.channel;
            if (msg.sender != c.receiver && msg.sender != c.receiverAuthorizer) revert NotAuthorizedToClaim();
            _applyClaim(voucherClaims[i]);
        }
    }

    /// Records the vouchers' cumulative amounts on the strength of one signature by the
    /// receiver authorizer all rows share, over `getClaimBatchDigest`. Anyone may relay it.
    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature)
        external
        oneAtATime
    {
        if (voucherClaims.length == 0) revert EmptyBatch();
        address authorizer = voucherClaims[0].voucher.channel.receiverAuthorizer;
        for (uint256 i = 1; i < voucherClaims.length; ++i) {
            if (voucherClaims[i].voucher.channel.receiverAuthorizer != authorizer) revert NotReceiverAuthorizer();
        }
        if (!Signatures.isValid(authorizer, getClaimBatchDigest(voucherClaims), authorizerSignature)) {
            revert InvalidSignature();
        }
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            _applyClaim(voucherClaims[i]);
        }
    }

    /// Pays `receiver` everything claimed for it in `token` and not yet paid. Anyone may call.
    function settle(address receiver, address token) external oneAtATime {
        ReceiverTotals storage t = receivers[receiver][token];
        uint128 due = t.totalClaimed - t.totalSettled;
        if (due == 0) return;
        t.totalSettled = t.totalClaimed;
        TokenSend.send(token, receiver, due);
        emit Settled(receiver, token, msg.sender, due);
    }

    /// A row that does not raise the channel's claimed total changes nothing (an old voucher
    /// replayed is harmless); a row that does must be within its voucher and the escrow, and
    /// carry the payer's (or payer authorizer's) signature.
    function _applyClaim(VoucherClaim calldata vc) private {
        ChannelConfig calldata c = vc.voucher.channel;
        bytes32 id = getChannelId(c);
        Channel storage ch = channels[id];
        uint128 total = vc.totalClaimed;
        if (total <= ch.totalClaimed) return;
        if (total > vc.voucher.maxClaimableAmount) revert ClaimExceedsCeiling();
        if (total > ch.balance) revert ClaimExceedsBalance();

        bytes32 digest = getVoucherDigest(id, vc.voucher.maxClaimableAmount);
        bool signed = c.payerAuthorizer != address(0)
            ? Signatures.recover(digest, vc.signature) == c.payerAuthorizer
            : Signatures.isValid(c.payer, digest, vc.signature);
        if (!signed) revert InvalidSignature();

        uint128 delta = total - ch.totalClaimed;
        ch.totalClaimed = total;
        receivers[c.receiver][c.token].totalClaimed += delta;
        emit Claimed(id, msg.sender, delta, total);
    }

    // ---------------------------------------------------------------- refunds

    /// Cooperative refund by the receiver side: returns up to `amount` of unclaimed escrow.
    function refund(ChannelConfig calldata config, uint128 amount) external oneAtATime {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotAuthorizedToRefund();
        _refund(config, amount);
    }

    /// The same, relayed by anyone with the receiver authorizer's signature over
    /// `getRefundDigest(channelId, nonce, amount)` for the channel's current nonce.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external oneAtATime {
        bytes32 id = getChannelId(config);
        if (nonce != refundNonce[id]) revert InvalidRefundNonce();
        if (!Signatures.isValid(config.receiverAuthorizer, getRefundDigest(id, nonce, amount), receiverAuthorizerSignature))
        {
            revert InvalidSignature();
        }
        _refund(config, amount);
    }

    /// Spends a refund nonce, then returns min(amount, unclaimed escrow) to the payer and
    /// shrinks (or ends) a pending timed withdrawal by what was returned.
    function _refund(ChannelConfig calldata config, uint128 amount) private {
        if (amount == 0) revert ZeroRefund();
        bytes32 id = getChannelId(config);
        refundNonce[id] += 1;

        Channel storage ch = channels[id];
        uint128 unclaimed = ch.balance - ch.totalClaimed;
        uint128 back = amount < unclaimed ? amount : unclaimed;
        if (back == 0) return;
        ch.balance -= back;

        Withdrawal storage w = pendingWithdrawals[id];
        if (w.initiatedAt != 0) {
            if (back >= w.amount) {
                delete pendingWithdrawals[id];
            } else {
                w.amount -= back;
            }
        }
        emit Refunded(id, msg.sender, back);
        if (ch.balance == 0 && ch.totalClaimed == 0) emit ChannelClosed(id, config);
        TokenSend.send(config.token, config.payer, back);
    }

    // ---------------------------------------------------------------- timed withdrawal

    /// The payer (or payer authorizer) announces it will take back `amount` of unclaimed
    /// escrow once the channel's withdraw delay has passed; the receiver side can still claim
    /// in the meantime.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external oneAtATime {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) revert NotAuthorizedToWithdraw();
        if (amount == 0) revert NothingToWithdraw();
        bytes32 id = getChannelId(config);
        Withdrawal storage w = pendingWithdrawals[id];
        if (w.initiatedAt != 0) revert WithdrawalAlreadyPending();
        Channel storage ch = channels[id];
        if (amount > ch.balance - ch.totalClaimed) revert WithdrawAmountExceedsAvailable();
        w.amount = amount;
        w.initiatedAt = uint40(block.timestamp);
        emit WithdrawInitiated(id, amount, uint40(block.timestamp) + config.withdrawDelay);
    }

    /// After the delay, pays the payer the announced amount, capped by what is still unclaimed.
    function finalizeWithdraw(ChannelConfig calldata config) external oneAtATime {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) revert NotAuthorizedToWithdraw();
        bytes32 id = getChannelId(config);
        Withdrawal memory w = pendingWithdrawals[id];
        if (w.initiatedAt == 0) revert WithdrawalNotPending();
        if (block.timestamp < uint256(w.initiatedAt) + config.withdrawDelay) revert WithdrawDelayNotElapsed();

        Channel storage ch = channels[id];
        uint128 unclaimed = ch.balance - ch.totalClaimed;
        uint128 out = w.amount < unclaimed ? w.amount : unclaimed;
        delete pendingWithdrawals[id];
        ch.balance -= out;
        emit WithdrawFinalized(id, msg.sender, out);
        if (ch.balance == 0 && ch.totalClaimed == 0) emit ChannelClosed(id, config);
        if (out > 0) TokenSend.send(config.token, config.payer, out);
    }

    // ---------------------------------------------------------------- batching

    /// Runs each call against this contract in order, all or nothing (a claim and a refund in
    /// one transaction, for instance).
    function multicall(bytes[] calldata data) external returns (bytes[] memory results) {
        results = new bytes[](data.length);
        for (uint256 i = 0; i < data.length; ++i) {
            (bool ok, bytes memory ret) = address(this).delegatecall(data[i]);
            if (!ok) {
                assembly {
                    revert(add(ret, 0x20), mload(ret))
                }
            }
            results[i] = ret;
        }
    }

    // ---------------------------------------------------------------- EIP-712

    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function _typedDataHash(bytes32 structHash) private view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// A channel's identity: the EIP-712 hash of its configuration in this contract's domain.
    function getChannelId(ChannelConfig calldata config) public view returns (bytes32) {
        return _typedDataHash(
            keccak256(
                abi.encode(
                    CHANNEL_CONFIG_TYPEHASH,
                    config.payer,
                    config.payerAuthorizer,
                    config.receiver,
                    config.receiverAuthorizer,
                    config.token,
                    config.withdrawDelay,
                    config.salt
                )
            )
        );
    }

    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) public view returns (bytes32) {
        return _typedDataHash(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, maxClaimableAmount)));
    }

    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) public view returns (bytes32) {
        return _typedDataHash(keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount)));
    }

    /// The digest the receiver authorizer signs for `claimWithSignature`: a `ClaimBatch` whose
    /// entries are (channel id, voucher ceiling, claimed total) in row order.
    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) public view returns (bytes32) {
        bytes32[] memory entries = new bytes32[](voucherClaims.length);
        for (uint256 i = 0; i < voucherClaims.length; ++i) {
            entries[i] = keccak256(
                abi.encode(
                    CLAIM_ENTRY_TYPEHASH,
                    getChannelId(voucherClaims[i].voucher.channel),
                    voucherClaims[i].voucher.maxClaimableAmount,
                    voucherClaims[i].totalClaimed
                )
            );
        }
        return _typedDataHash(keccak256(abi.encode(CLAIM_BATCH_TYPEHASH, keccak256(abi.encodePacked(entries)))));
    }
}

interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;
}

/// Deposit collector for tokens with ERC-3009: the payer signed a `ReceiveWithAuthorization`
/// to this collector whose nonce binds the channel (keccak256(abi.encode(channelId, salt))), so
/// the authorization funds that channel and no other. Only the channel contract may call it
/// (otherwise whoever called first with a payer's authorization would receive the tokens).
contract Erc3009DepositCollectorLite {
    address public immutable settlement;

    error OnlySettlement();

    constructor(address settlement_) {
        settlement = settlement_;
    }

    /// `collectorData` = abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature).
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        if (msg.sender != settlement) revert OnlySettlement();
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(collectorData, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009Receive(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, nonce, signature
        );
        TokenSend.send(token, msg.sender, amount);
    }
}

/// EIP-2612 `permit`, which a payer may sign so that its first deposit also approves Permit2.
interface IERC2612Permit {
    function permit(address owner, address spender, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external;
}

/// Deposit collector for any ERC-20 the payer approved Permit2 for: the payer signed a Permit2
/// `PermitWitnessTransferFrom` naming this collector as spender, for exactly the deposit, with
/// the channel id as witness (`DepositWitness(bytes32 channelId)`), so the permit funds that
/// channel and no other. Only the channel contract may call it; the tokens go to it.
contract Permit2DepositCollectorLite {
    address public immutable settlement;
    address public immutable permit2;

    bytes32 public constant DEPOSIT_WITNESS_TYPEHASH = keccak256("DepositWitness(bytes32 channelId)");
    /// The witness part of the primary type, then the referenced types in name order.
    string public constant WITNESS_TYPE_STRING =
        "DepositWitness witness)DepositWitness(bytes32 channelId)TokenPermissions(address token,uint256 amount)";

    error OnlySettlement();

    constructor(address settlement_, address permit2_) {
        settlement = settlement_;
        permit2 = permit2_;
    }

    /// `collectorData` = abi.encode(uint256 nonce, uint256 deadline, bytes permit2Signature,
    /// bytes eip2612PermitData); the last is empty or abi.encode(uint256 value, uint256 deadline,
    /// uint8 v, bytes32 r, bytes32 s), a permit for Permit2 tried first (a permit already used
    /// or not supported leaves the allowance to decide).
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        if (msg.sender != settlement) revert OnlySettlement();
        (uint256 nonce, uint256 deadline, bytes memory signature, bytes memory eip2612) =
            abi.decode(collectorData, (uint256, uint256, bytes, bytes));
        if (eip2612.length > 0) _permitPermit2(token, payer, eip2612);
        Permit2Lite(permit2).permitWitnessTransferFrom(
            Permit2Lite.PermitTransferFrom({
                permitted: Permit2Lite.TokenPermissions({token: token, amount: amount}),
                nonce: nonce,
                deadline: deadline
            }),
            Permit2Lite.SignatureTransferDetails({to: msg.sender, requestedAmount: amount}),
            payer,
            keccak256(abi.encode(DEPOSIT_WITNESS_TYPEHASH, channelId)),
            WITNESS_TYPE_STRING,
            signature
        );
    }

    function _permitPermit2(address token, address payer, bytes memory eip2612) private {
        (uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) =
            abi.decode(eip2612, (uint256, uint256, uint8, bytes32, bytes32));
        try IERC2612Permit(token).permit(payer, permit2, value, deadline, v, r, s) {} catch {}
    }
}
