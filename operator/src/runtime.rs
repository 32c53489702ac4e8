//! Command-line wiring: parses arguments and starts the chosen component.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Prepares node networking (bridges, VXLAN) for multus secondary networks.
#[derive(Parser, Debug)]
#[command(name = "node-network-operator", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML) that the Helm chart ships.
    Crds,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Crds => print_crds(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds() -> anyhow::Result<()> {
    let yaml = crate::api::crds_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}
