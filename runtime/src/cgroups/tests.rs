//! Pure tests of the conversions, path resolution and the device program, and tests
//! against this host's real hierarchies (root only: they create uniquely named
//! cgroups, and a guard removes them even when an assertion fails).

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxNetworkBuilder, LinuxResources,
    LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
};

use super::devices_bpf::{self, Insn};
use super::hierarchy::{self, Inner, Mode, Mount};
use super::*;

// ---------------------------------------------------------------- helpers

fn is_root(name: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        // CI runs as root (`.ci/run` sets CI): there, a skip would hide a failure.
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "{name}: needs root, and CI is set"
        );
        println!("SKIP {name}: needs root");
        false
    }
}

fn unique(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "plinth-test-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Kills the children and removes the cgroup however the test ends; `extra` are
/// directories a test made by hand, removed deepest first.
struct Guard {
    cg: Cgroup,
    children: Vec<Child>,
    extra: Vec<PathBuf>,
}

impl Guard {
    fn new(cg: Cgroup) -> Guard {
        Guard {
            cg,
            children: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// The cgroup at `cgroups_path` on this host, resolved (not yet created).
    fn at(cgroups_path: &str) -> Guard {
        Guard::new(Cgroup::resolve(Some(Path::new(cgroups_path)), "x").expect("resolve"))
    }

    /// A `sleep` moved into the cgroup.
    fn sleeper(&mut self) -> i32 {
        let c = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = c.id() as i32;
        self.children.push(c);
        self.cg.add_pid(pid).expect("add_pid");
        pid
    }

    /// Kills and reaps the children, so the cgroup can be removed.
    fn kill_children(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.cg.thaw();
        self.kill_children();
        let _ = self.cg.destroy();
        for p in self.extra.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

fn rd(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

fn res(json: serde_json::Value) -> LinuxResources {
    serde_json::from_value(json).expect("resources json")
}

/// The v2-only view of this host: the unified hierarchy at /sys/fs/cgroup/unified
/// treated as if it were the whole cgroup tree, so the v2 driver runs for real.
fn unified_only(path: &str) -> Option<Cgroup> {
    let mi = crate::mountinfo::read().ok()?;
    let e = mi.iter().find(|e| e.fstype == "cgroup2")?;
    let m = Mount {
        key: "unified".into(),
        subsystems: vec![],
        v2: true,
        mount_point: e.mount_point.clone(),
        root: e.root.clone(),
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    Some(
        Cgroup::resolve_in(Mode::Unified, &[m], &own, Some(Path::new(path)), "x")
            .expect("resolve unified"),
    )
}

/// Runs a shell in the cgroup that tries to open /dev/null and /dev/zero once it has
/// joined; returns what it printed.
fn try_devices(cg: &Cgroup) -> String {
    let mut c = Command::new("sh")
        .arg("-c")
        .arg(
            "read x; \
             if ( : </dev/null ); then echo null-ok; else echo null-denied; fi; \
             if ( : </dev/zero ); then echo zero-ok; else echo zero-denied; fi",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let joined = cg.add_pid(c.id() as i32);
    if let Some(mut i) = c.stdin.take() {
        let _ = i.write_all(b"go\n");
    }
    let mut out = String::new();
    if let Some(o) = c.stdout.take() {
        for l in BufReader::new(o).lines().map_while(|l| l.ok()) {
            out.push_str(&l);
            out.push(' ');
        }
    }
    let _ = c.wait();
    joined.expect("add_pid");
    out.trim().to_string()
}

// ---------------------------------------------------------------- pure: paths

const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
90 23 0:32 / /mnt/memory-again rw,relatime - cgroup cgroup rw,memory
";

const HYBRID_PROC_CGROUP: &str = "\
9:name=systemd:/user.slice/s.scope
4:memory:/process_api/abc
3:cpuset:/
2:cpu,cpuacct:/
0::/user.slice/s.scope
";

fn known() -> Vec<String> {
    hierarchy::parse_proc_cgroups(
        "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t2\t1\t1\nmemory\t4\t1\t1\n",
    )
}

fn hybrid_mounts() -> Vec<Mount> {
    let mi = crate::mountinfo::parse(HYBRID_MOUNTINFO);
    hierarchy::mounts(&mi, &known(), Mode::Hybrid)
}

#[test]
fn mounts_are_found_from_mountinfo_once_each() {
    let m = hybrid_mounts();
    let keys: Vec<&str> = m.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(
        keys,
        ["cpu,cpuacct", "cpuset", "memory", "name=systemd", "unified"]
    );
    let mem = &m[2];
    assert_eq!(mem.mount_point, Path::new("/sys/fs/cgroup/memory"));
    assert_eq!(m[0].subsystems, ["cpu", "cpuacct"]);
    // clone_children and xattr are options, not subsystems.
    assert_eq!(m[1].subsystems, ["cpuset"]);
    assert_eq!(m[3].subsystems, ["name=systemd"]);
    assert!(m[4].v2);
}

#[test]
fn pure_v2_uses_only_the_cgroup2_mount_at_sys_fs_cgroup() {
    let mi = crate::mountinfo::parse(
        "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n\
         31 23 0:27 / /run/other rw - cgroup2 cgroup2 rw\n",
    );
    assert_eq!(hierarchy::mode_from(true, &mi), Mode::Unified);
    let m = hierarchy::mounts(&mi, &[], Mode::Unified);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup"));
    let hybrid = crate::mountinfo::parse(HYBRID_MOUNTINFO);
    assert_eq!(hierarchy::mode_from(false, &hybrid), Mode::Hybrid);
    let legacy: Vec<_> = hybrid
        .into_iter()
        .filter(|e| e.fstype != "cgroup2")
        .collect();
    assert_eq!(hierarchy::mode_from(false, &legacy), Mode::Legacy);
}

fn resolved(p: Option<&str>) -> Cgroup {
    Cgroup::resolve_in(
        Mode::Hybrid,
        &hybrid_mounts(),
        HYBRID_PROC_CGROUP,
        p.map(Path::new),
        "ctr1",
    )
    .expect("resolve")
}

#[test]
fn absolute_cgroups_path_is_from_each_hierarchy_root() {
    let cg = resolved(Some("/kube/pod1/ctr"));
    assert_eq!(
        cg.path_for("memory"),
        Some(PathBuf::from("/sys/fs/cgroup/memory/kube/pod1/ctr"))
    );
    assert_eq!(
        cg.path_for("unified"),
        Some(PathBuf::from("/sys/fs/cgroup/unified/kube/pod1/ctr"))
    );
    assert_eq!(
        cg.path_for("name=systemd"),
        Some(PathBuf::from("/sys/fs/cgroup/systemd/kube/pod1/ctr"))
    );
    // A co-mounted hierarchy answers to its full key and to each subsystem.
    let want = Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kube/pod1/ctr"));
    assert_eq!(cg.path_for("cpu,cpuacct"), want);
    assert_eq!(cg.path_for("cpuacct"), want);
    assert_eq!(cg.path_for("blkio"), None);
}

#[test]
fn relative_cgroups_path_is_below_own_cgroup_v1_and_beside_it_v2() {
    let cg = resolved(Some("pod/ctr"));
    assert_eq!(
        cg.path_for("memory"),
        Some(PathBuf::from(
            "/sys/fs/cgroup/memory/process_api/abc/pod/ctr"
        ))
    );
    assert_eq!(
        cg.path_for("cpu"),
        Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/pod/ctr"))
    );
    assert_eq!(
        cg.path_for("name=systemd"),
        Some(PathBuf::from(
            "/sys/fs/cgroup/systemd/user.slice/s.scope/pod/ctr"
        ))
    );
    // v2: next to our own cgroup (s.scope), as runc's fs2 driver.
    assert_eq!(
        cg.path_for("unified"),
        Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice/pod/ctr"))
    );
}

#[test]
fn no_cgroups_path_defaults_to_the_id_relative_like_runc() {
    let cg = resolved(None);
    assert_eq!(
        cg.path_for("memory"),
        Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/ctr1"))
    );
    assert_eq!(
        cg.path_for("cpuset"),
        Some(PathBuf::from("/sys/fs/cgroup/cpuset/ctr1"))
    );
}

#[test]
fn dot_dot_cannot_climb_out_of_a_hierarchy() {
    let cg = resolved(Some("/../../etc/x"));
    assert_eq!(
        cg.path_for("memory"),
        Some(PathBuf::from("/sys/fs/cgroup/memory/etc/x"))
    );
    // Relative: cannot climb out of our own cgroup either.
    let cg = resolved(Some("../../../../x"));
    assert_eq!(
        cg.path_for("memory"),
        Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/x"))
    );
    for bad in ["/", "..", "/a/.."] {
        let e = Cgroup::resolve_in(
            Mode::Hybrid,
            &hybrid_mounts(),
            HYBRID_PROC_CGROUP,
            Some(Path::new(bad)),
            "c",
        )
        .expect_err(bad)
        .to_string();
        assert!(e.contains("linux.cgroupsPath"), "{bad}: {e}");
    }
}

#[test]
fn mount_root_is_stripped_from_own_cgroup() {
    // Inside a cgroup namespace or a bind of a sub-cgroup the mount shows /a/b.
    let m = Mount {
        key: "memory".into(),
        subsystems: vec!["memory".into()],
        v2: false,
        mount_point: "/sys/fs/cgroup/memory".into(),
        root: "/a/b".into(),
    };
    let own = hierarchy::parse_proc_cgroup("4:memory:/a/b/c\n");
    let p = hierarchy::target_dir(&m, &own, &Inner::Relative(vec!["x".into()])).expect("dir");
    assert_eq!(p, Path::new("/sys/fs/cgroup/memory/c/x"));
    let own = hierarchy::parse_proc_cgroup("4:memory:/elsewhere\n");
    assert!(hierarchy::target_dir(&m, &own, &Inner::Relative(vec!["x".into()])).is_err());
}

#[test]
fn cgroup_round_trips_through_state_json() {
    let cg = resolved(Some("/a/b"));
    let v = serde_json::to_value(&cg).expect("serialize");
    let back: Cgroup = serde_json::from_value(v).expect("deserialize");
    assert_eq!(back.path_for("memory"), cg.path_for("memory"));
    assert_eq!(back.mode, Mode::Hybrid);
}

// ---------------------------------------------------------------- pure: conversions

#[test]
fn cpu_weight_matches_runcs_quadratic_fit() {
    assert_eq!(v2::cpu_weight(0), 0);
    assert_eq!(v2::cpu_weight(1), 1);
    assert_eq!(v2::cpu_weight(2), 1);
    assert_eq!(v2::cpu_weight(1024), 100);
    assert_eq!(v2::cpu_weight(262_144), 10_000);
    assert_eq!(v2::cpu_weight(1 << 30), 10_000);
    // Values of the formula, computed independently.
    assert_eq!(v2::cpu_weight(100), 17);
    assert_eq!(v2::cpu_weight(512), 59);
    assert_eq!(v2::cpu_weight(2048), 174);
    let mut last = 0;
    for s in (2..262_144).step_by(997) {
        let w = v2::cpu_weight(s);
        assert!(w >= last && (1..=10_000).contains(&w), "{s} -> {w}");
        last = w;
    }
}

#[test]
fn swap_conversion_is_runcs() {
    assert_eq!(v2::swap_max(0, -1), Ok(-1));
    assert_eq!(v2::swap_max(-1, 100), Ok(-1));
    assert_eq!(v2::swap_max(0, 100), Ok(0));
    assert_eq!(v2::swap_max(300, 100), Ok(200));
    assert_eq!(v2::swap_max(100, 100), Ok(0));
    assert!(v2::swap_max(50, 100).is_err());
    assert!(v2::swap_max(100, 0).is_err());
    assert!(v2::swap_max(100, -1).is_err());
}

#[test]
fn cpu_max_pids_max_io_weight() {
    assert_eq!(v2::cpu_max(None, None), None);
    assert_eq!(v2::cpu_max(Some(0), Some(0)), None);
    assert_eq!(
        v2::cpu_max(Some(50_000), Some(100_000)).as_deref(),
        Some("50000 100000")
    );
    assert_eq!(
        v2::cpu_max(Some(-1), Some(100_000)).as_deref(),
        Some("max 100000")
    );
    assert_eq!(
        v2::cpu_max(None, Some(20_000)).as_deref(),
        Some("max 20000")
    );
    assert_eq!(v2::cpu_max(Some(5000), None).as_deref(), Some("5000"));
    assert_eq!(pids_max(-1), "max");
    assert_eq!(pids_max(0), "max");
    assert_eq!(pids_max(7), "7");
    assert_eq!(v2::io_weight(10), 1);
    assert_eq!(v2::io_weight(1000), 10_000);
    assert_eq!(v2::io_weight(500), 1 + 490 * 9999 / 990);
    assert_eq!(v2::num_or_max(-1), "max");
    assert_eq!(v2::num_or_max(4096), "4096");
    assert_eq!(hierarchy::hugepage_name(2048), "2MB");
    assert_eq!(hierarchy::hugepage_name(1_048_576), "1GB");
    assert_eq!(hierarchy::hugepage_name(64), "64KB");
}

#[test]
fn unified_keys_cannot_leave_the_cgroup() {
    let ctl = vec!["memory".to_string(), "hugetlb".to_string()];
    for bad in [
        "",
        ".",
        "..",
        "../memory.max",
        "a/b",
        "memory.max/x",
        "nodot",
    ] {
        assert!(
            v2::check_unified_key(bad, &ctl).is_err(),
            "{bad:?} accepted"
        );
    }
    assert!(v2::check_unified_key("cgroup.procs", &ctl).is_err());
    assert!(
        v2::check_unified_key("cpu.max", &ctl).is_err(),
        "cpu not available"
    );
    assert!(v2::check_unified_key("memory.high", &ctl).is_ok());
    assert!(v2::check_unified_key("cgroup.max.depth", &ctl).is_ok());
}

#[test]
fn invalid_values_name_their_field() {
    let cases = [
        (
            serde_json::json!({"memory": {"limit": 200, "swap": 100}}),
            "linux.resources.memory.swap",
        ),
        (
            serde_json::json!({"memory": {"limit": -5}}),
            "linux.resources.memory.limit",
        ),
        (
            serde_json::json!({"memory": {"swappiness": 101}}),
            "linux.resources.memory.swappiness",
        ),
        (
            serde_json::json!({"cpu": {"idle": 3}}),
            "linux.resources.cpu.idle",
        ),
        (
            serde_json::json!({"blockIO": {"weight": 5}}),
            "linux.resources.blockIO.weight",
        ),
        (
            serde_json::json!({"devices": [{"allow": true, "access": "rwx"}]}),
            "linux.resources.devices[0]",
        ),
    ];
    for (j, field) in cases {
        let e = validate_values(&res(j.clone()))
            .expect_err(&j.to_string())
            .to_string();
        assert!(e.contains(field), "{j}: {e}");
    }
    assert!(validate_values(&res(
        serde_json::json!({"memory": {"limit": 200, "swap": 300}})
    ))
    .is_ok());
}

#[test]
fn network_without_net_cls_is_a_clear_error() {
    let cg = resolved(Some("/x"));
    let r = LinuxResourcesBuilder::default()
        .network(
            LinuxNetworkBuilder::default()
                .class_id(7u32)
                .build()
                .expect("net"),
        )
        .build()
        .expect("res");
    let e = cg.validate(&r).expect_err("no net_cls here").to_string();
    assert!(
        e.contains("linux.resources.network.classID") && e.contains("net_cls"),
        "{e}"
    );
}

#[test]
fn device_rules_from_the_config() {
    let d = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::U)
        .major(1i64)
        .minor(3i64)
        .build()
        .expect("rule");
    let r = DeviceRule::from_oci(&d, 0).expect("ok").expect("some");
    assert_eq!(r.typ, 'c');
    assert_eq!(r.access, "rwm");
    assert_eq!(r.v1_line(), "c 1:3 rwm");
    let fifo = LinuxDeviceCgroupBuilder::default()
        .typ(LinuxDeviceType::P)
        .build()
        .expect("rule");
    assert_eq!(DeviceRule::from_oci(&fifo, 0).expect("ok"), None);
    let any = DeviceRule {
        allow: false,
        typ: 'b',
        major: Some(8),
        minor: Some(-1),
        access: "w".into(),
    };
    assert_eq!(any.v1_line(), "b 8:* w");
}

// ---------------------------------------------------------------- pure: BPF program

/// Runs a device program on one access, interpreting the instructions compile emits.
fn run_prog(p: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> u64 {
    let ctx = [(access << 16) | typ, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 10_000, "runaway program");
        let i = p.get(pc).copied().expect("pc past the end");
        let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
        let imm = i.imm as i64 as u64;
        pc += 1;
        match i.code {
            0x61 => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = u64::from(ctx[(i.off / 4) as usize]);
            }
            0x54 => r[dst] = u64::from((r[dst] as u32) & (i.imm as u32)),
            0x74 => r[dst] = u64::from((r[dst] as u32) >> i.imm),
            0xb7 => r[dst] = imm,
            0xbf => r[dst] = r[src],
            0x57 => r[dst] &= imm,
            0x55 | 0x5d => {
                let other = if i.code == 0x55 { imm } else { r[src] };
                if r[dst] != other {
                    pc = (pc as i64 + i64::from(i.off)) as usize;
                }
            }
            0x95 => return r[0],
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

/// The reference semantics: the last matching rule decides, nothing matching denies.
fn reference(rules: &[DeviceRule], typ: char, access: char, major: i64, minor: i64) -> bool {
    let mut verdict = false;
    for r in rules {
        let t = r.typ == 'a' || r.typ == typ;
        let a = r.access.contains(access);
        let ma = r.major.is_none_or(|m| m < 0 || m == major);
        let mi = r.minor.is_none_or(|m| m < 0 || m == minor);
        if t && a && ma && mi {
            verdict = r.allow;
        }
    }
    verdict
}

fn rule(
    allow: bool,
    typ: char,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> DeviceRule {
    DeviceRule {
        allow,
        typ,
        major,
        minor,
        access: access.into(),
    }
}

#[test]
fn device_program_agrees_with_last_match_wins() {
    let sets = vec![
        vec![],
        vec![rule(false, 'a', None, None, "rwm")],
        vec![
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), Some(5), "rwm"),
            rule(true, 'c', Some(1), Some(3), "rw"),
            rule(true, 'c', Some(136), None, "rwm"),
            rule(true, 'b', Some(8), Some(0), "r"),
        ],
        vec![
            rule(true, 'a', None, None, "rwm"),
            rule(false, 'c', Some(1), Some(3), "rwm"),
            rule(false, 'b', None, None, "w"),
        ],
        vec![
            rule(true, 'c', Some(1), None, "m"),
            rule(false, 'c', Some(1), Some(5), "rwm"),
            rule(true, 'a', None, None, "r"),
        ],
    ];
    let mut checked = 0;
    for rules in &sets {
        let p = devices_bpf::compile(rules).expect("compile");
        assert_eq!(p.last().map(|i| i.code), Some(0x95), "ends in exit");
        for typ in ['c', 'b'] {
            for (acc_c, acc_bit) in [('m', 1u32), ('r', 2), ('w', 4)] {
                for major in [1i64, 8, 136] {
                    for minor in [0i64, 3, 5] {
                        let t = if typ == 'c' { 2 } else { 1 };
                        let got = run_prog(&p, t, acc_bit, major as u32, minor as u32) == 1;
                        let want = reference(rules, typ, acc_c, major, minor);
                        assert_eq!(got, want, "{rules:?}: {typ} {major}:{minor} {acc_c}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 5 * 2 * 3 * 3 * 3);
}

#[test]
fn device_program_stops_after_an_unconditional_rule() {
    // Anything after it would be unreachable, which the verifier rejects.
    let p = devices_bpf::compile(&[
        rule(false, 'c', Some(1), Some(3), "rwm"),
        rule(true, 'a', None, None, "rwm"),
    ])
    .expect("compile");
    assert_eq!(p.len(), 6 + 2, "prologue plus one verdict");
    assert_eq!(p[6].imm, 1);
}

// ---------------------------------------------------------------- v2 writers on a fake dir

/// A directory with empty "control files", for checking what the v2 writers write.
struct FakeDir(PathBuf);
impl FakeDir {
    fn new(files: &[&str]) -> FakeDir {
        let d = std::env::temp_dir().join(unique("fake"));
        std::fs::create_dir_all(&d).expect("mkdir");
        for f in files {
            std::fs::write(d.join(f), "").expect("touch");
        }
        FakeDir(d)
    }
}
impl Drop for FakeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn v2_writers_convert_as_runc() {
    let f = FakeDir::new(&[
        "memory.max",
        "memory.swap.max",
        "memory.low",
        "cpu.weight",
        "cpu.max",
        "cpu.max.burst",
        "cpu.idle",
        "pids.max",
        "io.weight",
        "io.max",
        "hugetlb.2MB.max",
        "hugetlb.2MB.rsvd.max",
    ]);
    let d = &f.0;
    let m = LinuxMemoryBuilder::default()
        .limit(100i64)
        .swap(300i64)
        .reservation(50i64)
        .swappiness(10u64)
        .build()
        .expect("mem");
    let w = v2::set_memory(d, &m, false).expect("memory");
    assert_eq!(rd(&d.join("memory.max")), "100");
    assert_eq!(rd(&d.join("memory.swap.max")), "200");
    assert_eq!(rd(&d.join("memory.low")), "50");
    assert_eq!(w.len(), 1, "swappiness warned: {w:?}");
    let unlimited = LinuxMemoryBuilder::default()
        .limit(-1i64)
        .build()
        .expect("mem");
    v2::set_memory(d, &unlimited, false).expect("memory");
    assert_eq!(rd(&d.join("memory.max")), "max");
    assert_eq!(rd(&d.join("memory.swap.max")), "max");

    let c = LinuxCpuBuilder::default()
        .shares(512u64)
        .quota(50_000i64)
        .period(100_000u64)
        .burst(1000u64)
        .build()
        .expect("cpu");
    v2::set_cpu(d, &c).expect("cpu");
    assert_eq!(rd(&d.join("cpu.weight")), "59");
    assert_eq!(rd(&d.join("cpu.max")), "50000 100000");
    assert_eq!(rd(&d.join("cpu.max.burst")), "1000");
    let rt = LinuxCpuBuilder::default()
        .realtime_runtime(10i64)
        .build()
        .expect("cpu");
    assert!(v2::set_cpu(d, &rt)
        .expect_err("rt")
        .to_string()
        .contains("realtimeRuntime"));

    set_pids(d, -1).expect("pids");
    assert_eq!(rd(&d.join("pids.max")), "max");
    set_pids(d, 12).expect("pids");
    assert_eq!(rd(&d.join("pids.max")), "12");

    let b = LinuxBlockIoBuilder::default()
        .weight(1000u16)
        .throttle_read_bps_device(vec![LinuxThrottleDeviceBuilder::default()
            .major(8i64)
            .minor(0i64)
            .rate(1_048_576u64)
            .build()
            .expect("td")])
        .build()
        .expect("blkio");
    v2::set_io(d, &b).expect("io");
    assert_eq!(rd(&d.join("io.weight")), "10000");
    assert_eq!(rd(&d.join("io.max")), "8:0 rbps=1048576");

    let h = vec![LinuxHugepageLimitBuilder::default()
        .page_size("2MB")
        .limit(4_194_304i64)
        .build()
        .expect("h")];
    v2::set_hugetlb(d, &h).expect("hugetlb");
    assert_eq!(rd(&d.join("hugetlb.2MB.max")), "4194304");
    assert_eq!(rd(&d.join("hugetlb.2MB.rsvd.max")), "4194304");
}

#[test]
fn check_before_update_refuses_a_limit_below_usage() {
    let f = FakeDir::new(&["memory.max", "memory.limit_in_bytes"]);
    std::fs::write(f.0.join("memory.current"), "5000\n").expect("write");
    std::fs::write(f.0.join("memory.usage_in_bytes"), "5000\n").expect("write");
    let m = LinuxMemoryBuilder::default()
        .limit(4000i64)
        .check_before_update(true)
        .build()
        .expect("mem");
    let e = v2::set_memory(&f.0, &m, true).expect_err("v2").to_string();
    assert!(e.contains("memory.max") && e.contains("5000"), "{e}");
    let e = v1::set_memory(&f.0, &m, true).expect_err("v1").to_string();
    assert!(
        e.contains("memory.limit_in_bytes") && e.contains("5000"),
        "{e}"
    );
    assert_eq!(rd(&f.0.join("memory.max")), "", "nothing written");
    // Not updating (create): no check.
    v2::set_memory(&f.0, &m, false).expect("create");
    assert_eq!(rd(&f.0.join("memory.max")), "4000");
}

#[test]
fn stats_parsers() {
    let (bytes, ios) = v2::parse_io_stat("8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0\n");
    assert_eq!(bytes.len(), 2);
    assert_eq!(bytes[1]["op"], "Write");
    assert_eq!(bytes[1]["value"], 20);
    assert_eq!(ios[0]["value"], 1);
    let e = v1::parse_blkio_entries("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n");
    assert_eq!(e.len(), 2);
    assert_eq!(e[0]["major"], 8);
    assert_eq!(e[0]["value"], 4096);
}

// ---------------------------------------------------------------- real: this host's v1 (+ unified)

#[test]
fn v1_lifecycle_limits_pids_freeze_update_destroy() {
    if !is_root("v1_lifecycle_limits_pids_freeze_update_destroy") {
        return;
    }
    let top = unique("life");
    let mut g = Guard::at(&format!("/{top}/c"));
    let mib = 1i64 << 20;
    let mut r = serde_json::json!({
        "memory": {"limit": 64 * mib, "swap": 128 * mib, "reservation": 32 * mib, "swappiness": 10},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 42},
    });
    let sizes = hierarchy::hugepage_sizes();
    if sizes.iter().any(|s| s == "2MB") {
        r["hugepageLimits"] = serde_json::json!([{"pageSize": "2MB", "limit": 4 * mib}]);
    }
    g.cg.create(Some(&res(r)), &[]).expect("create");
    let mem = g.cg.path_for("memory").expect("memory dir");
    assert_eq!(mem, Path::new("/sys/fs/cgroup/memory").join(&top).join("c"));
    assert_eq!(
        rd(&mem.join("memory.limit_in_bytes")),
        (64 * mib).to_string()
    );
    assert_eq!(
        rd(&mem.join("memory.memsw.limit_in_bytes")),
        (128 * mib).to_string()
    );
    assert_eq!(
        rd(&mem.join("memory.soft_limit_in_bytes")),
        (32 * mib).to_string()
    );
    assert_eq!(rd(&mem.join("memory.swappiness")), "10");
    let cpu = g.cg.path_for("cpu").expect("cpu dir");
    assert_eq!(rd(&cpu.join("cpu.shares")), "512");
    assert_eq!(rd(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(rd(&cpu.join("cpu.cfs_period_us")), "100000");
    let cpuset = g.cg.path_for("cpuset").expect("cpuset dir");
    assert_eq!(rd(&cpuset.join("cpuset.cpus")), "0");
    // The new parent got the root's cpus/mems so the chain can hold processes.
    let cpuset_parent = cpuset.parent().expect("parent");
    assert_eq!(
        rd(&cpuset_parent.join("cpuset.mems")),
        rd(Path::new("/sys/fs/cgroup/cpuset/cpuset.mems"))
    );
    let pids = g.cg.path_for("pids").expect("pids dir");
    assert_eq!(rd(&pids.join("pids.max")), "42");
    let uni = g.cg.path_for("unified");
    if sizes.iter().any(|s| s == "2MB") {
        let u = uni.clone().expect("unified dir");
        assert_eq!(rd(&u.join("hugetlb.2MB.max")), (4 * mib).to_string());
    }
    // Every hierarchy's directory and its new parent were recorded.
    for d in &g.cg.dirs {
        assert_eq!(d.created.len(), 2, "{}: {:?}", d.key, d.created);
        assert!(d.path.is_dir(), "{}", d.path.display());
    }

    let pid = g.sleeper();
    assert_eq!(g.cg.pids().expect("pids"), vec![pid]);
    let proc_cg = rd(Path::new(&format!("/proc/{pid}/cgroup")));
    assert!(proc_cg.contains(&format!(":memory:/{top}/c")), "{proc_cg}");
    assert!(proc_cg.contains(&format!(":pids:/{top}/c")), "{proc_cg}");

    let st = g.cg.stats().expect("stats");
    assert_eq!(st["memory"]["usage"]["limit"], 64 * mib);
    assert_eq!(st["pids"]["current"], 1);
    assert_eq!(st["pids"]["limit"], 42);
    assert!(st["cpu"]["usage"]["total"].is_u64(), "{st}");

    assert!(!g.cg.is_frozen().expect("state"));
    g.cg.freeze().expect("freeze");
    assert!(g.cg.is_frozen().expect("state"));
    let fz = g.cg.path_for("freezer").expect("freezer dir");
    assert_eq!(rd(&fz.join("freezer.state")), "FROZEN");
    g.cg.thaw().expect("thaw");
    assert!(!g.cg.is_frozen().expect("state"));

    g.cg.update(&res(serde_json::json!({
        "memory": {"limit": 96 * mib, "swap": 96 * mib},
        "pids": {"limit": -1},
        "cpu": {"quota": -1},
    })))
    .expect("update");
    assert_eq!(
        rd(&mem.join("memory.limit_in_bytes")),
        (96 * mib).to_string()
    );
    assert_eq!(
        rd(&mem.join("memory.memsw.limit_in_bytes")),
        (96 * mib).to_string()
    );
    assert_eq!(rd(&pids.join("pids.max")), "max");
    assert_eq!(rd(&cpu.join("cpu.cfs_quota_us")), "-1");

    g.kill_children();
    g.cg.destroy().expect("destroy");
    for d in &g.cg.dirs {
        for p in &d.created {
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
    g.cg.destroy().expect("destroy twice is fine");
}

#[test]
fn v1_relative_path_is_below_own_cgroup() {
    if !is_root("v1_relative_path_is_below_own_cgroup") {
        return;
    }
    let name = unique("rel");
    let own = hierarchy::parse_proc_cgroup(&rd(Path::new("/proc/self/cgroup")));
    let own_mem = own
        .iter()
        .find(|o| o.controllers.iter().any(|c| c == "memory"))
        .map(|o| o.path.clone())
        .expect("own memory cgroup");
    let mut g = Guard::new(Cgroup::resolve(Some(Path::new(&name)), "x").expect("resolve"));
    g.cg.create(None, &[]).expect("create");
    let mem = g.cg.path_for("memory").expect("memory");
    let want = Path::new("/sys/fs/cgroup/memory")
        .join(own_mem.trim_start_matches('/'))
        .join(&name);
    assert_eq!(mem, want);
    assert!(mem.is_dir());
    let pid = g.sleeper();
    let proc_cg = rd(Path::new(&format!("/proc/{pid}/cgroup")));
    assert!(
        proc_cg.contains(&format!(":memory:{}/{name}", own_mem.trim_end_matches('/'))),
        "{proc_cg}"
    );
    g.kill_children();
    g.cg.destroy().expect("destroy");
    assert!(!mem.exists());
    assert!(
        mem.parent().is_some_and(Path::is_dir),
        "our own cgroup stays"
    );
}

#[test]
fn failed_create_removes_what_it_made_and_names_file_and_value() {
    if !is_root("failed_create_removes_what_it_made_and_names_file_and_value") {
        return;
    }
    let top = unique("atomic");
    let mut g = Guard::at(&format!("/{top}/c"));
    let e =
        g.cg.create(
            Some(&res(
                serde_json::json!({"pids": {"limit": 5}, "cpu": {"cpus": "9999"}}),
            )),
            &[],
        )
        .expect_err("no cpu 9999")
        .to_string();
    assert!(e.contains("cpuset.cpus") && e.contains("9999"), "{e}");
    for d in &g.cg.dirs {
        assert!(d.created.is_empty());
        assert!(!d.path.exists(), "{} left behind", d.path.display());
        assert!(
            !d.mount.join(&top).exists(),
            "parent {top} left behind in {}",
            d.key
        );
    }
}

#[test]
fn destroy_leaves_a_parent_another_container_still_uses() {
    if !is_root("destroy_leaves_a_parent_another_container_still_uses") {
        return;
    }
    let top = unique("shared");
    let mut a = Guard::at(&format!("/{top}/a"));
    let mut b = Guard::at(&format!("/{top}/b"));
    a.cg.create(None, &[]).expect("create a");
    b.cg.create(None, &[]).expect("create b");
    let mem_top = Path::new("/sys/fs/cgroup/memory").join(&top);
    // b found the parent already there, so it is a's to remove, not b's.
    b.extra.push(mem_top.clone());
    for d in &b.cg.dirs {
        assert_eq!(d.created, vec![d.path.clone()]);
        b.extra.insert(0, d.mount.join(&top));
    }
    a.cg.destroy().expect("destroy a");
    assert!(mem_top.is_dir(), "shared parent kept while b lives");
    assert!(!mem_top.join("a").exists());
    b.cg.destroy().expect("destroy b");
    assert!(!mem_top.join("b").exists());
    assert!(
        mem_top.is_dir(),
        "b did not make the parent, so it leaves it"
    );
}

#[test]
fn pids_include_sub_cgroups_and_destroy_removes_them() {
    if !is_root("pids_include_sub_cgroups_and_destroy_removes_them") {
        return;
    }
    let top = unique("nested");
    let mut g = Guard::at(&format!("/{top}"));
    g.cg.create(None, &[]).expect("create");
    let p1 = g.sleeper();
    let fz = g.cg.primary().expect("primary").path.clone();
    let sub = fz.join("inner");
    std::fs::create_dir(&sub).expect("mkdir inner");
    g.extra.push(sub.clone());
    let c = Command::new("sleep").arg("600").spawn().expect("spawn");
    let p2 = c.id() as i32;
    g.children.push(c);
    std::fs::write(sub.join("cgroup.procs"), p2.to_string()).expect("move");
    let mut want = vec![p1, p2];
    want.sort_unstable();
    assert_eq!(g.cg.pids().expect("pids"), want);
    g.kill_children();
    g.cg.destroy().expect("destroy");
    assert!(!sub.exists() && !fz.exists());
}

#[test]
fn v1_devices_deny_then_rules_in_order() {
    if !is_root("v1_devices_deny_then_rules_in_order") {
        return;
    }
    let top = unique("dev1");
    let mut g = Guard::at(&format!("/{top}"));
    let implicit = [rule(true, 'c', Some(1), Some(5), "rwm")];
    let r = res(serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]}));
    g.cg.create(Some(&r), &implicit).expect("create");
    let dev = g.cg.path_for("devices").expect("devices dir");
    let list = rd(&dev.join("devices.list"));
    assert_eq!(list, "c 1:5 rwm");
    assert_eq!(try_devices(&g.cg), "null-denied zero-ok");
    // An update with new config rules keeps the implicit ones after them.
    let r = res(serde_json::json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}
    ]}));
    g.cg.update(&r).expect("update");
    let list = rd(&dev.join("devices.list"));
    assert!(
        list.contains("c 1:3 rw") && list.contains("c 1:5 rwm"),
        "{list}"
    );
    assert_eq!(try_devices(&g.cg), "null-ok zero-ok");
}

#[test]
fn v1_blkio_throttle_on_a_real_disk() {
    if !is_root("v1_blkio_throttle_on_a_real_disk") {
        return;
    }
    let disk = std::fs::read_dir("/sys/block").ok().and_then(|rd| {
        rd.filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with("zram"))
            .find_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
    });
    let Some(disk) = disk.map(|d| d.trim().to_string()) else {
        println!("SKIP v1_blkio_throttle_on_a_real_disk: no block device");
        return;
    };
    let (maj, min) = disk.split_once(':').expect("maj:min");
    let top = unique("blkio");
    let mut g = Guard::at(&format!("/{top}"));
    let r = res(serde_json::json!({"blockIO": {
        "throttleReadBpsDevice": [{"major": maj.parse::<i64>().expect("n"), "minor": min.parse::<i64>().expect("n"), "rate": 1048576}],
        "throttleWriteIOPSDevice": [{"major": maj.parse::<i64>().expect("n"), "minor": min.parse::<i64>().expect("n"), "rate": 100}]
    }}));
    g.cg.create(Some(&r), &[]).expect("create");
    let b = g.cg.path_for("blkio").expect("blkio");
    assert_eq!(
        rd(&b.join("blkio.throttle.read_bps_device")),
        format!("{disk} 1048576")
    );
    assert_eq!(
        rd(&b.join("blkio.throttle.write_iops_device")),
        format!("{disk} 100")
    );
}

// ---------------------------------------------------------------- real: the unified hierarchy as pure v2

#[test]
fn v2_bpf_devices_freeze_hugetlb_update_destroy() {
    if !is_root("v2_bpf_devices_freeze_hugetlb_update_destroy") {
        return;
    }
    let top = unique("v2");
    let Some(cg) = unified_only(&format!("/{top}/c")) else {
        println!("SKIP v2_bpf_devices_freeze_hugetlb_update_destroy: no cgroup2 mount");
        return;
    };
    let mut g = Guard::new(cg);
    let mib = 1i64 << 20;
    let has_2mb = hierarchy::hugepage_sizes().iter().any(|s| s == "2MB")
        && g.cg.unified().is_some_and(|d| d.has("hugetlb"));
    let mut r = serde_json::json!({
        "devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
        ]
    });
    if has_2mb {
        r["hugepageLimits"] = serde_json::json!([{"pageSize": "2MB", "limit": 2 * mib}]);
    }
    // /dev/zero comes from the implicit rules, after the config's.
    let implicit = [rule(true, 'c', Some(1), Some(5), "rwm")];
    g.cg.create(Some(&res(r)), &implicit).expect("create");
    let dir = g.cg.path_for("unified").expect("dir");
    assert!(dir.is_dir());
    assert_eq!(devices_bpf::attached_count(&dir).expect("query"), 1);
    if has_2mb {
        assert_eq!(rd(&dir.join("hugetlb.2MB.max")), (2 * mib).to_string());
    } else {
        println!("note: no 2MB huge pages or hugetlb controller here; hugetlb not checked");
    }
    // The last rule for 1:3 denies, so /dev/null is refused and /dev/zero opens.
    assert_eq!(try_devices(&g.cg), "null-denied zero-ok");

    let pid = g.sleeper();
    assert_eq!(g.cg.pids().expect("pids"), vec![pid]);
    assert!(rd(Path::new(&format!("/proc/{pid}/cgroup"))).contains(&format!("0::/{top}/c")));
    g.cg.freeze().expect("freeze");
    assert!(g.cg.is_frozen().expect("state"));
    assert_eq!(rd(&dir.join("cgroup.freeze")), "1");
    g.cg.thaw().expect("thaw");
    assert!(!g.cg.is_frozen().expect("state"));

    // Update replaces our program rather than stacking a second one.
    g.cg.update(&res(serde_json::json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "r"}
    ]})))
    .expect("update");
    assert_eq!(devices_bpf::attached_count(&dir).expect("query"), 1);
    assert_eq!(try_devices(&g.cg), "null-ok zero-ok");

    if has_2mb {
        let st = g.cg.stats().expect("stats");
        assert_eq!(st["hugetlb"]["2MB"]["usage"], 0, "{st}");
    }

    g.kill_children();
    g.cg.destroy().expect("destroy");
    assert!(!dir.exists());
    assert!(
        !dir.parent().is_some_and(Path::exists),
        "the new parent went too"
    );
}

#[test]
fn hybrid_unified_keys_reach_only_the_unified_hierarchy() {
    if !is_root("hybrid_unified_keys_reach_only_the_unified_hierarchy") {
        return;
    }
    let top = unique("uni");
    let mut g = Guard::at(&format!("/{top}"));
    if g.cg.unified().is_none() {
        println!("SKIP hybrid_unified_keys_reach_only_the_unified_hierarchy: no cgroup2");
        return;
    }
    let e =
        g.cg.create(
            Some(&res(
                serde_json::json!({"unified": {"../../memory.max": "1"}}),
            )),
            &[],
        )
        .expect_err("traversal")
        .to_string();
    assert!(e.contains("linux.resources.unified"), "{e}");
    assert!(g.cg.dirs.iter().all(|d| !d.path.exists()), "nothing made");
    g.cg.create(
        Some(&res(
            serde_json::json!({"unified": {"cgroup.max.descendants": "7"}}),
        )),
        &[],
    )
    .expect("create");
    let u = g.cg.path_for("unified").expect("unified");
    assert_eq!(rd(&u.join("cgroup.max.descendants")), "7");
}

#[test]
fn oom_kills_count_a_real_oom_kill() {
    if !is_root("oom_kills_count_a_real_oom_kill") {
        return;
    }
    let mut g = Guard::at(&format!("/{}", unique("oom")));
    let r: LinuxResources = serde_json::from_value(serde_json::json!({
        "memory": {"limit": 16 << 20}
    }))
    .expect("resources");
    // The device cgroup denies everything unless told otherwise: /dev/zero is needed.
    let all = DeviceRule {
        allow: true,
        typ: 'a',
        major: None,
        minor: None,
        access: "rwm".into(),
    };
    g.cg.create(Some(&r), &[all]).expect("create");
    assert_eq!(g.cg.oom_kills(), 0, "a new cgroup has had no OOM kill");
    // A shell moved into the cgroup, then told to hold 64 MiB in memory: the OOM
    // killer ends it or one of its pipeline.
    let mut c = Command::new("sh")
        .args([
            "-c",
            "read go; x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    g.cg.add_pid(c.id() as i32).expect("add_pid");
    writeln!(c.stdin.as_mut().expect("stdin"), "go").expect("go");
    let out = c.wait_with_output().expect("wait");
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "67108864",
        "64 MiB fit under a 16 MiB limit"
    );
    let mem = g.cg.path_for("memory").expect("memory dir");
    assert!(
        g.cg.oom_kills() >= 1,
        "the OOM kill was not counted: out {:?} err {:?}, {}: {:?}",
        out.stdout,
        out.status,
        mem.display(),
        std::fs::read_to_string(mem.join("memory.oom_control"))
    );
}
