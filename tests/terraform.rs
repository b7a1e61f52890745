//! The demo environments in terraform/, checked without a cloud: scripts/check-terraform.py
//! parses every .tf (python-hcl2), runs checkov over terraform/, renders each
//! environment's templates as Terraform would and passes the agent configs to this build's
//! `fleetscale check --offline`, checks the Prometheus configs with promtool, and checks that
//! the AWS agent's instance profile holds the IAM policy files the adapters' tests load.
//!
//! The rendered configs use the `aws` and `azure` adapters, hence the features. A missing
//! checker tool fails the test with the command that installs it; nothing is skipped.
#![cfg(all(feature = "aws", feature = "azure"))]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

const INSTALL: &str = "pip install -r scripts/test-requirements.txt";

fn run(command: &mut Command) -> Option<Output> {
    command.output().ok()
}

fn require_tools(repo: &Path) {
    let python = run(Command::new("python3").arg("--version")).unwrap_or_else(|| {
        panic!("python3 is needed to check terraform/ (Debian: apt-get install python3)")
    });
    assert!(python.status.success(), "python3 --version failed");

    for (module, package, why) in [
        ("hcl2", "python-hcl2", "to parse terraform/"),
        (
            "yaml",
            "PyYAML",
            "to read the rendered cloud-init documents",
        ),
    ] {
        let import = run(Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .current_dir(repo))
        .expect("python3 runs");
        assert!(
            import.status.success(),
            "{package} is missing (needed {why}): {INSTALL}\n{}",
            String::from_utf8_lossy(&import.stderr)
        );
    }

    let checkov = run(Command::new("checkov").arg("--version"));
    assert!(
        checkov.as_ref().is_some_and(|o| o.status.success()),
        "checkov is missing (needed to scan terraform/): {INSTALL}"
    );
    assert!(
        run(Command::new("promtool").arg("--version")).is_some_and(|o| o.status.success()),
        "promtool is missing (needed to check the demos' Prometheus configs): \
         apt-get install prometheus, as scripts/test.sh does"
    );
}

#[test]
fn demo_environments_parse_pass_checkov_and_render_configs_the_agent_accepts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    require_tools(repo);

    let started = Instant::now();
    let output = Command::new("python3")
        .arg(repo.join("scripts/check-terraform.py"))
        .arg("--fleetscale")
        .arg(env!("CARGO_BIN_EXE_fleetscale"))
        .current_dir(repo)
        .output()
        .expect("scripts/check-terraform.py runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");

    assert_ne!(
        output.status.code(),
        Some(3),
        "a checker tool is missing: {INSTALL}\n{stderr}"
    );
    assert!(
        output.status.success(),
        "scripts/check-terraform.py found problems in terraform/ (exit {:?}):\n{stderr}",
        output.status.code()
    );
    // Every stage reported success; a checker that ran nothing would not print these.
    for stage in [
        ".tf files parse",
        "checkov:",
        "terraform/aws/templates/fleetscale.toml.tftpl: rendered with sample values, passes `fleetscale check --offline`",
        "terraform/azure/templates/fleetscale.toml.tftpl: rendered with sample values, passes `fleetscale check --offline`",
        "terraform/aws/templates/fleetscale.toml.tftpl (high_availability = true): rendered with sample values, passes `fleetscale check --offline`",
        "terraform/azure/templates/fleetscale.toml.tftpl (high_availability = true): rendered with sample values, passes `fleetscale check --offline`",
        "(high_availability = true): YAML, etcd-server listening on",
        "promtool check config",
        "holds exactly fleetscale-asg-policy.json and fleetscale-drain-policy.json",
    ] {
        assert!(
            stdout.contains(stage),
            "the checker did not report {stage:?}:\n{stdout}"
        );
    }
    println!(
        "terraform checks took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
