//! YAML files of `--config-dir`, read strictly (serde_norway; unknown fields are
//! errors), every error naming the file, the line and the field. serde gives the line of
//! what it could not read; for what is refused after reading (a bad host name, a
//! placeholder UUID) [`locate`] finds the field's line in the text.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The largest file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// One step of a field's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping's key.
    Key(String),
    /// A list's index.
    Index(usize),
}

/// Parses a field path as the schema's checks write it: `config.files[0].path`.
pub fn parse_path(p: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Seg::Key(key.to_string()));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(i));
            }
        }
    }
    out
}

/// Where a line's content starts: its indentation, after any `- ` list markers, and
/// whether it carries a list marker (and at which column).
fn shape(line: &str) -> Option<(usize, Option<usize>)> {
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with('#') {
        return None;
    }
    let mut col = indent;
    let mut dash = None;
    let mut r = rest;
    while let Some(after) = r
        .strip_prefix("- ")
        .or(if r == "-" { Some("") } else { None })
    {
        dash.get_or_insert(col);
        let skipped = r.len() - after.len();
        let spaces = after.len() - after.trim_start().len();
        col += skipped + spaces;
        r = after.trim_start();
    }
    Some((col, dash))
}

/// The line (from 1) of the field at `path` in block-style YAML `text`, or of the
/// nearest enclosing field found (flow style, `{a: 1}`, is not looked into).
pub fn locate(text: &str, path: &[Seg]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Option<usize> = None;
    let mut start = 0usize;
    // The current node's own column: its children sit further right (-1: the document).
    let mut parent: isize = -1;
    let mut in_item = false;
    for seg in path {
        let mut hit = None;
        match seg {
            Seg::Key(k) => {
                let mut child_col = None;
                for (i, line) in lines.iter().enumerate().skip(start) {
                    let Some((col, dash)) = shape(line) else {
                        continue;
                    };
                    let lead = dash.unwrap_or(col) as isize;
                    let item_line = in_item && i == start;
                    if !item_line && lead <= parent {
                        break;
                    }
                    let child = *child_col.get_or_insert(col);
                    if col != child || (dash.is_some() && !item_line) {
                        continue;
                    }
                    let content = line.get(col..).unwrap_or("");
                    let key = content.trim_start_matches(['"', '\'']);
                    if key.starts_with(k.as_str())
                        && key[k.len()..]
                            .trim_start_matches(['"', '\''])
                            .starts_with(':')
                    {
                        hit = Some((i, col));
                        break;
                    }
                }
                let (i, col) = hit?;
                found = Some(i);
                parent = col as isize;
                start = i + 1;
                in_item = false;
            }
            Seg::Index(n) => {
                let mut seen = 0;
                let mut item_col = None;
                for (i, line) in lines.iter().enumerate().skip(start) {
                    let Some((col, dash)) = shape(line) else {
                        continue;
                    };
                    let lead = dash.unwrap_or(col);
                    if (lead as isize) < parent || (dash.is_none() && (col as isize) <= parent) {
                        break;
                    }
                    let Some(d) = dash else { continue };
                    if *item_col.get_or_insert(d) != d {
                        if d < item_col.unwrap_or(d) {
                            break;
                        }
                        continue;
                    }
                    if seen == *n {
                        hit = Some((i, d));
                        break;
                    }
                    seen += 1;
                }
                let (i, d) = hit?;
                found = Some(i);
                parent = d as isize;
                // The item's first key sits on the dash's own line.
                start = i;
                in_item = true;
            }
        }
    }
    found.map(|i| i + 1)
}

/// Reads `path` as `T`: unknown fields, wrong types and syntax errors name the file,
/// the line and the field.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<(T, String)> {
    let file_err = |line: Option<usize>, field: &str, reason: String| Error::File {
        file: path.to_path_buf(),
        line,
        field: field.to_string(),
        reason,
    };
    let md =
        std::fs::metadata(path).map_err(|e| file_err(None, "-", format!("cannot be read: {e}")))?;
    if md.len() > MAX_FILE_BYTES {
        return Err(file_err(
            None,
            "-",
            format!("is {} bytes, more than {MAX_FILE_BYTES}", md.len()),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_err(None, "-", format!("cannot be read as UTF-8 text: {e}")))?;
    let de = serde_norway::Deserializer::from_str(&text);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok((v, text)),
        Err(e) => {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line());
            // serde_norway says where itself; the line is ours to say once.
            let mut msg = inner.to_string();
            if let Some(i) = msg.rfind(" at line ") {
                msg.truncate(i);
            }
            let field = if field == "." { "-".to_string() } else { field };
            Err(file_err(line, &field, msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "apiVersion: plinth/v1
selector:
  mac: 52:54:00:12:34:56
config:
  hostname: node-1
  files:
  - path: /etc/a
    contents: a
  - path: /etc/b
    contents: b
  users:
    - name: app
      uid: 1000
";

    #[test]
    fn fields_are_found_by_their_path() {
        let at = |p: &str| locate(DOC, &parse_path(p));
        assert_eq!(at("selector.mac"), Some(3));
        assert_eq!(at("config.hostname"), Some(5));
        assert_eq!(at("config.files[0].path"), Some(7));
        assert_eq!(at("config.files[1].contents"), Some(10));
        assert_eq!(at("config.users[0].uid"), Some(13));
        assert_eq!(at("config.nothing"), None);
        assert_eq!(
            parse_path("config.files[1].path"),
            [
                Seg::Key("config".into()),
                Seg::Key("files".into()),
                Seg::Index(1),
                Seg::Key("path".into())
            ]
        );
    }
}
