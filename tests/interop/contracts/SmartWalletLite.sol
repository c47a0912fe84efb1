// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

interface IERC20Transfer {
    function transfer(address to, uint256 value) external returns (bool);
}

/// A smart-contract wallet in its smallest useful form: it holds tokens, answers ERC-1271
/// `isValidSignature` for EIP-712 digests its owner key signed (65-byte signatures, lower-half
/// `s` only), and lets its owner move its tokens. Written for the interop tests (a payer whose
/// vouchers and deposits are checked by ERC-1271 instead of ECDSA recovery).
contract SmartWalletLite {
    address public immutable owner;

    bytes4 private constant ERC1271_MAGIC = 0x1626ba7e;
    bytes4 private constant ERC1271_INVALID = 0xffffffff;

    error NotOwner();

    constructor(address owner_) {
        owner = owner_;
    }

    function isValidSignature(bytes32 digest, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return ERC1271_INVALID;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0) return ERC1271_INVALID;
        address signer = ecrecover(digest, v, r, s);
        return signer != address(0) && signer == owner ? ERC1271_MAGIC : ERC1271_INVALID;
    }

    function transferToken(address token, address to, uint256 value) external {
        if (msg.sender != owner) revert NotOwner();
        IERC20Transfer(token).transfer(to, value);
    }
}
