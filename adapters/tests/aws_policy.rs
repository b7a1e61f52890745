//! The least-privilege IAM policy, checked statically.
//!
//! The local emulator checks which actions a policy allows but evaluates neither its
//! conditions nor its resource ARNs, so the tag scoping is checked here: the document's
//! shape, then a small evaluator of the IAM features the document uses (Allow
//! statements, Resource/NotResource with wildcards, StringEquals, StringNotLike with
//! ForAllValues, Null, and the `${aws:PrincipalTag/...}` variable) run over the
//! requests EC2 authorises for the agent's calls. On a real account, confirm the same
//! cases with the IAM policy simulator (see the module docs of `fleetscale_adapters::aws`).
#![cfg(feature = "aws")]
// Tests: a panic is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use fleetscale_adapters::aws::{
    DEFAULT_FLEET_TAG_KEY, DEFAULT_PROTECTION_TAG_KEY, DRAINING_TAG, REQUIRED_PERMISSIONS,
};
use serde_json::Value;

fn policy() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../terraform/aws/fleetscale-agent-policy.json"
    );
    let text = std::fs::read_to_string(path).expect("the policy file exists");
    serde_json::from_str(&text).expect("the policy is JSON")
}

fn statements(policy: &Value) -> Vec<&Value> {
    match &policy["Statement"] {
        Value::Array(list) => list.iter().collect(),
        single @ Value::Object(_) => vec![single],
        other => panic!("Statement must be a list or an object, found {other}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect(),
        Value::Null => vec![],
        other => panic!("expected a string or a list of strings, found {other}"),
    }
}

#[test]
fn the_policy_allows_exactly_the_actions_the_adapter_needs() {
    let policy = policy();
    assert_eq!(policy["Version"], "2012-10-17");
    let mut actions: Vec<String> = statements(&policy)
        .iter()
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    actions.sort();
    actions.dedup();
    let mut needed: Vec<String> = REQUIRED_PERMISSIONS.iter().map(|s| s.to_string()).collect();
    needed.sort();
    assert_eq!(
        actions, needed,
        "no more and no fewer actions than the adapter calls"
    );
    for statement in statements(&policy) {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        assert!(
            statement.get("NotAction").is_none(),
            "NotAction widens a policy: {statement}"
        );
        for action in strings(&statement["Action"]) {
            assert!(!action.contains('*'), "no wildcard actions: {action}");
        }
    }
}

#[test]
fn every_mutating_statement_is_scoped_by_the_fleet_tag() {
    let policy = policy();
    let fleet_request = format!("aws:RequestTag/{DEFAULT_FLEET_TAG_KEY}");
    let fleet_resource = format!("ec2:ResourceTag/{DEFAULT_FLEET_TAG_KEY}");
    let principal = format!("${{aws:PrincipalTag/{DEFAULT_FLEET_TAG_KEY}}}");
    for statement in statements(&policy) {
        let actions = strings(&statement["Action"]);
        let resources = strings(&statement["Resource"]);
        let not_resources = strings(&statement["NotResource"]);
        let condition = &statement["Condition"];
        let equals = &condition["StringEquals"];
        if actions.iter().all(|a| a.starts_with("ec2:Describe")) {
            continue;
        }
        if actions.contains(&"ec2:RunInstances".to_string()) {
            if not_resources.is_empty() {
                assert!(
                    resources
                        .iter()
                        .all(|r| r.ends_with(":instance/*") || r.ends_with(":volume/*")),
                    "tag-scoped RunInstances covers only the resources it creates: {statement}"
                );
                assert_eq!(equals[&fleet_request], principal.as_str(), "{statement}");
            } else {
                // the statement for the template, image, subnet and network may not
                // cover the created instance or volume
                for created in ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"] {
                    assert!(
                        not_resources.iter().any(|r| r == created),
                        "{statement} must exclude {created}"
                    );
                }
            }
        }
        if actions.contains(&"ec2:CreateTags".to_string()) {
            if equals.get("ec2:CreateAction").is_some() {
                assert_eq!(equals["ec2:CreateAction"], "RunInstances", "{statement}");
                assert_eq!(equals[&fleet_request], principal.as_str(), "{statement}");
            } else {
                // Tagging an existing instance: only the drain's mark, only on the
                // agent's own fleet.
                assert_eq!(equals[&fleet_resource], principal.as_str(), "{statement}");
                assert_eq!(
                    condition["ForAllValues:StringEquals"]["aws:TagKeys"], DRAINING_TAG,
                    "{statement}"
                );
            }
        }
        if actions.contains(&"ec2:TerminateInstances".to_string()) {
            assert_eq!(equals[&fleet_resource], principal.as_str(), "{statement}");
            assert_eq!(
                condition["Null"][format!("ec2:ResourceTag/{DEFAULT_PROTECTION_TAG_KEY}")],
                "true",
                "{statement}"
            );
        }
    }
}

