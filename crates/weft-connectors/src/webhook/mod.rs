//! Inbound webhooks: verifying providers' delivery signatures, and signing Weft's own outbound
//! deliveries the same way.

pub mod inbound;
pub mod signature;

pub use inbound::{HmacParts, Inbound, inspect, scheme};

pub use signature::{
    DEFAULT_TOLERANCE_SECS, HmacAlgorithm, HmacScheme, Scheme, SigEncoding, SignatureError,
    Verified, sign, verify,
};
