//! What engines do to an existing container through its cgroup: `pause`, `resume`,
//! `update`, `ps` and `events`. Each checks the container's status first and leaves
//! it as it was when it refuses.

use std::io::Write;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::Cgroup;
use crate::container::status;
use crate::error::{Error, Result};
use crate::jsonpath;
use crate::state::{Root, State, Status};

fn cgroup_of(st: &State) -> Result<&Cgroup> {
    st.cgroup.as_ref().ok_or_else(|| Error::State {
        id: st.id.clone(),
        status: "without a cgroup".into(),
        msg: "it was created rootless without cgroups".into(),
    })
}

fn refuse(st: &State, s: Status, msg: &str) -> Error {
    Error::State {
        id: st.id.clone(),
        status: s.to_string(),
        msg: msg.into(),
    }
}

/// `pause ID`: freezes every process of a running container.
pub fn pause(root: &Root, id: &str) -> Result<()> {
    let st = root.load(id)?;
    let s = status(root, &st);
    if s != Status::Running {
        return Err(refuse(
            &st,
            s,
            "container not running: only a running container can be paused",
        ));
    }
    cgroup_of(&st)?.freeze()
}

/// `resume ID`: thaws a paused container.
pub fn resume(root: &Root, id: &str) -> Result<()> {
    let st = root.load(id)?;
    let s = status(root, &st);
    if s != Status::Paused {
        return Err(refuse(
            &st,
            s,
            "container not paused: only a paused container can be resumed",
        ));
    }
    cgroup_of(&st)?.thaw()
}

/// `update ID`: new resource limits, from a runtime-spec `linux.resources` JSON
/// (`--resources FILE` or `-` for stdin) merged with the single-value flags.
pub fn update(
    root: &Root,
    id: &str,
    resources_json: Option<&[u8]>,
    flags: &UpdateFlags,
) -> Result<()> {
    for (flag, given) in [
        ("--l3-cache-schema", &flags.l3_cache_schema),
        ("--mem-bw-schema", &flags.mem_bw_schema),
    ] {
        if given.is_some() {
            return Err(Error::Invalid(format!(
                "{flag}: Intel RDT (resctrl) is not supported by plinth"
            )));
        }
    }
    for (flag, given) in [
        ("--kernel-memory", &flags.kernel_memory),
        ("--kernel-memory-tcp", &flags.kernel_memory_tcp),
    ] {
        if given.is_some() {
            crate::logging::warn(&format!(
                "{flag} is ignored: kernel memory limits are not supported by the kernel \
                 (runc 1.1 ignores it too)"
            ));
        }
    }
    let st = root.load(id)?;
    let s = status(root, &st);
    if s == Status::Stopped {
        return Err(refuse(
            &st,
            s,
            "container not running: cannot update a stopped container",
        ));
    }
    let mut v = match resources_json {
        Some(text) => {
            let v: serde_json::Value = serde_json::from_slice(text)
                .map_err(|e| Error::Invalid(format!("--resources: {e}")))?;
            if !v.is_object() {
                return Err(Error::Invalid(
                    "--resources: expected a JSON object (linux.resources)".into(),
                ));
            }
            v
        }
        None => serde_json::json!({}),
    };
    flags.merge_into(&mut v)?;
    let r = resources(&v)?;
    cgroup_of(&st)?.update(&r)
}

/// The merged `--resources` JSON as `LinuxResources`; an error names the bad value's
/// path. Read back from text rather than from the Value: the text parser of
/// LinuxResources is already in the binary (config.json), and the text gives the error
/// a position to find the path from.
fn resources(v: &serde_json::Value) -> Result<LinuxResources> {
    let text = serde_json::to_vec(v).map_err(|e| Error::Invalid(format!("--resources: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::Invalid(format!(
            "--resources: {}: {}",
            jsonpath::error_path(&text, &e),
            without_position(&e)
        ))
    })
}

/// serde_json's message without its ` at line L column C`: the merged text it points
/// into is the runtime's, not the user's.
fn without_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let at = format!(" at line {} column {}", e.line(), e.column());
    match msg.strip_suffix(&at) {
        Some(m) => m.to_string(),
        None => msg,
    }
}

