//! A tiny classic-BPF assembler: straight-line code with symbolic forward labels.
//!
//! Conditional jumps in cBPF carry 8-bit offsets, so a jump further than 255
//! instructions cannot be encoded directly. The assembler lays the code out, and every
//! conditional jump whose target is too far gets a trampoline: its far side points to
//! a `ja` (32-bit offset) placed right after it. Trampolines push later code further
//! away, so layout repeats until nothing changes (each pass only ever grows the
//! program, so this terminates).

/// A label: an index into the assembler's label table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Label(usize);

// cBPF opcodes (linux/filter.h, linux/bpf_common.h).
/// BPF_LD | BPF_W | BPF_ABS (BPF_LD and BPF_W are 0).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_RET_K: u16 = 0x06;
const BPF_JMP_JA: u16 = 0x05;

/// Conditional jump kinds (BPF_JMP | op | BPF_K). All compare unsigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Jcc {
    Eq = 0x15,
    Gt = 0x25,
    Ge = 0x35,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Ld(u32),
    And(u32),
    Ret(u32),
    Ja(Label),
    J { cc: Jcc, k: u32, t: Label, f: Label },
    Bind(Label),
}

/// The program under construction.
#[derive(Default)]
pub(super) struct Asm {
    ops: Vec<Op>,
    labels: usize,
}

impl Asm {
    /// A new, unbound label.
    pub(super) fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    /// Binds `l` to the next instruction emitted.
    pub(super) fn bind(&mut self, l: Label) {
        self.ops.push(Op::Bind(l));
    }

    /// A = the 32-bit word at `off` in struct seccomp_data.
    pub(super) fn ld(&mut self, off: u32) {
        self.ops.push(Op::Ld(off));
    }

    /// A &= k.
    pub(super) fn and(&mut self, k: u32) {
        self.ops.push(Op::And(k));
    }

    /// Return `k` (a SECCOMP_RET_* value) to the kernel.
    pub(super) fn ret(&mut self, k: u32) {
        self.ops.push(Op::Ret(k));
    }

    /// Jump to `t` if `A cc k`, else to `f`. Both must be bound later (forward only).
    pub(super) fn jmp(&mut self, cc: Jcc, k: u32, t: Label, f: Label) {
        self.ops.push(Op::J { cc, k, t, f });
    }

    /// Jump to `t` if `A cc k`, else fall through.
    pub(super) fn jmp_if(&mut self, cc: Jcc, k: u32, t: Label) {
        let next = self.label();
        self.jmp(cc, k, t, next);
        self.bind(next);
    }

    /// Fall through if `A cc k`, else jump to `f`.
    pub(super) fn jmp_unless(&mut self, cc: Jcc, k: u32, f: Label) {
        let next = self.label();
        self.jmp(cc, k, next, f);
        self.bind(next);
    }

    /// Lays the program out and encodes it as (code, jt, jf, k).
    /// Errors only on an internal bug (a label unbound or behind its jump).
    pub(super) fn assemble(mut self) -> Result<Vec<(u16, u8, u8, u32)>, String> {
        loop {
            let addr = self.addresses()?;
            let mut grown = false;
            let mut out = Vec::with_capacity(self.ops.len());
            let mut pc = 0usize;
            for op in &self.ops {
                match *op {
                    Op::J { cc, k, t, f } => {
                        let far_t = addr[t.0] - (pc + 1) > 255;
                        let far_f = addr[f.0] - (pc + 1) > 255;
                        if far_t || far_f {
                            grown = true;
                            let (lt, lf) = (Label(self.labels), Label(self.labels + 1));
                            self.labels += 2;
                            out.push(Op::J {
                                cc,
                                k,
                                t: if far_t { lt } else { t },
                                f: if far_f { lf } else { f },
                            });
                            if far_t {
                                out.extend([Op::Bind(lt), Op::Ja(t)]);
                            }
                            if far_f {
                                out.extend([Op::Bind(lf), Op::Ja(f)]);
                            }
                        } else {
                            out.push(*op);
                        }
                        pc += 1;
                    }
                    Op::Bind(_) => out.push(*op),
                    _ => {
                        out.push(*op);
                        pc += 1;
                    }
                }
            }
            self.ops = out;
            if !grown {
                break;
            }
        }
        let addr = self.addresses()?;
        let mut code = Vec::new();
        for op in &self.ops {
            let pc = code.len();
            let rel = |l: Label| addr[l.0] - (pc + 1);
            code.push(match *op {
                Op::Bind(_) => continue,
                Op::Ld(off) => (BPF_LD_W_ABS, 0, 0, off),
                Op::And(k) => (BPF_ALU_AND_K, 0, 0, k),
                Op::Ret(k) => (BPF_RET_K, 0, 0, k),
                Op::Ja(l) => (
                    BPF_JMP_JA,
                    0,
                    0,
                    u32::try_from(rel(l)).map_err(|_| "jump too long")?,
                ),
                // In range: the layout loop above guaranteed it.
                Op::J { cc, k, t, f } => (cc as u16, rel(t) as u8, rel(f) as u8, k),
            });
        }
        Ok(code)
    }

    /// The address of every label, checking that each jump goes forward.
    fn addresses(&self) -> Result<Vec<usize>, String> {
        let mut addr = vec![usize::MAX; self.labels];
        let mut pc = 0;
        for op in &self.ops {
            match op {
                Op::Bind(l) => addr[l.0] = pc,
                _ => pc += 1,
            }
        }
        let mut pc = 0;
        for op in &self.ops {
            let targets = match *op {
                Op::Ja(l) => [Some(l), None],
                Op::J { t, f, .. } => [Some(t), Some(f)],
                Op::Bind(_) => continue,
                _ => [None, None],
            };
            for l in targets.into_iter().flatten() {
                if addr[l.0] == usize::MAX || addr[l.0] <= pc {
                    return Err(format!(
                        "internal error: label {} is not ahead of {pc}",
                        l.0
                    ));
                }
            }
            pc += 1;
        }
        Ok(addr)
    }
}
