//! Cheap pre-parse checks that bound how deeply jaq's recursive parser and
//! compiler (and our own converter and evaluator) can recurse on a source text.

use crate::ExprError;

/// Longest accepted source text, in bytes.
pub(crate) const MAX_SOURCE_LEN: usize = 64 * 1024;
/// Deepest accepted nesting of `(`, `[`, `{` and string interpolations.
pub(crate) const MAX_NESTING: usize = 64;
/// Largest accepted complexity (see [`Scan::complexity`]).
pub(crate) const MAX_COMPLEXITY: usize = 2048;

/// What the scanner learned about a source text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scan {
    /// An upper bound on the depth of the syntax tree: for every chain of
    /// nested blocks, the number of operators and keywords in those blocks
    /// plus the number of blocks. Operator chains such as `1+1+1` or `.|.|.`
    /// make jaq's parser and compiler recurse once per operator, so brackets
    /// alone do not bound recursion.
    pub(crate) complexity: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum FrameKind {
    /// Inside `(`, `[` or `{` (or at the top level).
    Code,
    /// Inside a `\(` interpolation; its `)` returns to the string.
    Interp,
    /// Inside a string literal.
    Str,
}

struct Frame {
    kind: FrameKind,
    ops: usize,
    child_max: usize,
}

impl Frame {
    fn new(kind: FrameKind) -> Self {
        Self {
            kind,
            ops: 0,
            child_max: 0,
        }
    }

    fn total(&self) -> usize {
        self.ops + self.child_max + 1
    }
}

const KEYWORDS: &[&str] = &[
    "as", "if", "then", "elif", "else", "end", "try", "catch", "reduce", "foreach", "def", "label",
    "and", "or", "import", "include",
];

/// Checks the length, nesting and complexity of `src` without parsing it.
pub(crate) fn scan(src: &str) -> Result<Scan, ExprError> {
    if src.len() > MAX_SOURCE_LEN {
        return Err(ExprError::TooLong {
            max: MAX_SOURCE_LEN,
        });
    }
    let b = src.as_bytes();
    let mut stack = vec![Frame::new(FrameKind::Code)];
    // Blocks and interpolations currently open (string frames do not count).
    let mut nesting = 0usize;
    let mut i = 0;
    let close = |stack: &mut Vec<Frame>| {
        if stack.len() > 1
            && let Some(f) = stack.pop()
            && let Some(parent) = stack.last_mut()
        {
            parent.child_max = parent.child_max.max(f.total());
        }
    };
    while i < b.len() {
        let c = b[i];
        let kind = stack.last().map_or(FrameKind::Code, |f| f.kind);
        if kind == FrameKind::Str {
            match c {
                b'"' => close(&mut stack),
                b'\\' if b.get(i + 1) == Some(&b'(') => {
                    nesting += 1;
                    if nesting > MAX_NESTING {
                        return Err(ExprError::TooDeep { max: MAX_NESTING });
                    }
                    if let Some(f) = stack.last_mut() {
                        f.ops += 1;
                    }
                    stack.push(Frame::new(FrameKind::Interp));
                    i += 1;
                }
                b'\\' => i += 1,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'#' => {
                // jaq continues a comment onto the next line when the line
                // ends with an odd number of backslashes.
                loop {
                    let end = b[i..]
                        .iter()
                        .position(|&x| x == b'\n')
                        .map_or(b.len(), |p| i + p);
                    let line = &b[i..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let slashes = line.iter().rev().take_while(|&&x| x == b'\\').count();
                    i = end;
                    if slashes % 2 == 0 || i >= b.len() {
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            b'"' => stack.push(Frame::new(FrameKind::Str)),
            b'(' | b'[' | b'{' => {
                nesting += 1;
                if nesting > MAX_NESTING {
                    return Err(ExprError::TooDeep { max: MAX_NESTING });
                }
                stack.push(Frame::new(FrameKind::Code));
            }
            // Unbalanced closers are left for jaq's parser to report.
            b')' | b']' | b'}' if stack.len() > 1 => {
                nesting = nesting.saturating_sub(1);
                close(&mut stack);
            }
            b'|' | b'=' | b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/' | b'%' | b',' | b'?'
            | b';' => {
                if let Some(f) = stack.last_mut() {
                    f.ops += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                // A word right after `.` or `$` or `@` is a key or a name, never a keyword.
                let prev = start.checked_sub(1).map(|p| b[p]);
                let word = &src[start..i];
                if !matches!(prev, Some(b'.' | b'$' | b'@'))
                    && KEYWORDS.contains(&word)
                    && let Some(f) = stack.last_mut()
                {
                    f.ops += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    while stack.len() > 1 {
        close(&mut stack);
    }
    let complexity = stack.last().map_or(1, Frame::total);
    if complexity > MAX_COMPLEXITY {
        return Err(ExprError::TooComplex {
            max: MAX_COMPLEXITY,
        });
    }
    Ok(Scan { complexity })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nesting_limits() {
        let ok = format!("{}1{}", "(".repeat(64), ")".repeat(64));
        assert!(scan(&ok).is_ok());
        let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(scan(&deep).unwrap_err(), ExprError::TooDeep { max: 64 });
        let interp = format!("{}1{}", "\"\\(".repeat(65), ")\"".repeat(65));
        assert_eq!(scan(&interp).unwrap_err(), ExprError::TooDeep { max: 64 });
        // Brackets inside strings and comments do not count.
        let in_str = format!("\"{}\"", "(".repeat(200));
        assert!(scan(&in_str).is_ok());
        let in_comment = format!("1 # {}\n", "[".repeat(200));
        assert!(scan(&in_comment).is_ok());
    }

    #[test]
    fn complexity_limits() {
        assert!(scan(&vec!["1"; 1000].join("+")).is_ok());
        let long = vec!["1"; 3000].join("+");
        assert_eq!(
            scan(&long).unwrap_err(),
            ExprError::TooComplex { max: 2048 }
        );
        let pipes = vec!["."; 3000].join("|");
        assert!(scan(&pipes).is_err());
        let ifs = format!("{}1{}", "if . then ".repeat(700), " else . end".repeat(700));
        assert!(scan(&ifs).is_err());
        assert!(scan(&"x".repeat(70_000)).is_err());
        assert!(scan(".a.if.then | .end").unwrap().complexity < 5);
    }
}
