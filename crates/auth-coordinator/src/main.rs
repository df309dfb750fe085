//! `wafleet-coordinator`: runs the auth-coordinator. The flags and the run logic live in
//! [`wafleet_auth_coordinator::cli`] (shared with `wafleet coordinator`); `--help` lists
//! them.

use std::process::ExitCode;

fn main() -> ExitCode {
    wafleet_auth_coordinator::cli::main_with_args(
        "wafleet-coordinator",
        std::env::args().skip(1).collect(),
    )
}
