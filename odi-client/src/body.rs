//! The body type every ODI request and response carries.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};

/// The error a body stream may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every ODI request and response.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never: Infallible| match never {}).boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}
