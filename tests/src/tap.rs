//! A reader for the TAP output of the runtime-tools validation executables.

/// What one validation file printed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `ok` lines that are not skips.
    pub ok: usize,
    /// `ok ... # SKIP` lines.
    pub skipped: usize,
    /// The descriptions of the `not ok` lines (without the number).
    pub not_ok: Vec<String>,
    /// The plan (`1..N`), None when the file ended before printing one.
    pub plan: Option<usize>,
}

impl Report {
    /// Parses TAP text. Lines that are not test points or a plan (the YAML blocks,
    /// diagnostics, stderr mixed in) are ignored.
    pub fn parse(text: &str) -> Report {
        let mut r = Report::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("not ok ") {
                r.not_ok.push(strip_number(rest).to_string());
            } else if let Some(rest) = line.strip_prefix("ok ") {
                if rest.to_ascii_lowercase().contains("# skip") {
                    r.skipped += 1;
                } else {
                    r.ok += 1;
                }
            } else if let Some(n) = line.strip_prefix("1..") {
                if let Ok(n) = n.trim().parse() {
                    r.plan = Some(n);
                }
            }
        }
        r
    }
}

fn strip_number(rest: &str) -> &str {
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    rest.trim_start().trim_start_matches("- ").trim()
}

/// One line of the runc baseline: file, ok, not ok, skipped, plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineRow {
    /// e.g. `create.t`.
    pub file: String,
    /// ok (not skipped).
    pub ok: usize,
    /// not ok.
    pub not_ok: usize,
    /// The plan, None for NO-PLAN.
    pub plan: Option<usize>,
}

/// Parses the baseline table (`tests/baselines/runtime-tools-runc.txt`).
pub fn parse_baseline(text: &str) -> Vec<BaselineRow> {
    let mut rows = vec![];
    for line in text.lines() {
        if line.starts_with('#') || line.starts_with("TOTAL") || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let num = |s: &str, key: &str| s.strip_prefix(key).and_then(|v| v.parse().ok());
        let (Some(ok), Some(not_ok)) = (num(f[1], "ok="), num(f[2], "notok=")) else {
            continue;
        };
        rows.push(BaselineRow {
            file: f[0].to_string(),
            ok,
            not_ok,
            plan: f[4].strip_prefix("1..").and_then(|v| v.parse().ok()),
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_skips_and_plan() {
        let text = "ok 1 - a\nnot ok 2 - create MUST x\n  ---\n  {}\nok 3 # SKIP no\n1..3\n";
        let r = Report::parse(text);
        assert_eq!(r.ok, 1);
        assert_eq!(r.skipped, 1);
        assert_eq!(r.not_ok, vec!["create MUST x".to_string()]);
        assert_eq!(r.plan, Some(3));
    }

    #[test]
    fn no_plan_when_the_file_died() {
        let r = Report::parse("failed to create the container\nexit status 1\n");
        assert_eq!(r.plan, None);
        assert_eq!(r.ok + r.not_ok.len(), 0);
    }

    #[test]
    fn baseline_rows() {
        let rows = parse_baseline(
            "# c\ncreate.t   ok=4 notok=0 skip=0 1..4\nx.t ok=0 notok=0 skip=0 NO-PLAN\nTOTAL ok=4\n",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ok, 4);
        assert_eq!(rows[1].plan, None);
    }
}