/// One authorisation request as IAM sees it.
struct Request<'a> {
    action: &'a str,
    resource: String,
    /// The principal's tags (the agent's role or user).
    principal_tags: &'a [(&'a str, &'a str)],
    /// Tags in the request (TagSpecifications).
    request_tags: &'a [(&'a str, &'a str)],
    /// Tags already on the resource.
    resource_tags: &'a [(&'a str, &'a str)],
    create_action: Option<&'a str>,
}

impl Request<'_> {
    /// The values of a condition key; empty when the key is absent.
    fn key(&self, key: &str) -> Vec<String> {
        let lookup = |tags: &[(&str, &str)], name: &str| -> Vec<String> {
            tags.iter()
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .collect()
        };
        if let Some(name) = key.strip_prefix("aws:RequestTag/") {
            lookup(self.request_tags, name)
        } else if let Some(name) = key
            .strip_prefix("ec2:ResourceTag/")
            .or_else(|| key.strip_prefix("aws:ResourceTag/"))
            .or_else(|| key.strip_prefix("autoscaling:ResourceTag/"))
        {
            lookup(self.resource_tags, name)
        } else if let Some(name) = key.strip_prefix("aws:PrincipalTag/") {
            lookup(self.principal_tags, name)
        } else if key == "aws:TagKeys" {
            self.request_tags
                .iter()
                .map(|(k, _)| k.to_string())
                .collect()
        } else if key == "ec2:CreateAction" {
            self.create_action
                .map(|a| vec![a.to_string()])
                .unwrap_or_default()
        } else {
            panic!("the evaluator does not know the condition key {key}: extend it")
        }
    }

    /// Substitute `${aws:PrincipalTag/...}`; None when the variable has no value
    /// (IAM then treats the condition as not matching).
    fn substitute(&self, pattern: &str) -> Option<String> {
        let Some(start) = pattern.find("${") else {
            return Some(pattern.to_owned());
        };
        let end = pattern[start..].find('}').expect("closed variable") + start;
        let value = self.key(&pattern[start + 2..end]).into_iter().next()?;
        Some(format!(
            "{}{}{}",
            &pattern[..start],
            value,
            &pattern[end + 1..]
        ))
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let mut memo = vec![vec![None; t.len() + 1]; p.len() + 1];
    fn go(p: &[char], t: &[char], i: usize, j: usize, memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(v) = memo[i][j] {
            return v;
        }
        let v = if i == p.len() {
            j == t.len()
        } else {
            match p[i] {
                '*' => go(p, t, i + 1, j, memo) || (j < t.len() && go(p, t, i, j + 1, memo)),
                '?' => j < t.len() && go(p, t, i + 1, j + 1, memo),
                c => j < t.len() && t[j] == c && go(p, t, i + 1, j + 1, memo),
            }
        };
        memo[i][j] = Some(v);
        v
    }
    go(&p, &t, 0, 0, &mut memo)
}

fn condition_holds(operator: &str, key: &str, expected: &Value, request: &Request) -> bool {
    let actual = request.key(key);
    let expected: Vec<Option<String>> = strings(expected)
        .iter()
        .map(|e| request.substitute(e))
        .collect();
    let (set, op) = match operator.split_once(':') {
        Some((set, op)) => (Some(set), op),
        None => (None, operator),
    };
    let matches = |value: &str| -> bool {
        expected.iter().flatten().any(|e| match op {
            "StringEquals" => value == e,
            "StringLike" => glob(e, value),
            "StringNotLike" => !glob(e, value),
            other => panic!("the evaluator does not know the operator {other}: extend it"),
        })
    };
    match (set, op) {
        (None, "Null") => {
            let want_absent = expected.iter().flatten().any(|e| e == "true");
            actual.is_empty() == want_absent
        }
        (None, "StringNotLike") => !actual.is_empty() && actual.iter().all(|v| matches(v)),
        (None, _) => actual.iter().any(|v| matches(v)),
        (Some("ForAllValues"), _) => actual.iter().all(|v| matches(v)),
        (Some("ForAnyValue"), _) => actual.iter().any(|v| matches(v)),
        (Some(other), _) => panic!("unknown set operator {other}"),
    }
}

