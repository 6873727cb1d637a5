//! The JSON path of the value a serde_json error is about (`process.user.uid`,
//! `linux.namespaces[2].type`, `.` for the top level), found after the fact from the
//! error's line and column by scanning the JSON text again.
//!
//! Parsing with plain `serde_json::from_slice` and paying for this scan only on
//! failure keeps one instantiation of every oci-spec `Deserialize` impl; a path
//! tracking deserializer (serde_path_to_error) instantiated them all a second time.
//! The format is serde_path_to_error's: keys joined by `.`, array indices as `[i]`.
//!
//! A leaf module: it imports nothing from the crate. Any bytes and any position give a
//! path, never a panic.

/// What kind of error sits at a position. serde_json reports each kind at a different
/// place relative to the value it is about, so the kind decides which value is blamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Malformed JSON. serde_json reports these on the offending byte, which is
    /// counted in the column.
    Syntax,
    /// Malformed JSON inside a string, number or literal (`expected ident`, `invalid
    /// escape`, ...). serde_json reports these just after the byte it read last.
    Token,
    /// The text ended early. The column is the end of the text.
    Eof,
    /// `trailing characters` inside an array: a visitor took fewer elements than
    /// the array has (a struct read from an array). The array is blamed.
    Trailing,
    /// `missing field `x``: reported just after the closing `}` of the object that
    /// lacks it; the object itself is blamed.
    Incomplete,
    /// `invalid type: map` or `invalid type: sequence`: reported just before the `{` or
    /// `[` of the value, which serde_json does not read.
    UnexpectedContainer,
    /// Any other error about a value: a wrong type (reported just after the value) or
    /// a check in a `Deserialize` impl (reported where the enclosing object or array
    /// ended: just after its `}` or `]`, or at the comma that follows the value).
    Data,
}

impl Cause {
    /// The cause of a serde_json error, from its category and message.
    fn of(err: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Io => {
                let msg = err.to_string();
                let in_token = [
                    "expected ident",
                    "invalid number",
                    "number out of range",
                    "invalid escape",
                    "control character",
                    "invalid unicode code point",
                    "lone leading surrogate",
                    "unexpected end of hex escape",
                ];
                if in_token.iter().any(|t| msg.starts_with(t)) {
                    Cause::Token
                } else if msg.starts_with("trailing characters") {
                    Cause::Trailing
                } else {
                    Cause::Syntax
                }
            }
            Category::Eof => Cause::Eof,
            Category::Data => {
                let msg = err.to_string();
                if msg.starts_with("missing field `") || msg.starts_with("invalid length ") {
                    Cause::Incomplete
                } else if msg.starts_with("invalid type: map,")
                    || msg.starts_with("invalid type: sequence,")
                {
                    Cause::UnexpectedContainer
                } else {
                    Cause::Data
                }
            }
        }
    }
}

/// The path of the value `err` (from parsing `text` with serde_json) is about.
pub fn error_path(text: &[u8], err: &serde_json::Error) -> String {
    path_at(text, err.line(), err.column(), Cause::of(err))
}

/// The path of the value an error of kind `cause` at `line` and `column` of `text` is
/// about. Lines are 1-based and counted by `\n`; the column is serde_json's: the number
/// of bytes of that line read when the error was found (so 0 is the line's start).
fn path_at(text: &[u8], line: usize, column: usize, cause: Cause) -> String {
    let mut end = line_start(text, line)
        .saturating_add(column)
        .min(text.len());
    if matches!(cause, Cause::Syntax | Cause::Token | Cause::Trailing) {
        // The offending byte was peeked at, or was the last one read: reading it as a
        // token (a `}` closing an object, say) would move the scan past the place
        // serde_json stood.
        end = end.saturating_sub(1);
    }
    let scan = Scan::run(text, end);
    scan.path(cause, text.get(end).copied())
}

/// Offset of the first byte of the 1-based `line`, or the text's length past its end.
fn line_start(text: &[u8], line: usize) -> usize {
    if line <= 1 {
        return 0;
    }
    text.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .nth(line - 2)
        .map_or(text.len(), |(i, _)| i + 1)
}

