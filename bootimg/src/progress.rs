//! A minimal progress bar on stderr for the slow steps (reading modules, compressing).
//! Drawn only when stderr is a terminal, so logs and tests stay clean.

use std::io::{IsTerminal, Write};

/// One progress bar.
pub struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    /// Starts a bar for `total` steps.
    pub fn new(label: &'static str, total: usize) -> Progress {
        let p = Progress {
            label,
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
        };
        p.draw();
        p
    }

    /// Advances by one step.
    pub fn inc(&mut self) {
        self.done = (self.done + 1).min(self.total);
        self.draw();
    }

    fn draw(&self) {
        if !self.tty {
            return;
        }
        let width = 30;
        let filled = (self.done * width).checked_div(self.total).unwrap_or(width);
        let bar: String = "#".repeat(filled) + &" ".repeat(width - filled);
        eprint!("\r{:<12} [{bar}] {}/{}", self.label, self.done, self.total);
        let _ = std::io::stderr().flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.tty {
            eprint!("\r{}\r", " ".repeat(60));
        }
    }
}