/// Whether the policy allows one request (it has no Deny statements; the first test
/// checks that).
fn allows(policy: &Value, request: &Request) -> bool {
    statements(policy).iter().any(|statement| {
        let action_matches = strings(&statement["Action"])
            .iter()
            .any(|a| glob(a, request.action));
        let resource_matches = if statement.get("NotResource").is_some() {
            !strings(&statement["NotResource"])
                .iter()
                .any(|r| glob(r, &request.resource))
        } else {
            strings(&statement["Resource"])
                .iter()
                .any(|r| glob(r, &request.resource))
        };
        let conditions: BTreeMap<String, Value> = statement
            .get("Condition")
            .and_then(Value::as_object)
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let conditions_hold = conditions.iter().all(|(operator, keys)| {
            keys.as_object()
                .expect("condition block is an object")
                .iter()
                .all(|(key, expected)| condition_holds(operator, key, expected, request))
        });
        action_matches && resource_matches && conditions_hold
    })
}

const ARN: &str = "arn:aws:ec2:us-east-1:123456789012";
const AGENT: &[(&str, &str)] = &[("fleetscale:fleet", "web")];
const FLEET_TAGS: &[(&str, &str)] = &[("fleetscale:fleet", "web"), ("team", "search")];

/// RunInstances as EC2 authorises it: every resource the launch touches or creates.
fn launch_allowed(
    policy: &Value,
    principal: &[(&str, &str)],
    request_tags: &[(&str, &str)],
) -> bool {
    let used = [
        format!("{ARN}:subnet/subnet-0abc"),
        format!("{ARN}:security-group/sg-0abc"),
        format!("{ARN}:network-interface/eni-0abc"),
        format!("{ARN}:launch-template/lt-0abc"),
        "arn:aws:ec2:us-east-1::image/ami-0abc".to_string(),
    ];
    let created = [format!("{ARN}:instance/*"), format!("{ARN}:volume/*")];
    let run = |resource: &String, tags| {
        allows(
            policy,
            &Request {
                action: "ec2:RunInstances",
                resource: resource.clone(),
                principal_tags: principal,
                request_tags: tags,
                resource_tags: &[],
                create_action: None,
            },
        )
    };
    let tagging = created.iter().all(|resource| {
        request_tags.is_empty()
            || allows(
                policy,
                &Request {
                    action: "ec2:CreateTags",
                    resource: resource.clone(),
                    principal_tags: principal,
                    request_tags,
                    resource_tags: &[],
                    create_action: Some("RunInstances"),
                },
            )
    });
    used.iter().all(|r| run(r, &[])) && created.iter().all(|r| run(r, request_tags)) && tagging
}

fn terminate_allowed(
    policy: &Value,
    principal: &[(&str, &str)],
    instance_tags: &[(&str, &str)],
) -> bool {
    allows(
        policy,
        &Request {
            action: "ec2:TerminateInstances",
            resource: format!("{ARN}:instance/i-0abc"),
            principal_tags: principal,
            request_tags: &[],
            resource_tags: instance_tags,
            create_action: None,
        },
    )
}

#[test]
fn launches_only_instances_tagged_with_the_agents_fleet() {
    let policy = policy();
    assert!(launch_allowed(&policy, AGENT, FLEET_TAGS));
    assert!(!launch_allowed(&policy, AGENT, &[]), "untagged launch");
    assert!(
        !launch_allowed(&policy, AGENT, &[("fleetscale:fleet", "batch")]),
        "another fleet"
    );
    assert!(
        !launch_allowed(&policy, &[], FLEET_TAGS),
        "a principal without the fleet tag"
    );
    assert!(
        !launch_allowed(
            &policy,
            AGENT,
            &[("fleetscale:fleet", "web"), ("fleetscale:protected", "yes")]
        ),
        "the agent may not launch protected instances"
    );
}

#[test]
fn tags_only_at_launch() {
    let policy = policy();
    let tag = |create_action| {
        allows(
            &policy,
            &Request {
                action: "ec2:CreateTags",
                resource: format!("{ARN}:instance/i-0abc"),
                principal_tags: AGENT,
                request_tags: &[("fleetscale:fleet", "web")],
                resource_tags: &[],
                create_action,
            },
        )
    };
    assert!(tag(Some("RunInstances")));
    assert!(
        !tag(None),
        "retagging an existing instance (joining it to the fleet)"
    );
    assert!(!tag(Some("CreateVolume")));
}

