//! The config: every example parses and validates; broken configs report every problem at
//! once, each with the path of the field at fault.
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleetscale::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("test.toml")) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

/// `fleetscale check` with `flags` on `config`, run from the repository root.
fn check(flags: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetscale"))
        .arg("check")
        .args(flags)
        .arg("--config")
        .arg(config)
        .current_dir(repo())
        .output()
        .expect("fleetscale runs")
}

#[test]
fn every_example_config_parses_and_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            // Trace paths in examples are relative to the repository.
            let text = std::fs::read_to_string(&path).expect("readable example");
            let result = Config::parse(&text, &path);
            if let Err(e) = &result {
                // The worldcup98 example plays a trace that lives beside the repository
                // (../shared/traces); from a clean clone alone only that path may be absent.
                let only_missing_trace = e.problems.iter().all(|p| {
                    p.path.ends_with("signal.path") && p.message.contains("../shared/traces")
                });
                assert!(only_missing_trace, "{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} example configs found");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let found = problems(
        r#"
        [agent]
        tick = "soon"
        colour = "blue"

        [[fleets]]
        name = "web"
        boot_delay = "0s"
        [fleets.adapter]
        kind = "mock"
        [fleets.signal]
        kind = "synthetic"
        mean = -1.0
        [fleets.guards]
        min = 5
        max = 3

        [[fleets]]
        name = "web"
        [fleets.adapter]
        kind = "gcp"
        [fleets.signal]
        kind = "synthetic"
        [fleets.policy]
        name = "target-tracking"
        target_utilisation = "high"
        "#,
    );
    let text = found.join("\n");
    for expected in [
        "agent.tick:",
        "fleets[0].boot_delay: must be longer than 0s",
        "fleets[0].signal.mean: must be a positive number",
        "fleets[0].guards.min: min (5) is above max (3)",
        "fleets[1].adapter",
        "fleets[1].guards: missing section",
        "fleets[1].policy.target_utilisation",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        text.contains(
            "fleets[1].adapter.kind: unknown kind \"gcp\" (expected one of: mock, aws, aws-asg, azure)"
        ),
        "{text}"
    );
    assert!(text.contains("agent.colour: unknown field"), "{text}");
}

