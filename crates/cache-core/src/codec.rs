//! How values are turned into the bytes L2 stores and back.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

/// Encodes values for L2 and decodes them back. Every node of a fleet must use the same codec
/// for a namespace: a value that does not decode is served as a miss and counted.
///
/// Contract for implementors: `decode(encode(v))` equals `v` for every value the codec accepts;
/// errors are [`ErrorKind::Encode`] / [`ErrorKind::Decode`].
pub trait Codec: Send + Sync + 'static {
    /// A short name, used in messages.
    fn name(&self) -> &'static str;

    /// The bytes of `value`.
    ///
    /// # Errors
    /// [`ErrorKind::Encode`] when the value cannot be represented.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>>;

    /// The value in `bytes`.
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] when the bytes are not a `T` in this codec.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T>;
}

/// JSON via serde_json: the default, readable with `redis-cli` and by the seed's Python nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| {
            Error::new(ErrorKind::Encode, format!("cannot encode as JSON: {e}")).with_source(e)
        })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::new(ErrorKind::Decode, format!("not the expected JSON: {e}")).with_source(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_reports_typed_errors() {
        let bytes = JsonCodec.encode(&vec![1, 2, 3]).unwrap();
        assert_eq!(bytes, b"[1,2,3]");
        assert_eq!(JsonCodec.decode::<Vec<u8>>(&bytes).unwrap(), [1, 2, 3]);
        assert_eq!(
            JsonCodec.decode::<String>(&bytes).unwrap_err().kind(),
            ErrorKind::Decode
        );
        let map: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert_eq!(
            JsonCodec.encode(&map).unwrap_err().kind(),
            ErrorKind::Encode
        );
    }
}
