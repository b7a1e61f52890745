//! verify-access: who the credentials are, and a DryRun probe per needed permission.
//!
//! EC2's DryRun flag checks authorisation and answers `DryRunOperation` (allowed) or
//! `UnauthorizedOperation` (denied) without doing anything. Tags are applied at launch
//! (RunInstances with TagSpecifications), which EC2 authorises as `ec2:CreateTags` with
//! `ec2:CreateAction = RunInstances` inside the RunInstances call; the least-privilege
//! policy allows CreateTags only that way, so a standalone CreateTags probe would be
//! refused by design. The RunInstances probe therefore proves both.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::{Ec2Fleet, errors};
use crate::{AccessReport, AdapterError, PermissionCheck, Result};

/// A syntactically valid instance id that names no instance, for probing
/// TerminateInstances when the fleet is empty.
const PLACEHOLDER_INSTANCE: &str = "i-00000000000000000";

enum Probe {
    Allowed(String),
    Denied(String),
}

pub(super) async fn verify(fleet: &Ec2Fleet) -> Result<AccessReport> {
    let identity = fleet
        .sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| errors::from_sdk("sts:GetCallerIdentity", e))?;
    let identity = identity.arn().unwrap_or("unknown identity").to_owned();

    let mut checks = Vec::new();

    let describe = probe(
        "ec2:DescribeInstances",
        fleet
            .ec2
            .describe_instances()
            .dry_run(true)
            .filters(fleet.fleet_filter())
            .send()
            .await,
    )?;
    checks.push(check("ec2:DescribeInstances", describe));

    let subnets = probe(
        "ec2:DescribeSubnets",
        fleet
            .ec2
            .describe_subnets()
            .dry_run(true)
            .set_subnet_ids(Some(fleet.subnet_ids.clone()))
            .send()
            .await,
    )?;
    checks.push(check("ec2:DescribeSubnets", subnets));

    let [instance_tags, volume_tags] = fleet.tag_specifications();
    let first_subnet = fleet.subnet_ids.first().ok_or_else(|| {
        AdapterError::invalid(format!(
            "fleet {} has no subnet to probe ec2:RunInstances in: list at least one subnet",
            fleet.fleet_name
        ))
    })?;
    let launch = probe(
        "ec2:RunInstances",
        fleet
            .ec2
            .run_instances()
            .dry_run(true)
            .launch_template(fleet.template.clone())
            .subnet_id(first_subnet)
            .min_count(1)
            .max_count(1)
            .tag_specifications(instance_tags)
            .tag_specifications(volume_tags)
            .send()
            .await,
    )?;
    let tag_detail = match &launch {
        Probe::Allowed(_) => Probe::Allowed(
            "tagging at launch is allowed: proven by the RunInstances probe with the fleet's tags"
                .into(),
        ),
        Probe::Denied(why) => Probe::Denied(format!(
            "checked within the RunInstances probe with the fleet's tags, which was denied: {why}"
        )),
    };
    checks.push(check("ec2:RunInstances", launch));
    checks.push(check("ec2:CreateTags", tag_detail));

    // Probe against a real fleet member when there is one, so that EC2 evaluates the
    // policy's fleet-tag condition; reading the fleet changes nothing.
    let member = match fleet.describe_fleet().await {
        Ok(instances) => instances.into_iter().map(|i| i.instance.id).next(),
        Err(_) => None,
    };
    let target = member
        .clone()
        .unwrap_or_else(|| PLACEHOLDER_INSTANCE.to_owned());
    let terminate = match fleet
        .ec2
        .terminate_instances()
        .dry_run(true)
        .instance_ids(&target)
        .send()
        .await
    {
        Err(SdkError::ServiceError(service))
            if member.is_none() && service.err().code().is_some_and(is_not_found) =>
        {
            Probe::Allowed(
                "not denied; the fleet has no instance yet, so its fleet-tag condition is first evaluated at the first scale-in"
                    .into(),
            )
        }
        other => probe("ec2:TerminateInstances", other)?,
    };
    checks.push(check("ec2:TerminateInstances", terminate));

    Ok(AccessReport { identity, checks })
}

fn is_not_found(code: &str) -> bool {
    code.starts_with("InvalidInstanceID")
}

fn check(permission: &str, probe: Probe) -> PermissionCheck {
    let (allowed, detail) = match probe {
        Probe::Allowed(detail) => (true, detail),
        Probe::Denied(detail) => (false, detail),
    };
    PermissionCheck {
        permission: permission.to_owned(),
        allowed,
        detail,
    }
}

/// Read a DryRun call's answer. Denials are results; failures that say nothing about
/// the permission (throttling, a network error, refused credentials) are errors, so
/// the caller's retry or report handles them.
fn probe<T, E>(
    action: &str,
    result: std::result::Result<T, SdkError<E, HttpResponse>>,
) -> Result<Probe>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let err = match result {
        // DryRun ignored by the endpoint: the call was allowed (and made).
        Ok(_) => {
            return Ok(Probe::Allowed(
                "allowed (the endpoint ignored DryRun)".into(),
            ));
        }
        Err(err) => err,
    };
    if err.code() == Some("DryRunOperation") {
        return Ok(Probe::Allowed("allowed (DryRunOperation)".into()));
    }
    match errors::from_sdk(action, err) {
        AdapterError::Permission { message, .. } => Ok(Probe::Denied(format!("denied: {message}"))),
        err @ (AdapterError::Authentication { .. }
        | AdapterError::Throttled { .. }
        | AdapterError::Transient { .. }) => Err(err),
        other => Ok(Probe::Denied(format!("the probe failed: {other}"))),
    }
}
