//! cgroup v1: one directory per hierarchy, one file per knob (runc's `fs` driver).

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory};
use serde_json::{json, Value};

use super::{lookup, read, read_flat_keyed, read_u64, wait_until, write, DeviceRule};
use crate::error::{Error, Result};

/// Makes the container's directory; in the cpuset hierarchy a new cgroup starts with
/// empty cpuset.cpus/mems and refuses processes, so each new one gets its parent's.
pub(super) fn make_path(mount: &Path, path: &Path, cpuset: bool) -> Result<Vec<PathBuf>> {
    super::make_dirs(mount, path, |dir, new| {
        if cpuset && new {
            copy_cpuset_from_parent(dir)
        } else {
            Ok(())
        }
    })
}

fn copy_cpuset_from_parent(dir: &Path) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if read(dir, f)?.is_empty() {
            let v = read(parent, f)?;
            write(dir, f, &v)?;
        }
    }
    Ok(())
}

/// memory.*; the limit and memsw are written in the order the kernel accepts (memsw
/// must stay >= limit at every step).
pub(super) fn set_memory(dir: &Path, m: &LinuxMemory, updating: bool) -> Result<()> {
    let mut limit = m.limit().unwrap_or(0);
    let mut swap = m.swap().unwrap_or(0);
    if updating && m.check_before_update() == Some(true) && limit > 0 {
        let usage = read_u64(dir, "memory.usage_in_bytes")?;
        if (limit as u64) < usage {
            return Err(Error::cgroup(
                dir.join("memory.limit_in_bytes"),
                format!("write \"{limit}\": below the current usage {usage} (checkBeforeUpdate)"),
            ));
        }
    }
    // As runc: unlimited memory with swap unset means unlimited swap too.
    if limit == -1 && swap == 0 {
        swap = -1;
    }
    let has_memsw = dir.join("memory.memsw.limit_in_bytes").exists();
    if swap != 0 && !has_memsw {
        if swap == -1 {
            swap = 0;
        } else {
            return Err(Error::cgroup(
                dir.join("memory.memsw.limit_in_bytes"),
                format!("write \"{swap}\": swap accounting is off in this kernel (no memsw files)"),
            ));
        }
    }
    // Still honoured by v1 kernels, unlike the general kmem limit.
    #[allow(deprecated)]
    if let Some(tcp) = m.kernel_tcp() {
        write(dir, "memory.kmem.tcp.limit_in_bytes", &tcp.to_string())?;
    }
    let set_limit = |v: i64| write(dir, "memory.limit_in_bytes", &v.to_string());
    let set_swap = |v: i64| write(dir, "memory.memsw.limit_in_bytes", &v.to_string());
    if limit != 0 && swap != 0 {
        let cur = read_u64(dir, "memory.limit_in_bytes")?;
        if swap == -1 || cur < swap as u64 {
            set_swap(swap)?;
            set_limit(limit)?;
        } else {
            set_limit(limit)?;
            set_swap(swap)?;
        }
        limit = 0;
        swap = 0;
    }
    if limit != 0 {
        set_limit(limit)?;
    }
    if swap != 0 {
        set_swap(swap)?;
    }
    if let Some(r) = m.reservation() {
        if r != 0 {
            write(dir, "memory.soft_limit_in_bytes", &r.to_string())?;
        }
    }
    if let Some(s) = m.swappiness() {
        write(dir, "memory.swappiness", &s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        write(dir, "memory.oom_control", "1")?;
    }
    if let Some(h) = m.use_hierarchy() {
        write(dir, "memory.use_hierarchy", if h { "1" } else { "0" })?;
    }
    Ok(())
}

/// cpu.*: shares (checked, since the kernel clamps silently), CFS period then quota
/// then burst, RT period then runtime, idle.
pub(super) fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<()> {
    if let Some(s) = c.shares().filter(|s| *s != 0) {
        write(dir, "cpu.shares", &s.to_string())?;
        let got = read_u64(dir, "cpu.shares")?;
        if got != s {
            return Err(Error::cgroup(
                dir.join("cpu.shares"),
                format!("write \"{s}\": the kernel set {got} instead (range 2 to 262144)"),
            ));
        }
    }
    if let Some(p) = c.period().filter(|p| *p != 0) {
        write(dir, "cpu.cfs_period_us", &p.to_string())?;
    }
    if let Some(q) = c.quota().filter(|q| *q != 0) {
        write(dir, "cpu.cfs_quota_us", &q.to_string())?;
    }
    if let Some(b) = c.burst() {
        write(dir, "cpu.cfs_burst_us", &b.to_string())?;
    }
    if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
        write(dir, "cpu.rt_period_us", &p.to_string())?;
    }
    if let Some(r) = c.realtime_runtime().filter(|r| *r != 0) {
        write(dir, "cpu.rt_runtime_us", &r.to_string())?;
    }
    if let Some(i) = c.idle() {
        write(dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

/// blkio.*: the CFQ files when the kernel has them, else BFQ's (as runc).
pub(super) fn set_blkio(dir: &Path, b: &LinuxBlockIo) -> Result<()> {
    let bfq = !dir.join("blkio.weight").exists() && dir.join("blkio.bfq.weight").exists();
    let (weight, weight_device) = if bfq {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    } else {
        ("blkio.weight", "blkio.weight_device")
    };
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        write(dir, weight, &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
        write(dir, "blkio.leaf_weight", &w.to_string())?;
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            write(
                dir,
                weight_device,
                &format!("{}:{} {w}", wd.major(), wd.minor()),
            )?;
        }
        if let Some(w) = wd.leaf_weight() {
            write(
                dir,
                "blkio.leaf_weight_device",
                &format!("{}:{} {w}", wd.major(), wd.minor()),
            )?;
        }
    }
    for (file, list) in [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ] {
        for t in list.iter().flatten() {
            write(
                dir,
                file,
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
            )?;
        }
    }
    Ok(())
}

pub(super) fn set_hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<()> {
    for h in limits {
        write(
            dir,
            &format!("hugetlb.{}.limit_in_bytes", h.page_size()),
            &h.limit().to_string(),
        )?;
    }
    Ok(())
}

/// Default deny, then each rule in order.
pub(super) fn set_devices(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    write(dir, "devices.deny", "a")?;
    // The kernel reads any type-`a` deny as "deny everything, forget the exceptions",
    // whatever its numbers and access: the config's usual leading deny-all would only
    // repeat the write above.
    let first = rules
        .iter()
        .position(|r| r.allow || r.typ != 'a')
        .unwrap_or(rules.len());
    for r in &rules[first..] {
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(dir, file, &r.v1_line())?;
    }
    Ok(())
}

/// freezer.state; FREEZING can stall while a task is in an uninterruptible sleep, so
/// the request is repeated while waiting (as runc does).
pub(super) fn freeze(dir: &Path, frozen: bool, timeout: Duration) -> Result<()> {
    let want = if frozen { "FROZEN" } else { "THAWED" };
    write(dir, "freezer.state", want)?;
    let mut n = 0u32;
    let ok = wait_until(timeout, || {
        n += 1;
        if n % 20 == 0 {
            write(dir, "freezer.state", want)?;
        }
        Ok(read(dir, "freezer.state")? == want)
    })?;
    if ok {
        return Ok(());
    }
    if frozen {
        // Leave it usable rather than half frozen.
        let _ = write(dir, "freezer.state", "THAWED");
    }
    Err(Error::cgroup(
        dir.join("freezer.state"),
        format!("write {want:?}: still not {want} after {timeout:?}"),
    ))
}

/// cpuacct usage (ns) and cpu throttling, in runc's stats shape.
pub(super) fn cpu_stats(cpuacct: Option<&Path>, cpu: Option<&Path>) -> Result<Value> {
    let mut usage = json!({});
    if let Some(d) = cpuacct {
        let percpu: Vec<u64> = read(d, "cpuacct.usage_percpu")?
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let stat = read_flat_keyed(d, "cpuacct.stat")?;
        // cpuacct.stat counts USER_HZ (100) ticks; runc reports nanoseconds.
        let tick_ns = 1_000_000_000 / 100;
        usage = json!({
            "total": read_u64(d, "cpuacct.usage")?,
            "percpu": percpu,
            "kernel": lookup(&stat, "system") * tick_ns,
            "user": lookup(&stat, "user") * tick_ns,
        });
    }
    let mut throttling = json!({});
    if let Some(d) = cpu {
        let st = read_flat_keyed(d, "cpu.stat")?;
        throttling = json!({
            "periods": lookup(&st, "nr_periods"),
            "throttledPeriods": lookup(&st, "nr_throttled"),
            "throttledTime": lookup(&st, "throttled_time"),
        });
    }
    Ok(json!({ "usage": usage, "throttling": throttling }))
}

fn memory_data(dir: &Path, prefix: &str) -> Result<Value> {
    if !dir.join(format!("{prefix}.usage_in_bytes")).exists() {
        return Ok(json!({}));
    }
    Ok(json!({
        "usage": read_u64(dir, &format!("{prefix}.usage_in_bytes"))?,
        "max": read_u64(dir, &format!("{prefix}.max_usage_in_bytes"))?,
        "failcnt": read_u64(dir, &format!("{prefix}.failcnt"))?,
        "limit": read_u64(dir, &format!("{prefix}.limit_in_bytes"))?,
    }))
}

pub(super) fn memory_stats(dir: &Path) -> Result<Value> {
    let raw = read_flat_keyed(dir, "memory.stat")?;
    let raw_map: serde_json::Map<String, Value> =
        raw.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    Ok(json!({
        "cache": lookup(&raw, "total_cache"),
        "usage": memory_data(dir, "memory")?,
        "swap": memory_data(dir, "memory.memsw")?,
        "kernel": memory_data(dir, "memory.kmem")?,
        "kernelTCP": memory_data(dir, "memory.kmem.tcp")?,
        "raw": raw_map,
    }))
}

/// "8:0 Read 123" lines as runc's blkio entries; the "Total" lines are dropped.
pub(super) fn parse_blkio_entries(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [dev, op, v] = f.as_slice() else {
                return None;
            };
            let (maj, min) = dev.split_once(':')?;
            Some(json!({
                "major": maj.parse::<u64>().ok()?,
                "minor": min.parse::<u64>().ok()?,
                "op": op,
                "value": v.parse::<u64>().ok()?,
            }))
        })
        .collect()
}

pub(super) fn blkio_stats(dir: &Path) -> Result<Value> {
    let entries = |f: &str| -> Result<Vec<Value>> {
        if dir.join(f).exists() {
            Ok(parse_blkio_entries(&read(dir, f)?))
        } else {
            Ok(Vec::new())
        }
    };
    Ok(json!({
        "ioServiceBytesRecursive": entries("blkio.throttle.io_service_bytes_recursive")?,
        "ioServicedRecursive": entries("blkio.throttle.io_serviced_recursive")?,
    }))
}

pub(super) fn hugetlb_stats(dir: &Path, sizes: &[String]) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for s in sizes {
        out.insert(
            s.clone(),
            json!({
                "usage": read_u64(dir, &format!("hugetlb.{s}.usage_in_bytes"))?,
                "max": read_u64(dir, &format!("hugetlb.{s}.max_usage_in_bytes"))?,
                "failcnt": read_u64(dir, &format!("hugetlb.{s}.failcnt"))?,
            }),
        );
    }
    Ok(Value::Object(out))
}
