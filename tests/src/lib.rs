//! Shared helpers for the end-to-end tests: locating the built binaries, making
//! busybox bundles, running `plinth` and reading what it did.
