//! `METHOD /path` for a log line: the path up to the first `?` (a query may carry a
//! token), every byte outside printable ASCII escaped as `\xHH` (a raw control byte must
//! not break the line or drive a terminal), cut at [`MAX_PATH`] bytes.

use std::fmt;

/// Longest path shown; longer ones end in `...`.
pub const MAX_PATH: usize = 200;

pub struct RequestLine<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
}

impl fmt::Display for RequestLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escaped(f, &self.method[..self.method.len().min(16)])?;
        f.write_str(" ")?;
        let end = self.path.iter().position(|&b| b == b'?').unwrap_or(self.path.len());
        let path = &self.path[..end];
        escaped(f, &path[..path.len().min(MAX_PATH)])?;
        if path.len() > MAX_PATH {
            f.write_str("...")?;
        }
        if end < self.path.len() {
            f.write_str("?...")?;
        }
        Ok(())
    }
}

fn escaped(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !(0x21..0x7f).contains(&b) || b == b'\\' {
            // Safe: bytes[start..i] is printable ASCII.
            f.write_str(std::str::from_utf8(&bytes[start..i]).unwrap_or_default())?;
            write!(f, "\\x{b:02x}")?;
            start = i + 1;
        }
    }
    f.write_str(std::str::from_utf8(&bytes[start..]).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(method: &[u8], path: &[u8]) -> String {
        RequestLine { method, path }.to_string()
    }

    #[test]
    fn query_is_never_shown() {
        assert_eq!(line(b"GET", b"/api/flows?token=secret"), "GET /api/flows?...");
        assert_eq!(line(b"POST", b"/api/flows/filter"), "POST /api/flows/filter");
    }

    #[test]
    fn raw_bytes_are_escaped() {
        assert_eq!(line(b"GET", b"/a\x1b[31m\nb"), "GET /a\\x1b[31m\\x0ab");
        assert_eq!(line(b"GET", b"/caf\xc3\xa9 x\\y"), "GET /caf\\xc3\\xa9\\x20x\\x5cy");
        assert_eq!(line(b"G\x00T", b"*"), "G\\x00T *");
    }

    #[test]
    fn long_paths_are_cut() {
        let path = format!("/{}", "a".repeat(5000));
        let shown = line(b"GET", path.as_bytes());
        assert_eq!(shown.len(), "GET ".len() + MAX_PATH + 3);
        assert!(shown.ends_with("..."));
        let method = line(&[b'M'; 100], b"/");
        assert_eq!(method, format!("{} /", "M".repeat(16)));
    }
}
