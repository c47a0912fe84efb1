//! Metric labels for refusal reasons: a facilitator's `errorReason` is free text, so a label
//! is a reason code known here (the x402 specs' and reference facilitators' codes, and the
//! gateway's own) or `other`. The ledger and the 402 keep the facilitator's own words.

/// Reason codes a label may carry, sorted (searched by bisection).
const KNOWN: &[&str] = &[
    "duplicate_settlement",
    "facilitator_busy",
    "facilitator_unavailable",
    "insufficient_funds",
    "invalid_eip2612_extension_format",
    "invalid_erc20_approval_extension_format",
    "invalid_exact_evm_authorization_value",
    "invalid_exact_evm_eip3009_not_supported",
    "invalid_exact_evm_failed_to_parse_signature",
    "invalid_exact_evm_insufficient_balance",
    "invalid_exact_evm_missing_eip712_domain",
    "invalid_exact_evm_network_mismatch",
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_payload_authorization_nonce_used",
    "invalid_exact_evm_payload_authorization_valid_after",
    "invalid_exact_evm_payload_authorization_valid_before",
    "invalid_exact_evm_payload_authorization_value",
    "invalid_exact_evm_payload_authorization_value_mismatch",
    "invalid_exact_evm_payload_recipient_mismatch",
    "invalid_exact_evm_payload_signature",
    "invalid_exact_evm_recipient_mismatch",
    "invalid_exact_evm_scheme",
    "invalid_exact_evm_signature",
    "invalid_exact_evm_token_name_mismatch",
    "invalid_exact_evm_token_version_mismatch",
    "invalid_exact_evm_transaction_failed",
    "invalid_exact_evm_transaction_simulation_failed",
    "invalid_exact_evm_transfer_event_mismatch",
    "invalid_network",
    "invalid_payload",
    "invalid_payment",
    "invalid_payment_requirements",
    "invalid_permit2_recipient_mismatch",
    "invalid_permit2_signature",
    "invalid_permit2_spender",
    "invalid_scheme",
    "invalid_transaction_state",
    "invalid_x402_version",
    "nonce_already_used",
    "payment_already_used",
    "permit2_allowance_required",
    "permit2_amount_mismatch",
    "permit2_deadline_expired",
    "permit2_insufficient_balance",
    "permit2_invalid_amount",
    "permit2_invalid_destination",
    "permit2_invalid_nonce",
    "permit2_invalid_owner",
    "permit2_not_yet_valid",
    "permit2_payment_too_early",
    "permit2_proxy_not_deployed",
    "permit2_simulation_failed",
    "permit2_token_mismatch",
    "settlement_failed",
    "settlement_pending",
    "settlement_unconfirmed",
    "unexpected_settle_error",
    "unexpected_verify_error",
    "unsupported_payload_type",
    "unsupported_scheme",
];

/// `reason` as a metric label: itself when known, `""` when there is none, else `other`.
pub fn label(reason: &str) -> &'static str {
    if reason.is_empty() {
        return "";
    }
    // A reason the gateway words as `code: detail` (the ledger's sender, an outcome) is
    // labelled by its code.
    let code = reason.split_once(": ").map_or(reason, |(code, _)| code);
    match KNOWN.binary_search(&code) {
        Ok(i) => KNOWN[i],
        Err(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_stay_and_free_text_becomes_other() {
        assert!(KNOWN.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        assert_eq!(label("insufficient_funds"), "insufficient_funds");
        assert_eq!(
            label("invalid_exact_evm_nonce_already_used"),
            "invalid_exact_evm_nonce_already_used"
        );
        assert_eq!(label(""), "");
        assert_eq!(
            label("Transaction reverted: 0xdeadbeef at block 12"),
            "other"
        );
        assert_eq!(label("invalid_made_up_code_12345"), "other");
        assert_eq!(
            label("payment_already_used: sent by 0x00000000000000000000000000000000000000aa"),
            "payment_already_used"
        );
    }
}
