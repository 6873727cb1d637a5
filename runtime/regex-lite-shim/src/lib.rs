//! `regex` for this workspace, answered by `regex-lite`: see Cargo.toml for why.
//! Every item regex-lite has, under the names oci-spec uses (`Regex`,
//! `RegexBuilder`).

pub use regex_lite::*;

#[cfg(test)]
mod tests {
    use super::Regex;

    /// oci-spec's execCPUAffinity pattern accepts and refuses what the full regex
    /// crate does for ASCII, and refuses non-ASCII digits (which Unicode `\d` took).
    #[test]
    fn the_cpu_affinity_pattern_behaves_as_in_oci_spec() {
        let re = Regex::new(r"^(\d+(-\d+)?)(,\d+(-\d+)?)*$").expect("pattern compiles");
        for ok in ["0", "0-3", "1,3", "0-1,4-7,9", "12"] {
            assert!(re.is_match(ok), "{ok} should match");
        }
        for bad in ["", "a", "1-", "-1", "1,,2", "1 2", "1-2-3", "0,", "٣"] {
            assert!(!re.is_match(bad), "{bad:?} should not match");
        }
    }
}
