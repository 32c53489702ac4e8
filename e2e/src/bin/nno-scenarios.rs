//! `nno-scenarios`: the end-to-end scenarios (`nno_e2e::scenarios`) on a kind cluster
//! that `hack/kind-e2e.sh` prepared. (CI runs the same scenarios on the local cluster
//! of real nodes: `e2e/tests/real_nodes.rs`.)
//!
//!   nno-scenarios --kubeconfig FILE [SCENARIO...]

use std::path::PathBuf;
use std::process::ExitCode;

use nno_e2e::kind::KindCluster;
use nno_e2e::scenarios;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut kubeconfig = None;
    let mut only = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kubeconfig" => kubeconfig = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!(
                    "usage: nno-scenarios --kubeconfig FILE [SCENARIO...]\nscenarios: {}",
                    scenarios::ALL.join(" ")
                );
                return ExitCode::SUCCESS;
            }
            name if scenarios::ALL.contains(&name) => only.push(name.to_string()),
            other => {
                eprintln!(
                    "unknown argument {other:?} (scenarios: {})",
                    scenarios::ALL.join(" ")
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(kubeconfig) = kubeconfig else {
        eprintln!("--kubeconfig FILE is required");
        return ExitCode::FAILURE;
    };
    let cluster = match KindCluster::connect(&kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = scenarios::run(&cluster, &only).await;
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    println!("{} scenarios, {failed} failed", outcomes.len());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
