use std::io::Write;
use std::process::ExitCode;

use nno_cni_shim::cni::{CniError, CniVersion, Env};

fn main() -> ExitCode {
    let outcome =
        std::panic::catch_unwind(|| nno_cni_shim::run(&Env::from_process(), &mut std::io::stdin().lock()))
            .unwrap_or_else(|_| nno_cni_shim::Outcome {
                // A bug, reported as the spec's generic plugin error rather than no answer.
                stdout: CniError::new(999, "nno-cni-shim: internal error (see stderr)")
                    .to_json(CniVersion::LATEST),
                exit_code: 1,
            });
    let mut stdout = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(stdout, "{}", outcome.stdout);
    }
    let _ = stdout.flush();
    ExitCode::from(outcome.exit_code)
}
