//! cgroup v2: one directory, controllers enabled down the chain, v1 values converted
//! as runc's `fs2` driver converts them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory};
use serde_json::{json, Value};

use super::{lookup, read, read_flat_keyed, read_u64, wait_until, write};
use crate::error::{Error, Result};

/// Makes the container's directory and enables `controllers` in the
/// cgroup.subtree_control of every cgroup above it, so the limit files exist in it.
/// Enabling is best effort per controller (as runc): one that cannot be enabled shows
/// up later as the missing file of the limit that needs it.
pub(super) fn make_path(mount: &Path, path: &Path, controllers: &[String]) -> Result<Vec<PathBuf>> {
    // Top-down, in every cgroup above `path` (existing or new), before its child is
    // made.
    super::make_dirs(mount, path, |dir, _| {
        if dir != path {
            enable_controllers(dir, controllers);
        }
        Ok(())
    })
}

fn enable_controllers(dir: &Path, wanted: &[String]) {
    let available = read(dir, "cgroup.controllers").unwrap_or_default();
    let enabled = read(dir, "cgroup.subtree_control").unwrap_or_default();
    for c in available.split_whitespace() {
        if wanted.iter().any(|w| w == c) && !enabled.split_whitespace().any(|e| e == c) {
            // Best effort, see make_path.
            let _ = write(dir, "cgroup.subtree_control", &format!("+{c}"));
        }
    }
}

/// cpu.weight from cpu.shares: runc's 2025 quadratic fit (opencontainers/runc#4785),
/// which maps the v1 minimum, default and maximum (2, 1024, 262144) onto v2's (1, 100,
/// 10000); 0 stays "unset".
pub(super) fn cpu_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    10f64.powf(exponent).ceil() as u64
}

/// cpu.max: "quota period", "max" for no quota; `None` when neither is set.
pub(super) fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let q = quota.unwrap_or(0);
    let p = period.unwrap_or(0);
    if q == 0 && p == 0 {
        return None;
    }
    let mut s = if q > 0 {
        q.to_string()
    } else {
        "max".to_string()
    };
    if p != 0 {
        s.push_str(&format!(" {p}"));
    }
    Some(s)
}

/// memory.swap.max from the v1 memory+swap value: v2 counts swap alone, so it is
/// swap - limit. -1 is "max", 0 unset; unlimited memory with swap unset means
/// unlimited swap (runc's ConvertMemorySwapToCgroupV2Value).
pub(super) fn swap_max(swap: i64, limit: i64) -> std::result::Result<i64, String> {
    if limit == -1 && swap == 0 {
        return Ok(-1);
    }
    if swap == -1 || swap == 0 {
        return Ok(swap);
    }
    if limit == 0 || limit == -1 {
        return Err("a swap limit needs a memory limit".into());
    }
    if limit < 0 {
        return Err(format!("invalid memory limit {limit}"));
    }
    if swap < limit {
        return Err(format!(
            "memory+swap limit {swap} is below the memory limit {limit}"
        ));
    }
    Ok(swap - limit)
}

/// -1 as "max", anything else as itself.
pub(super) fn num_or_max(v: i64) -> String {
    if v == -1 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// io.weight (1..10000) from a blkio weight (10..1000), runc's linear map.
pub(super) fn io_weight(blkio_weight: u16) -> u64 {
    if blkio_weight == 0 {
        return 0;
    }
    1 + (u64::from(blkio_weight).saturating_sub(10)) * 9999 / 990
}

pub(super) fn set_memory(dir: &Path, m: &LinuxMemory, updating: bool) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let limit = m.limit().unwrap_or(0);
    let swap = swap_max(m.swap().unwrap_or(0), limit)
        .map_err(|e| Error::config("linux.resources.memory.swap", e))?;
    if updating && m.check_before_update() == Some(true) && limit > 0 {
        let usage = read_u64(dir, "memory.current")?;
        if (limit as u64) < usage {
            return Err(Error::cgroup(
                dir.join("memory.max"),
                format!("write \"{limit}\": below the current usage {usage} (checkBeforeUpdate)"),
            ));
        }
    }
    // Swap first: lowering memory.max could otherwise push pages into a swap limit
    // that is about to change anyway (runc's order).
    if swap != 0 {
        if dir.join("memory.swap.max").exists() {
            write(dir, "memory.swap.max", &num_or_max(swap))?;
        } else if swap != -1 {
            return Err(Error::cgroup(
                dir.join("memory.swap.max"),
                format!("write \"{swap}\": swap accounting is off in this kernel"),
            ));
        }
    }
    if limit != 0 {
        write(dir, "memory.max", &num_or_max(limit))?;
    }
    if let Some(r) = m.reservation().filter(|r| *r != 0) {
        write(dir, "memory.low", &num_or_max(r))?;
    }
    if m.swappiness().is_some() {
        warnings.push("memory.swappiness has no cgroup v2 equivalent: ignored".into());
    }
    if m.disable_oom_killer() == Some(true) {
        warnings.push("disableOOMKiller has no cgroup v2 equivalent: ignored".into());
    }
    Ok(warnings)
}