/// The single-value flags of `runc update`, filled by the command line's parser
/// (the binary's `cli` module); each field's doc names its flag, and the merge below
/// names it again in its errors.
#[derive(Debug, Clone, Default)]
pub struct UpdateFlags {
    /// `--blkio-weight`: block IO weight (10-1000).
    pub blkio_weight: Option<u16>,
    /// `--cpu-period`: CPU CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// `--cpu-quota`: CPU CFS quota in microseconds.
    pub cpu_quota: Option<i64>,
    /// `--cpu-share`: CPU shares (relative weight).
    pub cpu_share: Option<u64>,
    /// `--cpu-rt-period`: CPU realtime period in microseconds.
    pub cpu_rt_period: Option<u64>,
    /// `--cpu-rt-runtime`: CPU realtime runtime in microseconds.
    pub cpu_rt_runtime: Option<i64>,
    /// `--cpuset-cpus`: CPUs the container may use (e.g. 0-3,5).
    pub cpuset_cpus: Option<String>,
    /// `--cpuset-mems`: memory nodes the container may use.
    pub cpuset_mems: Option<String>,
    /// `--memory`: memory limit (bytes, or with a k/m/g suffix).
    pub memory: Option<String>,
    /// `--memory-reservation`: memory reservation (soft limit).
    pub memory_reservation: Option<String>,
    /// `--memory-swap`: memory plus swap limit.
    pub memory_swap: Option<String>,
    /// `--pids-limit`: maximum number of processes.
    pub pids_limit: Option<i64>,
    /// `--kernel-memory`: ignored, as runc 1.1 ignores it (with a warning).
    pub kernel_memory: Option<String>,
    /// `--kernel-memory-tcp`: ignored likewise.
    pub kernel_memory_tcp: Option<String>,
    /// `--l3-cache-schema`: Intel RDT, refused.
    pub l3_cache_schema: Option<String>,
    /// `--mem-bw-schema`: Intel RDT, refused.
    pub mem_bw_schema: Option<String>,
}

impl UpdateFlags {
    fn merge_into(&self, v: &mut serde_json::Value) -> Result<()> {
        let mut set = |section: &str, key: &str, val: serde_json::Value| {
            if !v[section].is_object() {
                v[section] = serde_json::json!({});
            }
            v[section][key] = val;
        };
        if let Some(w) = self.blkio_weight {
            set("blockIO", "weight", w.into());
        }
        if let Some(x) = self.cpu_period {
            set("cpu", "period", x.into());
        }
        if let Some(x) = self.cpu_quota {
            set("cpu", "quota", x.into());
        }
        if let Some(x) = self.cpu_share {
            set("cpu", "shares", x.into());
        }
        if let Some(x) = self.cpu_rt_period {
            set("cpu", "realtimePeriod", x.into());
        }
        if let Some(x) = self.cpu_rt_runtime {
            set("cpu", "realtimeRuntime", x.into());
        }
        if let Some(x) = &self.cpuset_cpus {
            set("cpu", "cpus", x.clone().into());
        }
        if let Some(x) = &self.cpuset_mems {
            set("cpu", "mems", x.clone().into());
        }
        if let Some(x) = &self.memory {
            set("memory", "limit", parse_bytes(x, "--memory")?.into());
        }
        if let Some(x) = &self.memory_reservation {
            set(
                "memory",
                "reservation",
                parse_bytes(x, "--memory-reservation")?.into(),
            );
        }
        if let Some(x) = &self.memory_swap {
            set("memory", "swap", parse_bytes(x, "--memory-swap")?.into());
        }
        if let Some(x) = self.pids_limit {
            set("pids", "limit", x.into());
        }
        Ok(())
    }
}

/// Parses a byte count as runc's flags take it: a number, `-1`, or a number with a
/// b/k/m/g/t suffix (binary units, as docker's RAMInBytes).
pub fn parse_bytes(s: &str, flag: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::Invalid(format!("{flag} {s:?}: not a byte count (e.g. 512m)")))
}

/// `ps ID`: the host pids of the container's processes.
pub fn pids(root: &Root, id: &str) -> Result<Vec<i32>> {
    let st = root.load(id)?;
    let s = status(root, &st);
    if s == Status::Stopped {
        return Err(refuse(&st, s, "container not running"));
    }
    let mut pids = match &st.cgroup {
        Some(cg) => cg.pids()?,
        None => vec![st.pid],
    };
    pids.sort_unstable();
    Ok(pids)
}

