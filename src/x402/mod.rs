//! The x402 protocol with no I/O: wire types, the header codec, the network and asset
//! registry, the 402 challenge builder and the payload extensions the gateway reads.

pub mod challenge;
pub mod codec;
pub mod extensions;
pub mod networks;
pub mod types;
pub mod url;

/// v2 request header carrying the payment.
pub const HEADER_PAYMENT_SIGNATURE: &str = "payment-signature";
/// v1 request header carrying the payment.
pub const HEADER_X_PAYMENT: &str = "x-payment";
/// v2 402 header carrying the requirements.
pub const HEADER_PAYMENT_REQUIRED: &str = "PAYMENT-REQUIRED";
/// v2 receipt header.
pub const HEADER_PAYMENT_RESPONSE: &str = "PAYMENT-RESPONSE";
/// v1 receipt header.
pub const HEADER_X_PAYMENT_RESPONSE: &str = "X-PAYMENT-RESPONSE";

/// The receipt header of a protocol version: `X-PAYMENT-RESPONSE` for v1, else
/// `PAYMENT-RESPONSE`.
pub fn receipt_header(v1: bool) -> &'static str {
    if v1 {
        HEADER_X_PAYMENT_RESPONSE
    } else {
        HEADER_PAYMENT_RESPONSE
    }
}
