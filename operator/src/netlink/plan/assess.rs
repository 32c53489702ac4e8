//! The per-link states after a pass.

use super::*;

/// The per-link states after a pass: `plan` is the plan of the final observation
/// (what would still be left to do), `errors` what failed in this pass, by name.
pub fn assess(
    desired: &[DesiredLink],
    plan: &Plan,
    observed: &Observed,
    errors: &HashMap<String, Problem>,
) -> Vec<LinkState> {
    desired
        .iter()
        .zip(&plan.links)
        .map(|(d, lp)| {
            let (ready, reason, message) = if let Some(p) = &lp.problem
                && p.reason == reason::INVALID_SPEC
            {
                (false, p.reason.to_string(), p.message.clone())
            } else if let Some(e) = errors.get(&d.name) {
                (false, e.reason.to_string(), e.message.clone())
            } else if let Some(p) = &lp.problem {
                (false, p.reason.to_string(), p.message.clone())
            } else if let Some(step) = lp.steps.first() {
                (
                    false,
                    reason::PENDING.to_string(),
                    format!("{} still needs: {step}", d.name),
                )
            } else {
                (true, reason::READY.to_string(), format!("{} is ready", d.name))
            };
            LinkState {
                name: d.name.clone(),
                ready,
                reason,
                message,
                mtu: observed.links.get(&d.name).map(|l| l.mtu),
                carrier: lp.carrier.clone(),
                carrier_mtu: lp.carrier_mtu,
                local_address: lp.local_address,
            }
        })
        .collect()
}
