//! `balancer iptables print|apply|remove`: prints the commands of the
//! config's [`Plan`], or runs them through [`crate::iptables::runner`].

use crate::{
    cli::{IptablesAction, IptablesArgs},
    config::Config,
    iptables::{
        Argv, Plan,
        runner::{Runner, apply, remove},
        shell_line,
    },
};

/// # Errors
/// An unreadable or invalid config (exit 2), or a failing command (exit 1).
pub fn run(args: &IptablesArgs) -> anyhow::Result<()> {
    let (path, action) = match &args.action {
        IptablesAction::Print { file, .. } => (&file.config, "print"),
        IptablesAction::Apply { file } => (&file.config, "apply"),
        IptablesAction::Remove { file } => (&file.config, "remove"),
    };
    let config = Config::load(path)?;
    let plan = Plan::for_config(&config);
    if plan.is_empty() {
        println!(
            "# {}: no redirect or tproxy listener, no rules to {action}",
            path.display()
        );
        return Ok(());
    }
    let runner = Runner::host();
    match &args.action {
        IptablesAction::Print { remove: false, .. } => print(&plan.add_commands()),
        IptablesAction::Print { remove: true, .. } => print(&plan.delete_commands()),
        IptablesAction::Apply { .. } => {
            let applied = apply(&plan, &runner)?;
            tracing::info!(
                added = applied.added,
                already_present = applied.present,
                "iptables rules applied"
            );
        }
        IptablesAction::Remove { .. } => {
            let deleted = remove(&plan, &runner)?;
            tracing::info!(deleted, "iptables rules removed");
        }
    }
    Ok(())
}

fn print(commands: &[Argv]) {
    for command in commands {
        println!("{}", shell_line(command));
    }
}
