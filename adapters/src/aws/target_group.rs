//! An ELBv2 target group that a fleet's instances are registered in by instance id: the
//! load balancer a drain deregisters them from.
//!
//! Deregistering a target starts its drain: the load balancer sends it no new requests,
//! lets those in flight finish for the group's deregistration delay (300 s by default),
//! and then reports it `unused`; while it waits, the target's state is `draining`
//! (Elastic Load Balancing User Guide for Application Load Balancers, "Deregistration
//! delay"; API Reference, DeregisterTargets and DescribeTargetHealth, TargetHealth.State).
//! The agent's permissions for it are in `terraform/aws/fleetscale-drain-policy.json`.

use std::collections::HashMap;

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};

use super::{SdkSettings, errors, load_sdk};
use crate::{InstanceId, Result};

/// Targets per DeregisterTargets or DescribeTargetHealth call.
const TARGETS_PER_CALL: usize = 20;

/// The permissions a target group drain needs.
pub const REQUIRED_DRAIN_PERMISSIONS: [&str; 2] = [
    "elasticloadbalancing:DeregisterTargets",
    "elasticloadbalancing:DescribeTargetHealth",
];

/// A target's drain, as the target group reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetDrain {
    /// Still registered and receiving requests (`initial`, `healthy`, `unhealthy`...):
    /// not deregistered yet.
    Registered,
    /// Deregistered, requests in flight finishing.
    Draining,
    /// Not registered (`unused`, or a target the group does not know): drained.
    Gone,
}

#[derive(Debug, Clone)]
pub struct TargetGroup {
    client: aws_sdk_elasticloadbalancingv2::Client,
    arn: String,
}

impl TargetGroup {
    /// Connects to the target group `arn` with the fleet's AWS settings (region,
    /// profile, endpoint: an EC2 fleet's or an Auto Scaling group's) and the default
    /// credential chain. Nothing is called yet.
    pub async fn connect(fleet_name: &str, settings: SdkSettings<'_>, arn: &str) -> Result<Self> {
        Self::connect_inner(fleet_name, settings, arn, None).await
    }

    /// [`connect`](Self::connect) with an explicit credentials provider.
    pub async fn connect_with_credentials(
        fleet_name: &str,
        settings: SdkSettings<'_>,
        arn: &str,
        credentials: impl aws_credential_types::provider::ProvideCredentials + 'static,
    ) -> Result<Self> {
        let provider = aws_credential_types::provider::SharedCredentialsProvider::new(credentials);
        Self::connect_inner(fleet_name, settings, arn, Some(provider)).await
    }

    async fn connect_inner(
        fleet_name: &str,
        settings: SdkSettings<'_>,
        arn: &str,
        credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    ) -> Result<Self> {
        let (sdk, _region) = load_sdk(fleet_name, settings, credentials).await?;
        Ok(TargetGroup {
            client: aws_sdk_elasticloadbalancingv2::Client::new(&sdk),
            arn: arn.to_owned(),
        })
    }

    /// The group's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    fn targets(ids: &[InstanceId]) -> Vec<TargetDescription> {
        ids.iter()
            .map(|id| TargetDescription::builder().id(id).build())
            .collect()
    }

    /// Deregisters the instances (which starts their drain).
    pub async fn deregister(&self, ids: &[InstanceId]) -> Result<()> {
        for chunk in ids.chunks(TARGETS_PER_CALL) {
            self.client
                .deregister_targets()
                .target_group_arn(&self.arn)
                .set_targets(Some(Self::targets(chunk)))
                .send()
                .await
                .map_err(|e| errors::from_sdk("elasticloadbalancing:DeregisterTargets", e))?;
        }
        Ok(())
    }

    /// Where each instance's drain stands.
    pub async fn drains(&self, ids: &[InstanceId]) -> Result<HashMap<InstanceId, TargetDrain>> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(TARGETS_PER_CALL) {
            let out = self
                .client
                .describe_target_health()
                .target_group_arn(&self.arn)
                .set_targets(Some(Self::targets(chunk)))
                .send()
                .await
                .map_err(|e| errors::from_sdk("elasticloadbalancing:DescribeTargetHealth", e))?;
            for description in out.target_health_descriptions() {
                let Some(id) = description.target().and_then(|t| t.id()) else {
                    continue;
                };
                let state = description.target_health().and_then(|h| h.state());
                let drain = match state {
                    Some(TargetHealthStateEnum::Draining) => TargetDrain::Draining,
                    Some(TargetHealthStateEnum::Unused) | None => TargetDrain::Gone,
                    Some(_) => TargetDrain::Registered,
                };
                found.insert(id.to_owned(), drain);
            }
        }
        Ok(found)
    }
}