#[test]
fn marks_only_its_own_fleets_instances_and_only_as_draining() {
    let policy = policy();
    let mark = |principal, request_tags, resource_tags| {
        allows(
            &policy,
            &Request {
                action: "ec2:CreateTags",
                resource: format!("{ARN}:instance/i-0abc"),
                principal_tags: principal,
                request_tags,
                resource_tags,
                create_action: None,
            },
        )
    };
    let draining: &[(&str, &str)] = &[(DRAINING_TAG, "1700000000")];
    assert!(mark(AGENT, draining, FLEET_TAGS));
    assert!(
        !mark(AGENT, draining, &[("fleetscale:fleet", "batch")]),
        "another fleet's instance"
    );
    assert!(!mark(AGENT, draining, &[]), "an instance of no fleet");
    assert!(!mark(&[], draining, FLEET_TAGS), "a principal of no fleet");
    assert!(
        !mark(AGENT, &[("fleetscale:protected", "true")], FLEET_TAGS),
        "any other tag: protection"
    );
    assert!(
        !mark(
            AGENT,
            &[(DRAINING_TAG, "1700000000"), ("fleetscale:fleet", "batch")],
            FLEET_TAGS
        ),
        "the mark with another tag: moving the instance to another fleet"
    );
}

#[test]
fn terminates_only_unprotected_instances_of_the_agents_fleet() {
    let policy = policy();
    assert!(terminate_allowed(&policy, AGENT, FLEET_TAGS));
    assert!(!terminate_allowed(&policy, AGENT, &[]), "untagged instance");
    assert!(
        !terminate_allowed(&policy, AGENT, &[("fleetscale:fleet", "batch")]),
        "another fleet's"
    );
    assert!(
        !terminate_allowed(
            &policy,
            AGENT,
            &[
                ("fleetscale:fleet", "web"),
                ("fleetscale:protected", "true")
            ]
        ),
        "a protected instance"
    );
    assert!(
        !terminate_allowed(&policy, &[], FLEET_TAGS),
        "a principal without the fleet tag"
    );
}

#[test]
fn reads_need_no_tag() {
    let policy = policy();
    for action in ["ec2:DescribeInstances", "ec2:DescribeSubnets"] {
        assert!(allows(
            &policy,
            &Request {
                action,
                resource: "*".into(),
                principal_tags: AGENT,
                request_tags: &[],
                resource_tags: &[],
                create_action: None,
            }
        ));
    }
    assert!(!allows(
        &policy,
        &Request {
            action: "ec2:StopInstances",
            resource: format!("{ARN}:instance/i-0abc"),
            principal_tags: AGENT,
            request_tags: &[],
            resource_tags: FLEET_TAGS,
            create_action: None,
        }
    ));
}

#[test]
fn the_evaluator_matches_globs_like_iam() {
    assert!(glob(
        "arn:aws:ec2:*:*:instance/*",
        "arn:aws:ec2:us-east-1:1:instance/i-1"
    ));
    assert!(!glob(
        "arn:aws:ec2:*:*:instance/*",
        "arn:aws:ec2:us-east-1:1:volume/v-1"
    ));
    assert!(glob("fleetscale:protected", "fleetscale:protected"));
    assert!(glob("?*", "x"));
    assert!(!glob("?*", ""));
}

fn asg_policy() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../terraform/aws/fleetscale-asg-policy.json"
    );
    let text = std::fs::read_to_string(path).expect("the ASG policy file exists");
    serde_json::from_str(&text).expect("the ASG policy is JSON")
}

const GROUP_ARN: &str = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:\
     0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0:autoScalingGroupName/web-asg";

/// One Auto Scaling request on a group carrying `group_tags`.
fn asg_allowed(
    policy: &Value,
    action: &str,
    principal: &[(&str, &str)],
    group_tags: &[(&str, &str)],
    request_tags: &[(&str, &str)],
) -> bool {
    allows(
        policy,
        &Request {
            action,
            resource: GROUP_ARN.to_owned(),
            principal_tags: principal,
            request_tags,
            resource_tags: group_tags,
            create_action: None,
        },
    )
}