#[test]
fn unknown_fields_are_named() {
    let text = problems(
        r#"
        [[fleets]]
        name = "web"
        [fleets.adapter]
        kind = "mock"
        [fleets.signal]
        kind = "synthetic"
        [fleets.guards]
        max = 10
        max_stp_up = 3
        "#,
    )
    .join("\n");
    assert!(
        text.contains("fleets[0].guards") && text.contains("max_stp_up"),
        "{text}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let text = problems("[agent\ntick = 1").join("\n");
    assert!(text.contains("line 1"), "{text}");
}

#[test]
fn a_config_without_fleets_is_refused() {
    let text = problems("[agent]\ntick = \"10s\"\n").join("\n");
    assert!(text.contains("fleets: no [[fleets]]"), "{text}");
}

#[test]
fn check_offline_names_all_three_mistakes_and_exits_2() {
    let output = check(
        &["--offline"],
        Path::new("tests/configs/three-mistakes.toml"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("3 problems"), "{stderr}");
    assert!(
        stderr.contains("fleets[0].guards") && stderr.contains("max_stp_up"),
        "{stderr}"
    );
    assert!(stderr.contains("fleets[1].signal.per_instance"), "{stderr}");
    assert!(
        stderr.contains("fleets[1].adapter: missing section"),
        "{stderr}"
    );
}

#[test]
fn check_offline_accepts_the_demo_config() {
    let output = check(&["--offline"], Path::new("examples/dry-run.toml"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid (1 fleet)"));
}

/// `fleetscale check` (online) on a config: its exit code and standard output.
fn check_online(config: &Path) -> (Option<i32>, String) {
    let output = check(&[], config);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code(), stdout)
}

#[test]
fn check_online_reads_the_cloud_and_the_signal_and_fails_on_an_unreachable_signal() {
    // The demo config: the mock cloud and a synthetic signal, both always reachable.
    let (code, stdout) = check_online(Path::new("examples/dry-run.toml"));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("fleet web (mock): authenticated as"),
        "{stdout}"
    );
    assert!(
        stdout.contains("signal (synthetic): latest demand") && stdout.contains("(10 serving)"),
        "{stdout}"
    );
    // Each permission's line says its verdict once, then how it was proven.
    for line in stdout.lines().filter(|l| l.contains("allowed")) {
        assert_eq!(line.matches("allowed").count(), 1, "{line}");
    }

    // The Prometheus example with its server on a port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(repo().join("examples/prometheus.toml"))
        .unwrap()
        .replace(
            "http://127.0.0.1:9090",
            &format!("http://127.0.0.1:{closed}"),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prometheus.toml");
    std::fs::write(&path, text).unwrap();
    let (code, stdout) = check_online(&path);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("signal (prometheus): FAILED") && stdout.contains("unavailable"),
        "{stdout}"
    );
}

#[test]
fn ticks_boot_delays_and_histories_out_of_range_are_named() {
    let fleet = |extra: &str| {
        format!(
            "[[fleets]]\nname = \"web\"\n{extra}\n[fleets.adapter]\nkind = \"mock\"\n\
             [fleets.signal]\nkind = \"synthetic\"\n[fleets.guards]\nmax = 10\n"
        )
    };
    for (text, path, says) in [
        (
            format!("[agent]\ntick = \"0s\"\n{}", fleet("")),
            "agent.tick",
            "at least 1s",
        ),
        (
            format!("[agent]\ntick = \"1ns\"\n{}", fleet("")),
            "agent.tick",
            "at least 1s",
        ),
        (
            format!("[agent]\ntick = \"400days\"\n{}", fleet("")),
            "agent.tick",
            "at most 1d",
        ),
        (
            fleet("boot_delay = \"0s\""),
            "fleets[0].boot_delay",
            "longer than 0s",
        ),
        (
            fleet("boot_delay = \"30days\""),
            "fleets[0].boot_delay",
            "at most 1d",
        ),
        (
            fleet("history = \"1000days\""),
            "fleets[0].history",
            "at most 90d",
        ),
    ] {
        let found = problems(&text).join("\n");
        assert!(
            found.contains(path) && found.contains(says),
            "{text}\n=> {found}"
        );
    }
}

#[test]
fn a_trace_started_by_both_row_and_offset_is_refused_naming_the_field() {
    let trace = repo().join("tests/data/worldcup98-excerpt.csv");
    assert!(trace.is_file(), "{} is missing", trace.display());
    let text = format!(
        "[[fleets]]\nname = \"web\"\n[fleets.adapter]\nkind = \"mock\"\n[fleets.signal]\n\
         kind = \"trace\"\npath = {:?}\ncolumn = \"count\"\nper_instance = 1000.0\n\
         start_row = 60\nstart_at = \"1h\"\n[fleets.guards]\nmax = 10\n",
        trace.display().to_string()
    );
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("fleets[0].signal.start_at") && p.contains("not both")),
        "{found:?}"
    );
}

#[cfg(feature = "aws")]
#[test]
fn an_auto_scaling_group_fleet_names_its_bad_fields() {
    let found = problems(
        r#"
        [[fleets]]
        name = "web"
        [fleets.adapter]
        kind = "aws-asg"
        group = " "
        region = "Ireland"
        endpoint_url = "ftp://example.com"
        [fleets.signal]
        kind = "synthetic"
        [fleets.guards]
        min = 1
        max = 3
        "#,
    );
    let text = found.join("\n");
    for expected in [
        "fleets[0].adapter.group: must name the Auto Scaling group",
        "fleets[0].adapter.region: \"Ireland\" is not an AWS region name",
        "fleets[0].adapter.endpoint_url:",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let unknown = problems(
        r#"
        [[fleets]]
        name = "web"
        [fleets.adapter]
        kind = "aws-asg"
        group = "web-asg"
        subnets = ["subnet-1"]
        [fleets.signal]
        kind = "synthetic"
        [fleets.guards]
        min = 1
        max = 3
        "#,
    );
    assert!(
        unknown
            .iter()
            .any(|p| p.contains("fleets[0].adapter.subnets: unknown field `subnets`")),
        "{unknown:?}"
    );
}

#[test]
fn a_drain_names_its_bad_fields() {
    let fleet = |adapter: &str, drain: &str| {
        format!(
            "[[fleets]]\nname = \"web\"\n[fleets.adapter]\n{adapter}\n[fleets.signal]\nkind = \"synthetic\"\n\
             [fleets.guards]\nmin = 1\nmax = 3\n[fleets.drain]\n{drain}\n"
        )
    };
    let found = problems(&fleet(
        "kind = \"mock\"",
        "timeout = \"0s\"\nhook_url = \"ftp://drain\"\nhook_command = []\nhook_timeout = \"2h\"",
    ))
    .join("\n");
    for expected in [
        "fleets[0].drain.timeout: must be more than 0s",
        "fleets[0].drain.hook_url: \"ftp://drain\": the scheme must be http or https",
        "fleets[0].drain.hook_command: must name a program",
        "fleets[0].drain.hook_timeout: must be more than 0s and at most the drain's timeout",
    ] {
        assert!(
            found.contains(expected),
            "missing {expected:?} in:\n{found}"
        );
    }
    let nothing = problems(&fleet("kind = \"mock\"", "timeout = \"60s\"")).join("\n");
    assert!(
        nothing.contains("fleets[0].drain.target_group_arn: a drain needs a target_group_arn, a backend_pool_id, a hook_url or a hook_command"),
        "{nothing}"
    );
    let unknown = problems(&fleet("kind = \"mock\"", "hook = \"x\"")).join("\n");
    assert!(unknown.contains("fleets[0].drain"), "{unknown}");
    assert!(unknown.contains("hook"), "{unknown}");
    let good = fleet(
        "kind = \"mock\"",
        "hook_url = \"http://127.0.0.1:9/drain\"\ntimeout = \"2m\"",
    );
    let config = Config::parse(&good, Path::new("test.toml")).expect("a good drain");
    let drain = config.fleets[0].drain.as_ref().expect("the drain");
    assert_eq!(drain.timeout, std::time::Duration::from_secs(120));
    assert_eq!(drain.hook_timeout, None);
}

#[cfg(feature = "azure")]
#[test]
fn a_drain_names_the_load_balancer_its_backend_cannot_use() {
    let azure_config = |drain: &str| {
        format!(
            r#"
        [[fleets]]
        name = "web"
        [fleets.adapter]
        kind = "azure"
        subscription_id = "00000000-0000-4000-8000-000000000000"
        resource_group = "demo"
        scale_set = "web"
        [fleets.signal]
        kind = "synthetic"
        [fleets.guards]
        min = 1
        max = 3
        [fleets.drain]
        {drain}
        "#
        )
    };
    let azure = |drain: &str| problems(&azure_config(drain)).join("\n");
    let pool = "/subscriptions/00000000-0000-4000-8000-000000000000/resourceGroups/demo/providers/Microsoft.Network/loadBalancers/web-lb/backendAddressPools/web";
    let good = Config::parse(
        &azure_config(&format!("backend_pool_id = \"{pool}\"")),
        Path::new("test.toml"),
    )
    .expect("a backend pool drains a scale set");
    let drain = good.fleets[0].drain.as_ref().expect("the drain");
    assert_eq!(drain.backend_pool_id.as_deref(), Some(pool));
    let found = azure(
        "backend_pool_id = \"/subscriptions/x/resourceGroups/demo/loadBalancers/web-lb\"\n\
         target_group_arn = \"arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef\"",
    );
    for expected in [
        "fleets[0].drain.backend_pool_id: \"/subscriptions/x/resourceGroups/demo/loadBalancers/web-lb\" is not a backend pool id",
        "fleets[0].drain.target_group_arn: an ELBv2 target group drains an AWS fleet (kind = \"aws\" or \"aws-asg\")",
    ] {
        assert!(
            found.contains(expected),
            "missing {expected:?} in:\n{found}"
        );
    }
    let mock = problems(&format!(
        "[[fleets]]\nname = \"web\"\n[fleets.adapter]\nkind = \"mock\"\n[fleets.signal]\nkind = \"synthetic\"\n\
         [fleets.guards]\nmin = 1\nmax = 3\n[fleets.drain]\nbackend_pool_id = \"{pool}\"\n"
    ))
    .join("\n");
    assert!(
        mock.contains("fleets[0].drain.backend_pool_id: an Azure load balancer backend pool drains a scale set (kind = \"azure\")"),
        "{mock}"
    );
}
