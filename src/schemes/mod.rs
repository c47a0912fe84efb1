//! Payment schemes checked locally, without I/O.

pub mod evm_exact;