pub(super) fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if c.realtime_period().is_some_and(|v| v != 0) || c.realtime_runtime().is_some_and(|v| v != 0) {
        return Err(Error::config(
            "linux.resources.cpu.realtimeRuntime",
            "realtime CPU limits do not exist in cgroup v2",
        ));
    }
    // The kernel refuses cpu.weight for an idle cgroup, so idle goes first and
    // weight is skipped when idle is on.
    if let Some(i) = c.idle() {
        write(dir, "cpu.idle", &i.to_string())?;
    }
    if c.idle() != Some(1) {
        let w = cpu_weight(c.shares().unwrap_or(0));
        if w != 0 {
            write(dir, "cpu.weight", &w.to_string())?;
        }
    }
    if let Some(v) = cpu_max(c.quota(), c.period()) {
        write(dir, "cpu.max", &v)?;
    }
    if let Some(b) = c.burst() {
        write(dir, "cpu.max.burst", &b.to_string())?;
    }
    Ok(())
}

/// io.*: BFQ's weight files when present, else io.weight converted; throttles to
/// io.max, 0 meaning no limit ("max").
pub(super) fn set_io(dir: &Path, b: &LinuxBlockIo) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let bfq = dir.join("io.bfq.weight").exists();
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        if bfq {
            write(dir, "io.bfq.weight", &w.to_string())?;
        } else {
            write(dir, "io.weight", &io_weight(w).to_string())?;
        }
    }
    if b.leaf_weight().is_some() {
        warnings.push("blockIO.leafWeight has no cgroup v2 equivalent: ignored".into());
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            let (file, v) = if bfq {
                ("io.bfq.weight", u64::from(w))
            } else {
                ("io.weight", io_weight(w))
            };
            write(dir, file, &format!("{}:{} {v}", wd.major(), wd.minor()))?;
        }
    }
    for (key, list) in [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ] {
        for t in list.iter().flatten() {
            let rate = if t.rate() == 0 {
                "max".to_string()
            } else {
                t.rate().to_string()
            };
            write(
                dir,
                "io.max",
                &format!("{}:{} {key}={rate}", t.major(), t.minor()),
            )?;
        }
    }
    Ok(warnings)
}

/// hugetlb.<size>.max, and the reservation limit too where the kernel has it (as
/// runc 1.2), so reserved-but-unfaulted pages count.
pub(super) fn set_hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<()> {
    for h in limits {
        let v = num_or_max(h.limit());
        write(dir, &format!("hugetlb.{}.max", h.page_size()), &v)?;
        let rsvd = format!("hugetlb.{}.rsvd.max", h.page_size());
        if dir.join(&rsvd).exists() {
            write(dir, &rsvd, &v)?;
        }
    }
    Ok(())
}

/// A `linux.resources.unified` key must be a plain file name of an available
/// controller's (or the core "cgroup.") interface: no path separators, so it cannot
/// reach out of the container's directory.
pub(super) fn check_unified_key(
    key: &str,
    controllers: &[String],
) -> std::result::Result<(), String> {
    if key.is_empty() || key == "." || key == ".." || key.contains('/') || key.contains('\0') {
        return Err("is not a cgroup file name".into());
    }
    let Some((ctl, _)) = key.split_once('.') else {
        return Err("is not a cgroup interface file (<controller>.<knob>)".into());
    };
    if ctl == "cgroup" {
        if matches!(
            key,
            "cgroup.procs" | "cgroup.threads" | "cgroup.subtree_control"
        ) {
            return Err("is managed by the runtime".into());
        }
        return Ok(());
    }
    if !controllers.iter().any(|c| c == ctl) {
        return Err(format!(
            "the {ctl} controller is not available in the unified hierarchy (available: {})",
            controllers.join(" ")
        ));
    }
    Ok(())
}