#[test]
fn the_asg_policy_scopes_every_change_to_groups_of_the_agents_fleet() {
    use fleetscale_adapters::aws::asg::{GROW_TAG, REQUIRED_ASG_PERMISSIONS};
    let policy = asg_policy();
    let mut granted: Vec<String> = statements(&policy)
        .iter()
        .inspect(|s| assert_eq!(s["Effect"], "Allow", "{s}"))
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    granted.sort();
    let mut needed: Vec<String> = REQUIRED_ASG_PERMISSIONS
        .iter()
        .map(|a| a.to_string())
        .collect();
    needed.sort();
    assert_eq!(
        granted, needed,
        "the ASG policy grants exactly what the adapter calls"
    );

    let own: &[(&str, &str)] = &[("fleetscale:fleet", "web")];
    let other: &[(&str, &str)] = &[("fleetscale:fleet", "batch")];
    let grow_mark: &[(&str, &str)] = &[(GROW_TAG, "token@3")];
    for action in [
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ] {
        assert!(
            asg_allowed(&policy, action, AGENT, own, &[]),
            "{action} on its own group"
        );
        assert!(
            !asg_allowed(&policy, action, AGENT, other, &[]),
            "{action} on another fleet's group"
        );
        assert!(
            !asg_allowed(&policy, action, AGENT, &[], &[]),
            "{action} on an untagged group"
        );
        assert!(
            !asg_allowed(&policy, action, &[], own, &[]),
            "{action} by an untagged principal"
        );
    }
    let tags = "autoscaling:CreateOrUpdateTags";
    assert!(
        asg_allowed(&policy, tags, AGENT, own, grow_mark),
        "the grow mark on its own group"
    );
    assert!(
        !asg_allowed(&policy, tags, AGENT, other, grow_mark),
        "the grow mark on another group"
    );
    assert!(
        !asg_allowed(&policy, tags, AGENT, own, &[("fleetscale:fleet", "batch")]),
        "retagging its group to another fleet"
    );
    assert!(
        !asg_allowed(
            &policy,
            tags,
            AGENT,
            own,
            &[(GROW_TAG, "t@1"), ("team", "x")]
        ),
        "any tag but the grow mark"
    );
    for read in [
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeInstanceRefreshes",
    ] {
        assert!(
            allows(
                &policy,
                &Request {
                    action: read,
                    resource: "*".into(),
                    principal_tags: AGENT,
                    request_tags: &[],
                    resource_tags: &[],
                    create_action: None,
                },
            ),
            "{read}"
        );
    }
}

#[test]
fn the_drain_policy_deregisters_only_from_target_groups_of_the_agents_fleet() {
    use fleetscale_adapters::aws::target_group::REQUIRED_DRAIN_PERMISSIONS;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../terraform/aws/fleetscale-drain-policy.json"
    );
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut actions: Vec<String> = statements(&policy)
        .iter()
        .flat_map(|s| strings(&s["Action"]))
        .collect();
    actions.sort();
    let mut needed: Vec<String> = REQUIRED_DRAIN_PERMISSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    needed.sort();
    assert_eq!(actions, needed);
    let group =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef";
    let call = |action, resource_tags| {
        allows(
            &policy,
            &Request {
                action,
                resource: group.to_string(),
                principal_tags: AGENT,
                request_tags: &[],
                resource_tags,
                create_action: None,
            },
        )
    };
    assert!(call("elasticloadbalancing:DeregisterTargets", FLEET_TAGS));
    assert!(
        !call(
            "elasticloadbalancing:DeregisterTargets",
            &[("fleetscale:fleet", "batch")]
        ),
        "another fleet's target group"
    );
    assert!(
        !call("elasticloadbalancing:DeregisterTargets", &[]),
        "a target group of no fleet"
    );
    assert!(call("elasticloadbalancing:DescribeTargetHealth", &[]));
    assert!(
        !call("elasticloadbalancing:RegisterTargets", FLEET_TAGS),
        "the drain never registers"
    );
}

#[test]
fn the_asg_policy_marks_only_its_own_fleets_instances_and_only_as_draining() {
    let policy = asg_policy();
    let mark = |request_tags, resource_tags| {
        allows(
            &policy,
            &Request {
                action: "ec2:CreateTags",
                resource: format!("{ARN}:instance/i-0abc"),
                principal_tags: AGENT,
                request_tags,
                resource_tags,
                create_action: None,
            },
        )
    };
    let draining: &[(&str, &str)] = &[(DRAINING_TAG, "1700000000")];
    assert!(mark(draining, FLEET_TAGS));
    assert!(
        !mark(draining, &[("fleetscale:fleet", "batch")]),
        "another fleet's"
    );
    assert!(
        !mark(&[("fleetscale:fleet", "batch")], FLEET_TAGS),
        "moving an instance to another fleet"
    );
}
