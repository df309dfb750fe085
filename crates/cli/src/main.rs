//! The `wafleet` command line.
//!
//! One module per subcommand group; each exposes a clap `Subcommand` enum and a `run`
//! function returning `Err(message)` for a one-line error. `main` prints that message as
//! `error: …` on stderr and exits non-zero.
//!
//! - `wafleet node decode|encode`: the binary node codec ([`node`]).
//! - `wafleet demo`: the fleet demo on real services ([`fleet_demo`]); `--local`: the
//!   simulator and the driver alone ([`demo`]).
//! - `wafleet link`: links one session in the foreground ([`link`]).
//! - `wafleet listen`: prints a linked session's inbound messages ([`listen`]).
//! - `wafleet send`: sends one text from a linked session ([`send`]); typed exit codes
//!   ([`exit`]).
//! - `wafleet sim`: the WhatsApp simulator on loopback ([`sim`]).
//! - `wafleet coordinator`: the auth-coordinator, with the flags of `wafleet-coordinator`
//!   (`wafleet_auth_coordinator::cli`); `wafleet coordinator --help` lists them.
//! - `wafleet worker`: a fleet session worker ([`worker`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod connect;
mod demo;
mod exit;
mod fleet_demo;
mod link;
mod listen;
mod node;
mod send;
mod sim;
mod worker;

/// wafleet: a WhatsApp Web multi-device gateway.
#[derive(Debug, Parser)]
#[command(name = "wafleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Binary nodes: decode wire hex to JSON, encode JSON to wire hex.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Link simulated phones end to end on loopback and show the events.
    Demo(demo::DemoArgs),
    /// Link a session (QR or pairing code) and log it in, in the foreground.
    Link(link::LinkArgs),
    /// Log a linked session in and print each inbound message, receipt and undecryptable
    /// message (JSON lines with --json) until Ctrl-C. Never links.
    Listen(listen::ListenArgs),
    /// Send a text from a linked session; prints the message id once the server acked it.
    Send(send::SendArgs),
    /// Run the WhatsApp simulator (server and phones) on loopback until Ctrl-C.
    Sim(sim::SimArgs),
    /// Run a fleet session worker: leases from the coordinator over NATS, blobs in S3.
    Worker(worker::WorkerArgs),
    /// Run the auth-coordinator (registry, leases, leader election) until SIGTERM;
    /// `wafleet coordinator --help` lists its flags.
    #[command(disable_help_flag = true)]
    Coordinator(CoordinatorArgs),
}

/// `wafleet coordinator …`: the flags are parsed by the coordinator library, exactly as
/// `wafleet-coordinator` parses them.
#[derive(Debug, clap::Args)]
struct CoordinatorArgs {
    /// --pg-url URL, --nats-url URL, --heartbeat-interval SECS, … (see --help).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "FLAGS"
    )]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), exit::Failure> = match cli.command {
        Command::Coordinator(args) => {
            return wafleet_auth_coordinator::cli::main_with_args("wafleet coordinator", args.args)
        }
        Command::Node(command) => node::run(command).map_err(Into::into),
        Command::Demo(args) => demo::run(args).map_err(Into::into),
        Command::Link(args) => link::run(args).map_err(Into::into),
        Command::Listen(args) => listen::run(args),
        Command::Send(args) => send::run(args),
        Command::Sim(args) => sim::run(args).map_err(Into::into),
        Command::Worker(args) => worker::run(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // One line, whatever the underlying error's Display does.
            eprintln!("error: {}", failure.message.replace('\n', " "));
            failure.exit_code()
        }
    }
}
