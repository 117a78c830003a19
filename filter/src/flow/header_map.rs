//! The proxy-wasm serialized header map, read in place: the host hands over one buffer
//! (`u32` count, then `u32` name and value lengths per header, then each name and value
//! followed by a NUL), and the filter borrows `(&str, &[u8])` pairs from it instead of
//! copying every header into its own `String` and `Vec` (what the SDK's `get_map_bytes`
//! does), which is most of the filter's own cost per request. [`parse`] is pure (natively
//! tested and benched); the host call that fills the buffer is wasm/proxy_wasm_host.rs.

/// The headers in `buffer`; `None` if it is truncated, inconsistent or a name is not
/// UTF-8 (Envoy never sends that; the caller fails closed).
pub fn parse(buffer: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    if buffer.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let bytes = buffer.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    };
    let count = word(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > buffer.len() {
        return None;
    }
    let mut take = |len: usize| -> Option<&[u8]> {
        let end = data.checked_add(len)?;
        let bytes = buffer.get(data..end)?;
        // The NUL after each string must be there: a length that does not land on it
        // means the buffer is not what its lengths say (found by fuzz/ header_map).
        if buffer.get(end) != Some(&0) {
            return None;
        }
        data = end + 1;
        Some(bytes)
    };
    let mut headers = Vec::with_capacity(count);
    for i in 0..count {
        let (name_len, value_len) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let name = crate::policy::headers::text(take(name_len)?)?;
        headers.push((name, take(value_len)?));
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The host's encoding (proxy-wasm ABI), written independently of the parser: the
    /// mock host's.
    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let owned: Vec<(String, Vec<u8>)> = pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        crate::flow::mock_host::serialize(&owned)
    }

    #[test]
    fn round_trip_keeps_order_duplicates_empty_and_binary_values() {
        let pairs: Vec<(&str, &[u8])> =
            vec![(":path", b"/api/flows"), ("x-a", b""), ("x-a", b"second"), ("authorization", b"Bearer \xe9\x00x")];
        assert_eq!(parse(&serialize(&pairs)).unwrap(), pairs);
        assert_eq!(parse(&[]).unwrap(), vec![]);
        assert_eq!(parse(&serialize(&[])).unwrap(), vec![]);
    }

    #[test]
    fn malformed_buffers_are_refused_not_panicked_on() {
        let good = serialize(&[(":status", b"200"), ("x-nebula-actor-id", b"alice")]);
        for len in 1..good.len() - 1 {
            assert_eq!(parse(&good[..len]), None, "truncated to {len}");
        }
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge_count), None);
        let mut huge_len = good.clone();
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge_len), None);
        // Regressions from fuzz/corpus/header_map: the last NUL missing, and a name one
        // byte shorter than its length (every later string then misses its NUL).
        assert_eq!(parse(&good[..good.len() - 1]), None, "last NUL missing");
        let mut shifted = good.clone();
        let at = shifted.windows(5).position(|w| w == b"x-neb").unwrap();
        shifted.remove(at + 1);
        assert_eq!(parse(&shifted), None, "a NUL where the lengths say none is");
        let bad_name = serialize(&[("x-\u{e9}", b"v")]);
        let mut bad_name = bad_name;
        let at = bad_name.len() - 5; // inside the name: make it invalid UTF-8
        bad_name[at] = 0xff;
        assert_eq!(parse(&bad_name), None);
    }
}
