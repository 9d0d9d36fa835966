//! W3C Trace Context (https://www.w3.org/TR/trace-context/): parsing an incoming `traceparent`
//! and writing the one sent upstream. Only what the waypoint needs to be a well-behaved hop: it
//! continues a valid trace, starts a new one on anything malformed, and never "repairs" a header.

use rand::Rng;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The sampled bit of trace-flags; the only flag version 00 defines.
const SAMPLED: u8 = 0x01;

/// A version-00 `traceparent` is exactly this long; later versions may append `-...` fields.
const LEN: usize = 55;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The sender's span: the parent of the span that receives it.
    pub span_id: [u8; 8],
    pub sampled: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not version-00 traceparent syntax")]
    Syntax,
    #[error("version ff is invalid")]
    VersionFf,
    #[error("an all-zero trace id or parent id is invalid")]
    ZeroId,
}

impl TraceParent {
    /// Parses one `traceparent` value by the W3C rules: lowercase hex only; version `ff` is
    /// invalid; version 00 is exactly 55 characters; a higher version is read by the version-00
    /// layout and may carry more fields after a `-` (forward compatibility); all-zero ids are
    /// invalid.
    pub fn parse(value: &[u8]) -> Result<TraceParent, ParseError> {
        if value.len() < LEN {
            return Err(ParseError::Syntax);
        }
        let version = hex::<1>(&value[0..2]).ok_or(ParseError::Syntax)?[0];
        if version == 0xff {
            return Err(ParseError::VersionFf);
        }
        if (version == 0 && value.len() != LEN) || (value.len() > LEN && value[LEN] != b'-') {
            return Err(ParseError::Syntax);
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(ParseError::Syntax);
        }
        let trace_id = hex::<16>(&value[3..35]).ok_or(ParseError::Syntax)?;
        let span_id = hex::<8>(&value[36..52]).ok_or(ParseError::Syntax)?;
        let flags = hex::<1>(&value[53..55]).ok_or(ParseError::Syntax)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return Err(ParseError::ZeroId);
        }
        Ok(TraceParent {
            trace_id,
            span_id,
            sampled: flags & SAMPLED != 0,
        })
    }

    /// The version-00 header value. Flags other than `sampled` are not propagated: version 00
    /// defines no others, and a hop must not pass on bits whose meaning it does not know.
    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.span_id),
            u8::from(self.sampled)
        )
    }
}

/// Lowercase hex only: the spec forbids uppercase.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: u128 = rand::rng().random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: u64 = rand::rng().random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips() {
        let tp = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert!(tp.sampled);
        assert_eq!(to_hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&tp.span_id), "00f067aa0ba902b7");
        assert_eq!(tp.to_header(), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!TraceParent::parse(unsampled.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let cases = [
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ParseError::VersionFf,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ParseError::ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ParseError::ZeroId,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                ParseError::Syntax,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                ParseError::Syntax,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                ParseError::Syntax,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                ParseError::Syntax,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ParseError::Syntax,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
                ParseError::Syntax,
            ),
            ("", ParseError::Syntax),
        ];
        for (value, error) in cases {
            assert_eq!(
                TraceParent::parse(value.as_bytes()),
                Err(error),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_later_version_is_read_by_the_version_00_layout() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-whatever";
        let tp = TraceParent::parse(later.as_bytes()).unwrap();
        assert!(tp.sampled);
        // Propagated as version 00, with only the flag version 00 defines.
        assert_eq!(tp.to_header(), GOOD);
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(
            TraceParent::parse(glued.as_bytes()),
            Err(ParseError::Syntax)
        );
    }

    #[test]
    fn new_ids_are_never_zero_and_differ() {
        assert_ne!(new_trace_id(), [0; 16]);
        assert_ne!(new_span_id(), [0; 8]);
        assert_ne!(new_trace_id(), new_trace_id());
    }
}
