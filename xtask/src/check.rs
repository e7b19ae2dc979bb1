//! `cargo xtask check`: the code is formatted, lint-free and documented, with warnings denied.
//!
//! What runs, in order, each stopping the check on its first complaint:
//!
//! 1. `cargo fmt --all --check`: the workspace is formatted as `rustfmt.toml` says;
//! 2. `cargo clippy` on the host crates, every target (tests, benches, examples);
//! 3. `cargo clippy` on `arch` and `kernel` for `aarch64-unknown-none`, as `cargo xtask build`
//!    builds them;
//! 4. `cargo doc` of the host crates, and of `arch` and the kernel with their private items
//!    (their internals are what a reader of this OS studies), so that every link resolves.
//!
//! Warnings are errors in all four (`-D warnings`, `RUSTDOCFLAGS=-D warnings`). The lints
//! themselves are the workspace's (`[workspace.lints]` in the root `Cargo.toml`): every unsafe
//! block says why it is sound, unsafe operations inside `unsafe fn` are in blocks of their own,
//! and library crates document every public item. `.ci/run` runs this before the tests.

use std::process::Command;

use crate::Result;
use crate::image::workspace_root;
use crate::prerequisites::{KERNEL_TARGET, ensure_components, ensure_rust_target};

/// One cargo invocation of the check.
struct Step {
    what: &'static str,
    arguments: &'static [&'static str],
    rustdoc_deny: bool,
}

const STEPS: [Step; 5] = [
    Step { what: "formatting", arguments: &["fmt", "--all", "--check"], rustdoc_deny: false },
    Step {
        what: "clippy, host crates",
        arguments: &[
            "clippy",
            "--workspace",
            "--exclude",
            "arch",
            "--exclude",
            "kernel",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ],
        rustdoc_deny: false,
    },
    Step {
        what: "clippy, kernel",
        arguments: &[
            "clippy",
            "--package",
            "arch",
            "--package",
            "kernel",
            "--release",
            "--target",
            KERNEL_TARGET,
            "--",
            "-D",
            "warnings",
        ],
        rustdoc_deny: false,
    },
    Step {
        what: "documentation, host crates",
        arguments: &["doc", "--workspace", "--exclude", "arch", "--exclude", "kernel", "--no-deps", "--all-features"],
        rustdoc_deny: true,
    },
    Step {
        what: "documentation, kernel",
        arguments: &[
            "doc",
            "--package",
            "arch",
            "--package",
            "kernel",
            "--no-deps",
            "--document-private-items",
            "--release",
            "--target",
            KERNEL_TARGET,
        ],
        rustdoc_deny: true,
    },
];

/// Runs every step; the first that fails ends the check with its name.
pub fn run() -> Result<()> {
    ensure_rust_target()?;
    ensure_components(&["clippy", "rustfmt"])?;
    for step in &STEPS {
        println!("xtask: check: {} (cargo {})", step.what, step.arguments.join(" "));
        let mut command = Command::new(env!("CARGO"));
        command.current_dir(workspace_root()).args(step.arguments);
        if step.rustdoc_deny {
            command.env("RUSTDOCFLAGS", "-D warnings");
        }
        let status = command.status().map_err(|error| format!("cannot run cargo: {error}"))?;
        if !status.success() {
            return Err(format!("check failed: {} (see above; `cargo fmt --all` fixes formatting)", step.what));
        }
    }
    println!("xtask: check: formatted, no clippy warning, documentation builds");
    Ok(())
}