/// One step of a path.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// What an open object or array reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A key or the `}` (after `{` or an object's `,`).
    Key,
    /// The `:` after a key.
    Colon,
    /// A value (after `:`, `[`, an array's `,`, or at the top).
    Value,
    /// A `,` or the close, after a value.
    More,
}

/// An open container; the root is one too, and never names a segment.
#[derive(Debug, Clone)]
struct Frame {
    kind: Kind,
    /// The last key read (object).
    key: Option<String>,
    /// The current element (array): commas seen so far.
    index: usize,
    /// Whether any member or element was started.
    any: bool,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Root,
    Object,
    Array,
}

impl Frame {
    fn new(kind: Kind) -> Self {
        Frame {
            kind,
            key: None,
            index: 0,
            any: false,
            expect: if kind == Kind::Object {
                Expect::Key
            } else {
                Expect::Value
            },
        }
    }

    /// The segment of the current (or upcoming) member or element.
    fn seg(&self) -> Option<Seg> {
        match self.kind {
            Kind::Root => None,
            Kind::Object => self.key.clone().map(Seg::Key),
            Kind::Array => Some(Seg::Index(self.index)),
        }
    }

    /// The segment of the last member or element read in full, if any.
    fn last_seg(&self) -> Option<Seg> {
        match self.kind {
            Kind::Array if self.expect == Expect::Value => {
                self.index.checked_sub(1).map(Seg::Index)
            }
            _ if self.any => self.seg(),
            _ => None,
        }
    }
}

/// Where the scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Between tokens.
    Between,
    /// Inside a string value that goes on past the stop.
    InValue,
    /// Inside a key string.
    InKey,
    /// Just after a number or literal that cannot end there (`tru`, `1.`).
    Partial,
    /// Just after a `}` or `]`, nothing read since (not even whitespace).
    Closed,
    /// After an array's `,`, with at most whitespace since.
    ArrayComma,
}

/// The state of a scan of `text[..end]`.
struct Scan {
    stack: Vec<Frame>,
    /// The container closed last, while `last` is `Closed`.
    closed: Option<Frame>,
    last: Last,
    /// Whether the last token read (until a structural byte) was a key (`Some(true)`)
    /// or a string, number or literal value (`Some(false)`).
    token: Option<bool>,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether `b` ends a number or literal.
fn ends_scalar(b: u8) -> bool {
    is_space(b) || matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"')
}

impl Scan {
    fn run(text: &[u8], end: usize) -> Self {
        let end = end.min(text.len());
        let mut s = Scan {
            stack: vec![Frame::new(Kind::Root)],
            closed: None,
            last: Last::Between,
            token: None,
        };
        let mut i = 0;
        while i < end {
            let b = text[i];
            if is_space(b) {
                if s.last == Last::Closed {
                    s.last = Last::Between;
                }
                i += 1;
                continue;
            }
            s.last = Last::Between;
            s.token = None;
            match b {
                b'{' | b'[' => {
                    s.start_value();
                    s.stack.push(Frame::new(if b == b'{' {
                        Kind::Object
                    } else {
                        Kind::Array
                    }));
                }
                b'}' | b']' => {
                    // A stray close at the top is malformed JSON: ignored.
                    if s.stack.len() > 1 {
                        s.closed = s.stack.pop();
                        s.last = Last::Closed;
                        s.top().expect = Expect::More;
                    }
                }
                b',' => {
                    let f = s.top();
                    match f.kind {
                        Kind::Object => f.expect = Expect::Key,
                        Kind::Array => {
                            f.index += 1;
                            f.expect = Expect::Value;
                            s.last = Last::ArrayComma;
                        }
                        Kind::Root => {}
                    }
                }
                b':' => {
                    let f = s.top();
                    if f.kind == Kind::Object {
                        f.expect = Expect::Value;
                    }
                }
                b'"' => {
                    let close = string_end(text, i + 1, end);
                    let f = s.top();
                    let key = f.kind == Kind::Object && f.expect != Expect::Value;
                    if key {
                        f.key = Some(unescape(&text[i + 1..close.min(end)]));
                        f.any = true;
                        f.expect = Expect::Colon;
                    } else {
                        s.start_value();
                        s.top().expect = Expect::More;
                    }
                    s.token = Some(key);
                    if close >= end {
                        s.last = if key { Last::InKey } else { Last::InValue };
                        break;
                    }
                    i = close;
                }
                _ => {
                    let mut j = i;
                    while j < end && !ends_scalar(text[j]) {
                        j += 1;
                    }
                    s.start_value();
                    s.top().expect = Expect::More;
                    s.token = Some(false);
                    if j == end && partial(&text[i..j]) {
                        s.last = Last::Partial;
                    }
                    i = j;
                    continue;
                }
            }
            i += 1;
        }
        s
    }