/// `events ID`: with `stats_once`, one stats event; otherwise a stats event every
/// `interval` and an `oom` event whenever the OOM killer struck, until the container
/// stops. Events are runc's JSON lines: `{"type":..,"id":..,"data":..}`.
pub fn events(
    root: &Root,
    id: &str,
    interval: Duration,
    stats_once: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let st = root.load(id)?;
    let s = status(root, &st);
    if s == Status::Stopped {
        return Err(refuse(&st, s, "container not running"));
    }
    let cg = cgroup_of(&st)?;
    let emit = |out: &mut dyn Write, typ: &str, data: serde_json::Value| -> Result<()> {
        let line = serde_json::json!({"type": typ, "id": id, "data": data});
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| Error::io("write events to", "stdout", e))
    };
    if stats_once {
        return emit(out, "stats", cg.stats()?);
    }
    let mut ooms = cg.oom_kills();
    loop {
        if status(root, &st) == Status::Stopped {
            return Ok(());
        }
        let now = cg.oom_kills();
        if now > ooms {
            emit(out, "oom", serde_json::Value::Null)?;
            ooms = now;
        }
        // A cgroup that vanished under us means the container is gone.
        match cg.stats() {
            Ok(data) => emit(out, "stats", data)?,
            Err(_) => return Ok(()),
        }
        std::thread::sleep(interval);
    }
}

/// Parses runc's `--interval` (Go durations: `5s`, `500ms`, `1m`).
pub fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || {
        Error::Invalid(format!(
            "--interval {s:?}: expected a duration like 5s or 500ms"
        ))
    };
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .ok_or_else(bad)?;
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `ps ID`: the container's pids as JSON (`--format json`), or ps(1)'s table with the
/// given options (default `-ef`) cut to the container's processes, as runc prints it.
pub fn ps(root: &Root, id: &str, format: &str, ps_args: &[String]) -> Result<String> {
    if format != "json" && format != "table" {
        return Err(Error::Invalid(format!(
            "--format: {format:?} is not table or json"
        )));
    }
    let pids = pids(root, id)?;
    if format == "json" {
        let text = serde_json::to_string(&pids).map_err(|e| Error::Invalid(e.to_string()))?;
        return Ok(text + "\n");
    }
    ps_table(&pids, ps_args)
}

/// ps(1) with `args`, keeping the header and the lines whose PID column is one of
/// `pids`.
fn ps_table(pids: &[i32], args: &[String]) -> Result<String> {
    let args: Vec<String> = if args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.to_vec()
    };
    let shown = args.join(" ");
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| Error::io("run", "ps", e))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "ps {shown}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| Error::Invalid(format!("ps {shown}: no PID column in its output")))?;
    let mut table = format!("{header}\n");
    for l in lines {
        let pid = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            table.push_str(l);
            table.push('\n');
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("512m", "--memory").ok(), Some(512 << 20));
        assert_eq!(parse_bytes("1G", "--memory").ok(), Some(1 << 30));
        assert_eq!(parse_bytes("4096", "--memory").ok(), Some(4096));
        assert_eq!(parse_bytes("-1", "--memory-swap").ok(), Some(-1));
        assert!(parse_bytes("lots", "--memory").is_err());
        assert!(parse_bytes("-5", "--memory").is_err());
    }

    #[test]
    fn intervals_are_go_durations() {
        assert_eq!(parse_interval("5s").ok(), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_interval("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert!(parse_interval("5").is_err());
        assert!(parse_interval("0s").is_err());
    }

    #[test]
    fn flags_merge_into_resources() {
        let f = UpdateFlags {
            memory: Some("64m".into()),
            pids_limit: Some(10),
            cpu_share: Some(256),
            ..Default::default()
        };
        let mut v = serde_json::json!({"cpu": {"quota": 1000}});
        f.merge_into(&mut v).expect("merge");
        let r = resources(&v).expect("resources");
        assert_eq!(r.memory().as_ref().and_then(|m| m.limit()), Some(64 << 20));
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(10));
        assert_eq!(r.cpu().as_ref().and_then(|c| c.shares()), Some(256));
        assert_eq!(r.cpu().as_ref().and_then(|c| c.quota()), Some(1000));
    }

    #[test]
    fn resources_errors_name_the_value_without_a_position() {
        let e = resources(&serde_json::json!({"cpu": {"quota": 1000}, "memory": {"limit": "x"}}))
            .expect_err("string limit");
        assert_eq!(
            e.to_string(),
            "--resources: memory.limit: invalid type: string \"x\", expected i64"
        );
        let e = resources(&serde_json::json!({"devices": [{"allow": true}, {"allow": "no"}]}))
            .expect_err("allow as a string");
        assert_eq!(
            e.to_string(),
            "--resources: devices[1].allow: invalid type: string \"no\", expected a boolean"
        );
    }
}
