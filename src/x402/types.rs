//! The x402 wire shapes, v2 and v1, as JSON structs. Field order follows the reference
//! implementation so that what the gateway writes reads the same as what clients expect.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `extra` key naming an offer's payment flow (`authorization`, `upfront`, `escrow`).
pub const PAYMENT_FLOW: &str = "paymentFlow";
/// The flow of an offer that names none.
pub const DEFAULT_PAYMENT_FLOW: &str = "authorization";

/// `resource` of a v2 `PaymentRequired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    pub url: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub mime_type: String,
}

/// One v2 `PaymentRequirements` (an element of `accepts`, and the payload's `accepted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementsV2 {
    pub scheme: String,
    pub network: String,
    pub amount: String,
    pub asset: String,
    pub pay_to: String,
    pub max_timeout_seconds: u64,
    #[serde(default)]
    pub extra: Map<String, Value>,
}

/// A v2 `PaymentRequired` as written into the `PAYMENT-REQUIRED` header.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV2<'a> {
    pub x402_version: u8,
    pub error: &'a str,
    pub resource: ResourceRef<'a>,
    pub accepts: &'a [RequirementsV2],
}

/// Borrowed form of [`ResourceInfo`] for writing.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef<'a> {
    pub url: &'a str,
    pub description: &'a str,
    pub mime_type: &'a str,
}

/// One v1 `PaymentRequirements`, as written in a 402 JSON body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementsV1<'a> {
    pub scheme: &'a str,
    pub network: &'a str,
    pub max_amount_required: &'a str,
    pub resource: &'a str,
    pub description: &'a str,
    pub mime_type: &'a str,
    pub pay_to: &'a str,
    pub max_timeout_seconds: u64,
    pub asset: &'a str,
    pub extra: &'a Map<String, Value>,
}

/// The v1 402 body: `{x402Version: 1, error, accepts}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV1<'a> {
    pub x402_version: u8,
    pub error: &'a str,
    pub accepts: Vec<RequirementsV1<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payer: Option<&'a str>,
}

/// EIP-3009 authorization as carried in an `exact` EVM payload. All numbers are decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    pub from: String,
    pub to: String,
    pub value: String,
    pub valid_after: String,
    pub valid_before: String,
    pub nonce: String,
}

/// The `payload` of an `exact` EVM payment (EIP-3009 transfer method).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExactEvmPayload {
    pub signature: String,
    pub authorization: Authorization,
}

/// A decoded v2 `PaymentPayload` (`PAYMENT-SIGNATURE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV2 {
    pub x402_version: u8,
    #[serde(default)]
    pub resource: Option<ResourceInfo>,
    pub accepted: RequirementsV2,
    pub payload: Value,
    #[serde(default)]
    pub extensions: Option<Value>,
}

/// A decoded v1 `PaymentPayload` (`X-PAYMENT`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV1 {
    pub x402_version: u8,
    pub scheme: String,
    pub network: String,
    pub payload: Value,
}

/// A facilitator's `/verify` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Must be literally `true`; anything else is not valid.
    #[serde(default)]
    pub is_valid: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Scheme-specific state (`batch-settlement`: the channel's balance and claimed total).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl VerifyResponse {
    /// True only when `isValid` is the JSON literal `true`.
    pub fn valid(&self) -> bool {
        self.is_valid == Value::Bool(true)
    }
}

/// A `SettleResponse`: the facilitator's `/settle` answer and the receipt header's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Must be literally `true`; anything else is a failed settlement.
    #[serde(default)]
    pub success: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    #[serde(default)]
    pub transaction: String,
    #[serde(default)]
    pub network: String,
    /// What was charged, where the scheme says (`batch-settlement`: empty for a voucher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Scheme-specific detail (`batch-settlement`: `channelState`, `chargedAmount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

impl SettleResponse {
    /// True only when `success` is the JSON literal `true`.
    pub fn succeeded(&self) -> bool {
        self.success == Value::Bool(true)
    }

    /// The receipt header value: base64 of this response's JSON.
    pub fn header_value(&self) -> String {
        super::codec::encode(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}
