//! Text from outside (disk names are chosen by whoever creates a file, manifests by whoever
//! can write to the store) shown to people. A name holding terminal escape sequences must not
//! drive the operator's terminal, so human output passes such text through [`escaped`];
//! `--json` output is escaped by JSON itself.

use std::fmt;

/// Displays `s` with control characters written as Rust escapes (`\u{1b}`, `\n`).
pub fn escaped(s: &str) -> Escaped<'_> {
    Escaped(s)
}

/// See [`escaped`].
pub struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        if !self.0.chars().any(char::is_control) {
            return f.pad(self.0);
        }
        let mut out = String::with_capacity(self.0.len() + 8);
        for c in self.0.chars() {
            if c.is_control() {
                write!(out, "{}", c.escape_default())?;
            } else {
                out.push(c);
            }
        }
        f.pad(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_padding_kept() {
        assert_eq!(escaped("d.img").to_string(), "d.img");
        assert_eq!(
            escaped("\u{1b}]0;pwned\u{7}x.img").to_string(),
            "\\u{1b}]0;pwned\\u{7}x.img"
        );
        assert_eq!(format!("{:<6}|", escaped("a\nb")), "a\\nb  |");
        assert_eq!(format!("{:<6}|", escaped("ab")), "ab    |");
    }
}
