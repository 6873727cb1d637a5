//! The config's `extensions`: large node software (containerd, kubelet, the CNI plugins
//! and what they run) that is not in the image. Each is a tar archive (plain, gzip or
//! zstd) the server keeps in `--extensions-dir` under its `name`, laid out as the node's
//! root; the node fetches it from its server, checks its `sha256` and unpacks it at boot.

use serde::{Deserialize, Serialize};

/// The longest extension name.
const MAX_NAME: usize = 128;

/// One extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Extension {
    /// Its file's name in the server's `--extensions-dir`, e.g. `kubernetes-1.37.2.tar.zst`:
    /// letters, digits, `.`, `_`, `-`, not starting with `.`.
    pub name: String,
    /// The SHA-256 of the file, 64 lower-case hex digits, as `plinth-boot extension`
    /// prints it (and `sha256sum`).
    pub sha256: String,
}

/// Whether `name` can name a file of the extensions directory and nothing else.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Checks each extension's fields; an error names the first bad one.
pub fn validate(extensions: &[Extension]) -> Result<(), String> {
    for (i, e) in extensions.iter().enumerate() {
        if !valid_name(&e.name) {
            return Err(format!(
                "extensions[{i}].name: {:?} is not a file name (letters, digits, '.', '_', '-'; not starting with '.'; at most {MAX_NAME})",
                e.name
            ));
        }
        if e.sha256.len() != 64
            || !e
                .sha256
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(format!(
                "extensions[{i}].sha256: {:?} is not 64 lower-case hex digits",
                e.sha256
            ));
        }
        if extensions[..i].iter().any(|o| o.name == e.name) {
            return Err(format!(
                "extensions[{i}].name: {:?} is listed twice",
                e.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(name: &str, sha256: &str) -> Extension {
        Extension {
            name: name.into(),
            sha256: sha256.into(),
        }
    }

    #[test]
    fn names_and_digests_are_checked_by_field() {
        let d = "a".repeat(64);
        assert!(validate(&[ext("kubernetes-1.37.2.tar.zst", &d)]).is_ok());
        for (bad, field) in [
            (vec![ext("../x", &d)], "extensions[0].name"),
            (vec![ext(".hidden", &d)], "extensions[0].name"),
            (vec![ext("a/b", &d)], "extensions[0].name"),
            (vec![ext("", &d)], "extensions[0].name"),
            (vec![ext(&"x".repeat(129), &d)], "extensions[0].name"),
            (vec![ext("k", &"A".repeat(64))], "extensions[0].sha256"),
            (
                vec![ext("k", &format!("sha256:{d}"))],
                "extensions[0].sha256",
            ),
            (vec![ext("k", &d[..63])], "extensions[0].sha256"),
            (vec![ext("k", &d), ext("k", &d)], "extensions[1].name"),
        ] {
            let e = validate(&bad).expect_err(field);
            assert!(e.starts_with(field), "{e}");
        }
    }
}
