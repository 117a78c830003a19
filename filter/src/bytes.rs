//! Byte-string equality for the module's hot paths. wasi-libc's `memcmp`, which `==`
//! on slices calls in the wasm build, compares one byte per step; a repeated JWT and a
//! cache hit's key input (a few hundred bytes each) are compared whole on every request
//! (issues 13 and 16). Imports nothing of the crate.

/// `a == b`, eight bytes at a time.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a_words.remainder(), b_words.remainder());
    a_words.zip(b_words).all(|(x, y)| word(x) == word(y)) && a_rest == b_rest
}

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_wise_compare_is_byte_equality() {
        let text = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl";
        for len in 0..text.len() {
            let a = &text[..len];
            assert!(same_bytes(a, a));
            for i in 0..len {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!same_bytes(a, &b), "len {len}, byte {i}");
            }
            assert!(!same_bytes(a, &text[..len + 1]));
        }
    }
}
