//! How deeply a JSON body nests, found by one byte scan (no parse), so a body nested deeper than an
//! upstream's parser survives is refused before it is forwarded. serde_json skips unknown fields
//! without a depth limit, so the routing parse alone lets such a body through.

/// The deepest nesting of arrays and objects a client body may have. Real requests (messages, tool
/// schemas) stay far below it; serde_json's own recursion limit is the same number.
pub const MAX_JSON_DEPTH: usize = 128;

/// A body nested deeper than [`MAX_JSON_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("The request body nests arrays and objects deeper than the limit of {limit} levels.")]
pub struct TooDeep {
    pub limit: usize,
}

/// `Err` when `body` opens more than `limit` arrays or objects at once. Brackets inside strings do not
/// count; the scan stops at the first level too many. Malformed JSON is left to the parser.
pub fn check_depth(body: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(TooDeep { limit });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!(
            r#"{{"model":"m","messages":{}{}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        )
    }

    #[test]
    fn counts_levels_and_stops_at_the_limit() {
        // The outer object is one level.
        assert!(check_depth(nested(127).as_bytes(), 128).is_ok());
        assert_eq!(
            check_depth(nested(128).as_bytes(), 128),
            Err(TooDeep { limit: 128 })
        );
        assert!(check_depth(nested(100_000).as_bytes(), 128).is_err());
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        let deep_text = format!(
            r#"{{"content":"{}\"{}"}}"#,
            "[{".repeat(500),
            "[".repeat(500)
        );
        assert!(check_depth(deep_text.as_bytes(), 4).is_ok());
        assert!(check_depth(br#"{"a":"\\"}"#, 1).is_ok());
        assert!(check_depth(br#"{"a":"\\",[[]]}"#, 2).is_err());
    }
}
