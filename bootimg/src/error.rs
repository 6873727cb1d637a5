//! The library's one error type: every variant says what was being done to which path.

use std::path::PathBuf;

/// Everything that can go wrong while building or booting a node image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed on a path.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "creating", ...).
        what: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not a well-formed ELF object.
    #[error("parsing ELF {}: {reason}", path.display())]
    Elf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A shared library a binary needs was not found on the host.
    #[error("{} needs {lib}, which is not in any library directory ({searched})", needer.display())]
    LibraryNotFound {
        /// The binary or library that needs it.
        needer: PathBuf,
        /// The DT_NEEDED name.
        lib: String,
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// No kernel was given and none was found in the default places.
    #[error("no kernel found: looked for {looked}; run `make kernel` or pass --kernel FILE")]
    NoKernel {
        /// Where it looked.
        looked: String,
    },
    /// A kernel module named on the command line is neither a module nor built in.
    #[error("--module {name}: no such module in {} (not in modules.dep, not built in)", dir.display())]
    NoModule {
        /// The module name as given.
        name: String,
        /// The kernel's module directory.
        dir: PathBuf,
    },
    /// A command-line argument is malformed.
    #[error("{arg}: {reason}")]
    BadArgument {
        /// The argument (flag and value).
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file the image needs (kernel, plinth binary) is missing.
    #[error("{what} {}: not found{hint}", path.display())]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where it was expected.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// Decompressing a kernel module failed.
    #[error("decompressing {}: {reason}", path.display())]
    Decompress {
        /// The compressed module.
        path: PathBuf,
        /// The decoder's complaint.
        reason: String,
    },
    /// Two sources were mapped to the same path in the image.
    #[error("{dest}: given twice in the image ({first} and {second})")]
    Conflict {
        /// The image path.
        dest: String,
        /// The first source.
        first: String,
        /// The second source.
        second: String,
    },
    /// qemu could not be started or failed.
    #[error("qemu: {0}")]
    Qemu(String),
    /// A signal ended the run (qemu was stopped first).
    #[error("ended by {signal}: the machine was stopped")]
    Ended {
        /// The signal's name.
        signal: String,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds a closure mapping an `io::Error` to [`Error::Io`] for `path`.
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