    fn top(&mut self) -> &mut Frame {
        let n = self.stack.len();
        // The root is never popped.
        &mut self.stack[n - 1]
    }

    /// A value starts in the current container.
    fn start_value(&mut self) {
        let f = self.top();
        f.any = true;
        f.expect = Expect::Value;
    }

    /// The path for an error of kind `cause` where the scan stopped; `next` is the
    /// first byte not scanned.
    fn path(&self, cause: Cause, next: Option<u8>) -> String {
        let Some((inner, outer)) = self.stack.split_last() else {
            return ".".to_string();
        };
        let mut segs: Vec<Seg> = outer.iter().filter_map(Frame::seg).collect();
        let current = |segs: &mut Vec<Seg>| segs.extend(inner.seg());
        match (self.last, cause) {
            (Last::InKey, _) => {}
            (Last::InValue, _) | (Last::Partial, Cause::Eof) => current(&mut segs),
            (_, Cause::Token) if self.token.is_some() => {
                if self.token == Some(false) {
                    current(&mut segs)
                }
            }
            // serde_json checks an object's fields when it has read its `}`.
            (Last::Closed, Cause::Incomplete) => current(&mut segs),
            // A check on a member or element fails when its object or array has been
            // read to the close: blame that member or element.
            (Last::Closed, Cause::Data) => {
                current(&mut segs);
                segs.extend(self.closed.as_ref().and_then(Frame::last_seg));
            }
            // serde_json reads the comma (and the whitespace after it) that ends an
            // array element before it reports a check on that element.
            (Last::ArrayComma, Cause::Data) => segs.extend(inner.last_seg()),
            (_, Cause::UnexpectedContainer)
                if inner.expect == Expect::Value && matches!(next, Some(b'{' | b'[')) =>
            {
                current(&mut segs)
            }
            (_, Cause::Trailing) => {}
            (_, Cause::Syntax | Cause::Token | Cause::Eof) => {
                // Past a value, serde_json is looking for the comma or the close: the
                // container is blamed; an array's element is only read once its first
                // byte is there and is not `]`.
                let reading = match (inner.kind, inner.expect) {
                    (Kind::Object, Expect::Value) => true,
                    (Kind::Array, Expect::Value) => next.is_some_and(|b| b != b']'),
                    _ => false,
                };
                if reading {
                    current(&mut segs)
                }
            }
            // Just after an array's `[`, the array itself was refused (a visitor that
            // takes no sequence): no element was read yet.
            _ if inner.kind == Kind::Array && !inner.any => {}
            _ => {
                if matches!(inner.expect, Expect::Value | Expect::More) {
                    current(&mut segs)
                }
            }
        }
        render(&segs)
    }
}

/// The byte range of the value at `path` (keys of nested objects, from the top level)
/// in a JSON text that parsed: for a caller that wants the value's own bytes (the
/// seccomp cache keys a profile by them). None when a key is missing, a value on the
/// way is not an object, or an object on the way has the key twice: serde_json refuses
/// duplicate fields of a struct, but a config read through a `Value` first keeps the
/// last, so no bytes are the safe answer.
pub fn span(text: &[u8], path: &[&str]) -> Option<std::ops::Range<usize>> {
    let mut i = skip_space(text, 0);
    for want in path {
        if text.get(i) != Some(&b'{') {
            return None;
        }
        i = skip_space(text, i + 1);
        let mut found = None;
        if text.get(i) == Some(&b'}') {
            return None;
        }
        loop {
            if text.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = string_end(text, i + 1, text.len());
            let raw = text.get(i + 1..key_end)?;
            let matches = if raw.contains(&b'\\') {
                unescape(raw) == *want
            } else {
                raw == want.as_bytes()
            };
            i = skip_space(text, key_end + 1);
            if text.get(i) != Some(&b':') {
                return None;
            }
            i = skip_space(text, i + 1);
            if matches {
                if found.is_some() {
                    return None;
                }
                found = Some(i);
            }
            i = skip_space(text, value_end(text, i)?);
            match text.get(i) {
                Some(b',') => i = skip_space(text, i + 1),
                Some(b'}') => break,
                _ => return None,
            }
        }
        i = found?;
    }
    Some(i..value_end(text, i)?)
}

/// The first offset at or after `i` that is not white space.
fn skip_space(text: &[u8], mut i: usize) -> usize {
    while text.get(i).copied().is_some_and(is_space) {
        i += 1;
    }
    i
}

/// The offset just past the value that starts at `i`.
fn value_end(text: &[u8], i: usize) -> Option<usize> {
    match *text.get(i)? {
        b'"' => {
            let end = string_end(text, i + 1, text.len());
            (end < text.len()).then_some(end + 1)
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < text.len() {
                match text[j] {
                    b'"' => {
                        j = string_end(text, j + 1, text.len());
                        if j >= text.len() {
                            return None;
                        }
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let end = (i..text.len())
                .find(|&j| ends_scalar(text[j]))
                .unwrap_or(text.len());
            (end > i).then_some(end)
        }
    }
}

/// Offset of the closing quote of the string whose content starts at `from`, or
/// `end` if it does not close before `end`.
fn string_end(text: &[u8], from: usize, end: usize) -> usize {
    let mut j = from;
    while j < end {
        match text[j] {
            b'"' => return j,
            // serde_json reads the four bytes after `\u` whatever they are.
            b'\\' if text.get(j + 1) == Some(&b'u') => j += 6,
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    end
}

/// Whether a number or literal cut off here is unfinished: serde_json would want more.
fn partial(token: &[u8]) -> bool {
    match token.first() {
        Some(b't' | b'f' | b'n') => !matches!(token, b"true" | b"false" | b"null"),
        _ => !token.last().is_some_and(u8::is_ascii_digit),
    }
}

/// A key's text with its escapes decoded, as serde_json gives it to the visitor.
fn unescape(raw: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else { break };
        i += 2;
        let c = match e {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let Some(hi) = hex4(raw, i) else { break };
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) && raw.get(i..i + 2) == Some(b"\\u") {
                    match hex4(raw, i + 2) {
                        Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                            i += 6;
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        }
                        _ => hi,
                    }
                } else {
                    hi
                };
                char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
            }
            other => char::from(other),
        };
        let mut buf = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The four hex digits at `at`, as a number.
fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(raw.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// serde_path_to_error's format: `a.b[2].c`, `.` for no segments.
fn render(segs: &[Seg]) -> String {
    if segs.is_empty() {
        return ".".to_string();
    }
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn span_gives_the_bytes_serde_reads_for_a_path() {
        let texts: &[&[u8]] = &[
            br#"{"linux":{"seccomp":{"a":[1,"x}]"],"b":null}},"z":1}"#,
            br#" { "ociVersion" : "1.0" , "linux" : { "x" : [ {"seccomp":1} ] , "seccomp" : { "q" : "\"}" } } } "#,
            br#"{"li\u006eux":{"se\u0063comp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#,
            br#"{"linux":{"seccomp":true}}"#,
            br#"{"linux":{"seccomp":-1.5e3,"after":2}}"#,
        ];
        for t in texts {
            let v: serde_json::Value = serde_json::from_slice(t).expect("json");
            let want = v.pointer("/linux/seccomp").expect("pointer");
            let r = span(t, &["linux", "seccomp"]).expect("span");
            let got: serde_json::Value = serde_json::from_slice(&t[r]).expect("span parses");
            assert_eq!(&got, want, "{}", String::from_utf8_lossy(t));
        }
        // Twice the same key on the way, however it is spelt: no answer.
        for t in [
            &br#"{"linux":{"namespaces":[]}}"#[..],
            br#"{"linux":[{"seccomp":{}}]}"#,
            br#"{"seccomp":{},"linux":{}}"#,
            br#"[]"#,
            b"",
            br#"{"linux":{"seccomp":{"a":1}},"linux":{"seccomp":{"b":2}}}"#,
            br#"{"linux":{"seccomp":{"a":1},"se\u0063comp":{"b":2}}}"#,
            br#"{"linux":{"seccomp":{"a":1}},"x":1,"li\u006eux":{}}"#,
        ] {
            assert_eq!(
                span(t, &["linux", "seccomp"]),
                None,
                "{}",
                String::from_utf8_lossy(t)
            );
        }
    }

    use super::*;
    use oci_spec::runtime::{LinuxResources, Process, Spec};
    use serde::de::DeserializeOwned;
    use serde_json::{json, Value};

    /// The path and message of parsing `text` as `T`, which must fail.
    fn err<T: DeserializeOwned + std::fmt::Debug>(text: &str) -> (String, String) {
        let e = serde_json::from_slice::<T>(text.as_bytes()).expect_err(text);
        (error_path(text.as_bytes(), &e), e.to_string())
    }

    fn spec_path(text: &str) -> String {
        err::<Spec>(text).0
    }

    /// A minimal valid config with `f` applied, in compact and pretty form.
    fn forms(f: impl Fn(&mut Value)) -> [String; 2] {
        let mut v = json!({
            "ociVersion": "1.2.0", "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"]}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/tmp", "type": "tmpfs", "options": ["nosuid", "mode=755"]}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}]}
        });
        f(&mut v);
        [
            serde_json::to_string(&v).expect("compact"),
            serde_json::to_string_pretty(&v).expect("pretty"),
        ]
    }

    fn assert_path(f: impl Fn(&mut Value), want: &str) {
        for text in forms(f) {
            assert_eq!(spec_path(&text), want, "{text}");
        }
    }

    #[test]
    fn a_wrong_type_names_the_value_read_before_the_position() {
        assert_path(
            |v| v["process"]["user"]["uid"] = json!("zero"),
            "process.user.uid",
        );
        assert_path(
            |v| v["process"]["user"]["gid"] = json!(-1),
            "process.user.gid",
        );
        assert_path(
            |v| v["process"]["user"]["uid"] = json!(5000000000u64),
            "process.user.uid",
        );
        assert_path(|v| v["root"]["path"] = json!(7), "root.path");
        assert_path(
            |v| v["mounts"][1]["options"][1] = json!(7),
            "mounts[1].options[1]",
        );
        assert_path(|v| v["ociVersion"] = json!(null), "ociVersion");
        let (path, msg) = err::<Spec>(&forms(|v| v["process"]["user"]["uid"] = json!("zero"))[0]);
        assert_eq!(path, "process.user.uid");
        assert!(
            msg.starts_with("invalid type: string \"zero\", expected u32 at line 1"),
            "{msg}"
        );
    }

    #[test]
    fn a_map_or_sequence_in_place_of_a_value_names_that_value() {
        // serde_json does not read the `{` or `[`: the position is before it.
        assert_path(|v| v["process"]["args"] = json!({}), "process.args");
        assert_path(|v| v["ociVersion"] = json!([]), "ociVersion");
        assert_path(
            |v| v["process"]["user"]["uid"] = json!({}),
            "process.user.uid",
        );
        assert_path(
            |v| v["linux"]["namespaces"][2] = json!({"type": []}),
            "linux.namespaces[2].type",
        );
        assert_path(
            |v| v["mounts"][1]["options"] = json!([["x"]]),
            "mounts[1].options[0]",
        );
        // A visitor that takes no map at all: serde_json stops just inside the `{`.
        assert_path(|v| v["process"]["cwd"] = json!({"x": 1}), "process.cwd");
    }

    #[test]
    fn a_missing_field_names_the_object_that_lacks_it() {
        // oci-spec defaults most fields; a mount's destination it does not.
        assert_path(|v| v["mounts"][1] = json!({"type": "tmpfs"}), "mounts[1]");
        assert_path(|v| v["mounts"][0] = json!({}), "mounts[0]");
        let (path, msg) = err::<Spec>(&forms(|v| v["mounts"][1] = json!({"type": "tmpfs"}))[1]);
        assert_eq!(path, "mounts[1]");
        assert!(msg.starts_with("missing field `destination`"), "{msg}");
        let (path, msg) = err::<oci_spec::runtime::Mount>("{\"type\": \"tmpfs\"}");
        assert_eq!(path, ".");
        assert!(msg.starts_with("missing field `destination`"), "{msg}");
    }

    #[test]
    fn a_check_inside_oci_spec_names_the_checked_value() {
        // These are raised after the value was read, and serde_json positions them where
        // the enclosing object or array ends: after its `}` or `]`, or at the comma.
        let bad = json!({"initial": "0", "final": "0-1,x"});
        assert_path(
            |v| v["process"]["execCPUAffinity"] = bad.clone(),
            "process.execCPUAffinity.final",
        );
        let bad = json!({"initial": "x", "final": "0"});
        assert_path(
            |v| v["process"]["execCPUAffinity"] = bad.clone(),
            "process.execCPUAffinity.initial",
        );
        assert_path(
            |v| v["linux"]["namespaces"][2]["type"] = json!("bogus"),
            "linux.namespaces[2].type",
        );
        assert_path(
            |v| v["linux"]["namespaces"][0]["type"] = json!("bogus"),
            "linux.namespaces[0].type",
        );
        assert_path(
            |v| v["process"]["capabilities"]["bounding"][0] = json!("CAP_BOGUS"),
            "process.capabilities.bounding[0]",
        );
        assert_path(
            |v| v["process"]["capabilities"]["bounding"][1] = json!("CAP_BOGUS"),
            "process.capabilities.bounding[1]",
        );
        let (path, msg) =
            err::<Spec>(&forms(|v| v["process"]["execCPUAffinity"] = json!({"final": "x"}))[1]);
        assert_eq!(path, "process.execCPUAffinity.final");
        assert!(msg.starts_with("Invalid execCPUAffinity format"), "{msg}");
        // A struct given as an array: the struct's own visitor counts the elements.
        assert_path(|v| v["mounts"][0] = json!([]), "mounts[0]");
    }

    #[test]
    fn process_and_resources_parse_alone() {
        assert_eq!(
            err::<Process>(r#"{"cwd": "/", "user": {"uid": 0, "gid": "x"}}"#).0,
            "user.gid"
        );
        assert_eq!(err::<Process>(r#"{"cwd": "/", "args": "sh"}"#).0, "args");
        // A struct read from an array takes its fields in order: `terminal` first.
        assert_eq!(err::<Process>(r#"[{"cwd": "/"}]"#).0, "[0]");
        let text = r#"{"memory": {"limit": 1}, "devices": [{"allow": true, "access": "rwm"}, {"allow": "no"}]}"#;
        assert_eq!(err::<LinuxResources>(text).0, "devices[1].allow");
        assert_eq!(
            err::<LinuxResources>(r#"{"cpu": {"shares": 1.5}}"#).0,
            "cpu.shares"
        );
        assert_eq!(
            err::<LinuxResources>(r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": "1G"}]}"#).0,
            "hugepageLimits[0].limit"
        );
    }

    #[test]
    fn the_column_counts_bytes_and_lines_count_newlines() {
        // "é" is two bytes: serde_json's column is a byte count, 1-based for the last
        // byte read.
        let text = "{\"ociVersion\": \"1\",\n \"hostname\": \"é\", \"process\": {\"user\": {\"uid\": \"zero\"}}}";
        let e = serde_json::from_str::<Spec>(text).expect_err("uid");
        // 52 characters of line 2 are read, 53 bytes.
        assert_eq!((e.line(), e.column()), (2, 53));
        assert_eq!(error_path(text.as_bytes(), &e), "process.user.uid");
        assert_eq!(
            path_at(text.as_bytes(), 2, 53, Cause::Data),
            "process.user.uid"
        );
        // One byte less is still inside the string value.
        assert_eq!(
            path_at(text.as_bytes(), 2, 52, Cause::Eof),
            "process.user.uid"
        );
        // Just after the hostname; column 0 is a line's start.
        assert_eq!(path_at(text.as_bytes(), 2, 17, Cause::Data), "hostname");
        assert_eq!(path_at(text.as_bytes(), 2, 0, Cause::Data), ".");
        assert_eq!(path_at(text.as_bytes(), 1, 14, Cause::Eof), "ociVersion");
    }

    #[test]
    fn syntax_errors_name_where_the_parser_stood() {
        // A trailing comma: the container is blamed.
        assert_eq!(
            spec_path(r#"{"process": {"args": ["a", ], "cwd": "/"}}"#),
            "process.args"
        );
        assert_eq!(spec_path(r#"{"root": {"path": "x",}}"#), "root");
        // A bad literal or escape: the value it was in.
        assert_eq!(
            spec_path(r#"{"root": {"path": "x", "readonly": tru}}"#),
            "root.readonly"
        );
        assert_eq!(spec_path(r#"{"root": {"path": "a\qb"}}"#), "root.path");
        assert_eq!(spec_path(r#"{"root": {"pa\uZZth": "x"}}"#), "root");
        assert_eq!(
            spec_path(r#"{"mounts": [{"destination": "/a"} {"destination": "/b"}]}"#),
            "mounts"
        );
        assert_eq!(spec_path(r#"{"mounts": [,]}"#), "mounts[0]");
        // Missing colon, a key that is no string, and junk after the top-level value.
        assert_eq!(spec_path(r#"{"root" {"path": "x"}}"#), ".");
        assert_eq!(spec_path(r#"{"root": {path: "x"}}"#), "root");
        assert_eq!(spec_path(r#"{"ociVersion": "1.0.0"} x"#), ".");
        // The end of the text.
        assert_eq!(spec_path(r#"{"process": {"args": ["a""#), "process.args");
        assert_eq!(spec_path(r#"{"process": {"args": ["a"#), "process.args[0]");
        assert_eq!(
            spec_path(r#"{"process": {"terminal": fal"#),
            "process.terminal"
        );
        assert_eq!(spec_path(r#"{"process": {"terminal": false"#), "process");
        assert_eq!(spec_path(r#"{"process": "#), "process");
        assert_eq!(spec_path(""), ".");
    }

    #[test]
    fn keys_are_unescaped_and_paths_rendered_as_serde_path_to_error_does() {
        assert_eq!(unescape(br#"a\"b\\c\/\n"#), "a\"b\\c/\n");
        assert_eq!(
            unescape(br#"\u00e9\ud83d\ude00\ud800x\u12"#),
            "é😀\u{fffd}x"
        );
        assert_eq!(
            render(&[
                Seg::Index(0),
                Seg::Key("a".into()),
                Seg::Index(2),
                Seg::Index(3),
                Seg::Key("b".into())
            ]),
            "[0].a[2][3].b"
        );
        let text = br#"{"a\"b": {"c\u00e9": [1, "x"]}}"#;
        let e = serde_json::from_slice::<
            std::collections::HashMap<String, std::collections::HashMap<String, Vec<u8>>>,
        >(text)
        .expect_err("x");
        assert_eq!(error_path(text, &e), "a\"b.cé[1]");
    }

    #[test]
    fn any_bytes_and_any_position_give_a_path() {
        let texts: [&[u8]; 9] = [
            b"",
            b"\\",
            b"\"\\u",
            b"{\"a\\",
            b"]]}}{[,,::\"",
            b"{\"a\":[{\"b\":\xff\xfe\"\xc3\"}]}",
            b"\n\n\n{\"x\":\n[1,\n2]\n}\n",
            b"[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]",
            b"{\"\":{\"\":[\"\\ud800\\u\",tru,-,1e,{]}}",
        ];
        let causes = [
            Cause::Syntax,
            Cause::Token,
            Cause::Eof,
            Cause::Trailing,
            Cause::Incomplete,
            Cause::UnexpectedContainer,
            Cause::Data,
        ];
        for text in texts {
            for line in 0..=text.len() + 2 {
                for column in (0..=text.len() + 2).chain([usize::MAX]) {
                    for cause in causes {
                        // An empty key renders as an empty path, as in
                        // serde_path_to_error: only the absence of a panic is checked.
                        std::hint::black_box(path_at(text, line, column, cause));
                    }
                }
            }
        }
    }
}
