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

// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML) that the Helm chart ships.
    Crds,
    /// Run the per-node agent (bridges, VXLANs, NodeNetworkState, readiness socket).
    Agent {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: crate::agent::run::Args,
    },
    /// Run the cluster-wide controller (NADs, MTU, status, cleanup).
    Controller {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: crate::controller::run::Args,
    },
}

/// Flags every long-running component takes.
#[derive(clap::Args, Debug)]
struct Common {
    /// Kubeconfig file; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: crate::telemetry::LogFormat,
}

async fn client(common: &Common) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    let config = match &common.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("loading the in-cluster configuration (no --kubeconfig given)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Crds => print_crds(),
        Command::Agent { common, args } => {
            crate::telemetry::init_tracing(common.log_format);
            block_on(async move { crate::agent::run::run(client(&common).await?, args).await })
        }
        Command::Controller { common, args } => {
            crate::telemetry::init_tracing(common.log_format);
            block_on(async move { crate::controller::run::run(client(&common).await?, args).await })
        }
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