/// cgroup.freeze, then wait for cgroup.events to say the cgroup got there.
pub(super) fn freeze(dir: &Path, frozen: bool, timeout: Duration) -> Result<()> {
    let want = if frozen { "1" } else { "0" };
    write(dir, "cgroup.freeze", want)?;
    let ok = wait_until(timeout, || Ok(events_frozen(dir)? == frozen))?;
    if ok {
        return Ok(());
    }
    if frozen {
        let _ = write(dir, "cgroup.freeze", "0");
    }
    Err(Error::cgroup(
        dir.join("cgroup.freeze"),
        format!("write {want:?}: cgroup.events does not say frozen {want} after {timeout:?}"),
    ))
}

fn events_frozen(dir: &Path) -> Result<bool> {
    Ok(read(dir, "cgroup.events")?
        .lines()
        .any(|l| l.trim() == "frozen 1"))
}

pub(super) fn is_frozen(dir: &Path) -> Result<bool> {
    events_frozen(dir)
}

pub(super) fn cpu_stats(dir: &Path) -> Result<Value> {
    let st = read_flat_keyed(dir, "cpu.stat")?;
    Ok(json!({
        "usage": {
            "total": lookup(&st, "usage_usec") * 1000,
            "user": lookup(&st, "user_usec") * 1000,
            "kernel": lookup(&st, "system_usec") * 1000,
        },
        "throttling": {
            "periods": lookup(&st, "nr_periods"),
            "throttledPeriods": lookup(&st, "nr_throttled"),
            "throttledTime": lookup(&st, "throttled_usec") * 1000,
        },
    }))
}

fn opt_u64(dir: &Path, f: &str) -> Result<u64> {
    if dir.join(f).exists() {
        read_u64(dir, f)
    } else {
        Ok(0)
    }
}

pub(super) fn memory_stats(dir: &Path) -> Result<Value> {
    let raw = read_flat_keyed(dir, "memory.stat")?;
    let raw_map: serde_json::Map<String, Value> =
        raw.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let events = if dir.join("memory.events").exists() {
        read_flat_keyed(dir, "memory.events")?
    } else {
        Vec::new()
    };
    Ok(json!({
        "cache": lookup(&raw, "file"),
        "usage": {
            "usage": read_u64(dir, "memory.current")?,
            "max": opt_u64(dir, "memory.peak")?,
            "limit": read_u64(dir, "memory.max")?,
            "failcnt": lookup(&events, "max"),
        },
        "swap": {
            "usage": opt_u64(dir, "memory.swap.current")?,
            "max": opt_u64(dir, "memory.swap.peak")?,
            "limit": opt_u64(dir, "memory.swap.max")?,
        },
        "raw": raw_map,
    }))
}

/// io.stat ("8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...") in runc's blkio shape.
pub(super) fn parse_io_stat(text: &str) -> (Vec<Value>, Vec<Value>) {
    let mut bytes = Vec::new();
    let mut ios = Vec::new();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let Some((maj, min)) = f.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else {
                continue;
            };
            let (list, op) = match k {
                "rbytes" => (&mut bytes, "Read"),
                "wbytes" => (&mut bytes, "Write"),
                "rios" => (&mut ios, "Read"),
                "wios" => (&mut ios, "Write"),
                _ => continue,
            };
            list.push(json!({ "major": maj, "minor": min, "op": op, "value": v }));
        }
    }
    (bytes, ios)
}

pub(super) fn io_stats(dir: &Path) -> Result<Value> {
    let (bytes, ios) = parse_io_stat(&read(dir, "io.stat")?);
    Ok(json!({ "ioServiceBytesRecursive": bytes, "ioServicedRecursive": ios }))
}

pub(super) fn hugetlb_stats(dir: &Path, sizes: &[String]) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for s in sizes {
        let events = read_flat_keyed(dir, &format!("hugetlb.{s}.events"))?;
        out.insert(
            s.clone(),
            json!({
                "usage": read_u64(dir, &format!("hugetlb.{s}.current"))?,
                "max": opt_u64(dir, &format!("hugetlb.{s}.peak"))?,
                "failcnt": lookup(&events, "max"),
            }),
        );
    }
    Ok(Value::Object(out))
}
