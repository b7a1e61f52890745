//! AWS EC2: a fleet is the set of instances carrying the fleet tag.
//!
//! [`Ec2Fleet`] reads the fleet with DescribeInstances (filtered by the tag and by live
//! states), grows it with RunInstances from a launch template (tags on the instance and
//! its volumes, a ClientToken per call, zones kept balanced), shrinks it with
//! TerminateInstances after checking that every named instance is in the fleet and not
//! protected, and verifies access with STS GetCallerIdentity and DryRun probes.
//!
//! Credentials come from the AWS default chain (environment, shared config and
//! credentials files with profiles, SSO, web identity, instance metadata), or from an
//! explicit provider ([`Ec2Fleet::connect_with_credentials`]). The SDK's own retries are
//! off: retry and backoff are the [`crate::Retry`] decorator's job, so that a refused
//! key is reported once instead of being retried.
//!
//! # The IAM policy
//!
//! The least-privilege policy for the agent is `terraform/aws/fleetscale-agent-policy.json`
//! (load it verbatim, e.g. Terraform's `file()`, not `templatefile()`). It compares the
//! fleet tag of every launch, tag-on-launch and termination with the agent principal's
//! own `fleetscale:fleet` tag (`${aws:PrincipalTag/fleetscale:fleet}`), so tag the role
//! or user with its fleet's name; it never allows tagging an existing instance, launching
//! one that carries `fleetscale:protected`, or terminating one that does. One principal
//! manages one fleet. It grants no `iam:PassRole`: a launch template with an instance
//! profile needs one more statement, `iam:PassRole` on that role's ARN with the condition
//! `iam:PassedToService = ec2.amazonaws.com`. If the config changes `fleet_tag_key` or
//! `protection_tag_key`, change the keys in the policy too.
//!
//! The local emulator enforces which actions the policy allows but not its conditions, so
//! `tests/aws_policy.rs` checks them statically. On a real account, confirm them with the
//! IAM policy simulator (expect `allowed`, then `implicitDeny`):
//!
//! ```text
//! ROLE=arn:aws:iam::123456789012:role/fleetscale-agent
//! ARN=arn:aws:ec2:eu-west-1:123456789012
//! sim() { aws iam simulate-principal-policy --policy-source-arn "$ROLE" \
//!   --query 'EvaluationResults[].[EvalActionName,EvalDecision]' --output text "$@"; }
//! tag() { echo "ContextKeyName=$1,ContextKeyValues=$2,ContextKeyType=string"; }
//! ME=$(tag aws:PrincipalTag/fleetscale:fleet web)
//! sim --action-names ec2:RunInstances --resource-arns "$ARN:instance/*" \
//!   --context-entries "$ME" "$(tag aws:RequestTag/fleetscale:fleet web)"     # allowed
//! sim --action-names ec2:RunInstances --resource-arns "$ARN:instance/*" \
//!   --context-entries "$ME" "$(tag aws:RequestTag/fleetscale:fleet batch)"   # implicitDeny
//! sim --action-names ec2:CreateTags --resource-arns "$ARN:instance/*" \
//!   --context-entries "$ME" "$(tag aws:RequestTag/fleetscale:fleet web)" \
//!   "$(tag ec2:CreateAction RunInstances)"                                   # allowed
//! sim --action-names ec2:CreateTags --resource-arns "$ARN:instance/i-0abc" \
//!   --context-entries "$ME" "$(tag aws:RequestTag/fleetscale:fleet web)"     # implicitDeny
//! sim --action-names ec2:TerminateInstances --resource-arns "$ARN:instance/i-0abc" \
//!   --context-entries "$ME" "$(tag ec2:ResourceTag/fleetscale:fleet web)"    # allowed
//! sim --action-names ec2:TerminateInstances --resource-arns "$ARN:instance/i-0abc" \
//!   --context-entries "$ME" "$(tag ec2:ResourceTag/fleetscale:fleet batch)"  # implicitDeny
//! sim --action-names ec2:TerminateInstances --resource-arns "$ARN:instance/i-0abc" \
//!   --context-entries "$ME" "$(tag ec2:ResourceTag/fleetscale:fleet web)" \
//!   "$(tag ec2:ResourceTag/fleetscale:protected true)"                       # implicitDeny
//! ```
//!
//! `fleetscale check` then proves, with DryRun calls, that the credentials reach each
//! permission for this fleet's launch template, subnets and tags.

mod access;
pub mod asg;
mod config;
mod errors;
mod placement;
pub mod target_group;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::types::{
    Filter, InstanceStateName, LaunchTemplateSpecification, ResourceType, Tag, TagSpecification,
};
use tokio::sync::OnceCell;

pub use aws_credential_types::Credentials;
pub use aws_credential_types::provider::ProvideCredentials;
pub use config::{
    AsgConfig, AwsConfig, ConfigProblem, DEFAULT_FLEET_TAG_KEY, DEFAULT_LAUNCH_TEMPLATE_VERSION,
    DEFAULT_PROTECTION_TAG_KEY, LaunchTemplateRef,
};

use crate::{
    AccessReport, AdapterError, CloudAdapter, Fleet, GrowOutcome, IdempotencyToken, Instance,
    InstanceId, InstanceState, Result, ShrinkOutcome,
};
use placement::Subnet;

/// The IAM actions the adapter calls, each probed by [`CloudAdapter::verify_access`]
/// (STS GetCallerIdentity needs no permission).
pub const REQUIRED_PERMISSIONS: [&str; 5] = [
    "ec2:DescribeInstances",
    "ec2:DescribeSubnets",
    "ec2:RunInstances",
    "ec2:CreateTags",
    "ec2:TerminateInstances",
];

/// EC2 states of instances that count as the fleet's (billed, not yet gone).
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "shutting-down"];
/// DescribeInstances page size by default (EC2's maximum).
const DEFAULT_PAGE_SIZE: i32 = 1000;
/// Instance ids per DescribeInstances filter and per TerminateInstances call.
const IDS_PER_CALL: usize = 100;

/// One EC2 fleet, managed through the EC2 API.
pub struct Ec2Fleet {
    ec2: aws_sdk_ec2::Client,
    sts: aws_sdk_sts::Client,
    fleet_name: String,
    region: String,
    fleet_tag_key: String,
    fleet_tag_value: String,
    protection_tag_key: String,
    template: LaunchTemplateSpecification,
    subnet_ids: Vec<String>,
    tags: Vec<Tag>,
    page_size: i32,
    /// The configured subnets' zones, looked up once (DescribeSubnets).
    subnets: OnceCell<Vec<Subnet>>,
}

impl std::fmt::Debug for Ec2Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Fleet")
            .field("fleet", &self.fleet_name)
            .field("region", &self.region)
            .field(
                "tag",
                &format!("{}={}", self.fleet_tag_key, self.fleet_tag_value),
            )
            .field("subnets", &self.subnet_ids)
            .finish()
    }
}

/// An instance as DescribeInstances reports it, with what the adapter needs beyond
/// the trait's [`Instance`].
#[derive(Debug, Clone)]
struct Ec2Instance {
    instance: Instance,
    /// The EC2 state name (`shutting-down`, `terminated`…).
    state_name: String,
    subnet_id: Option<String>,
    client_token: Option<String>,
    tags: HashMap<String, String>,
}

/// Where and as whom a fleet's AWS clients call: the settings every AWS backend, and the
/// target group a fleet drains through, share.
#[derive(Debug, Clone, Copy, Default)]
pub struct SdkSettings<'a> {
    pub region: Option<&'a str>,
    pub profile: Option<&'a str>,
    pub endpoint_url: Option<&'a str>,
}

impl AwsConfig {
    pub fn sdk_settings(&self) -> SdkSettings<'_> {
        SdkSettings {
            region: self.region.as_deref(),
            profile: self.profile.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
        }
    }
}

impl AsgConfig {
    pub fn sdk_settings(&self) -> SdkSettings<'_> {
        SdkSettings {
            region: self.region.as_deref(),
            profile: self.profile.as_deref(),
            endpoint_url: self.endpoint_url.as_deref(),
        }
    }
}

/// The SDK's settings for one fleet's clients, and the region they resolve to: the
/// region, profile and endpoint given (else the AWS default chain's), the given
/// credentials (else the default chain), SDK retries off (retrying is the [`crate::Retry`]
/// decorator's job: SDK retries underneath it would multiply attempts and hide throttling
/// from the controller), bounded timeouts.
pub(crate) async fn load_sdk(
    fleet_name: &str,
    settings: SdkSettings<'_>,
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
) -> Result<(aws_config::SdkConfig, String)> {
    let SdkSettings {
        region,
        profile,
        endpoint_url,
    } = settings;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(provider) = credentials {
        loader = loader.credentials_provider(provider);
    }
    let sdk = loader.load().await;
    let region = sdk.region().map(ToString::to_string).ok_or_else(|| {
        AdapterError::invalid(format!(
            "no AWS region for fleet {fleet_name}: set `region` in its config, AWS_REGION, or the profile's region"
        ))
    })?;
    Ok((sdk, region))
}

impl Ec2Fleet {
    /// Connect to the fleet `fleet_name` with credentials from the AWS default chain.
    /// Nothing is called yet: a wrong key shows at the first call ([`Self::verify_access`]).
    pub async fn connect(fleet_name: &str, config: &AwsConfig) -> Result<Self> {
        Self::connect_inner(fleet_name, config, None).await
    }

    /// Connect with an explicit credentials provider instead of the default chain
    /// (embedding, tests that run side by side with different identities).
    pub async fn connect_with_credentials(
        fleet_name: &str,
        config: &AwsConfig,
        credentials: impl ProvideCredentials + 'static,
    ) -> Result<Self> {
        let provider = aws_credential_types::provider::SharedCredentialsProvider::new(credentials);
        Self::connect_inner(fleet_name, config, Some(provider)).await
    }

    /// Instances per DescribeInstances page (5 to 1000; default 1000).
    pub fn with_page_size(mut self, page_size: u16) -> Self {
        self.page_size = i32::from(page_size).clamp(5, DEFAULT_PAGE_SIZE);
        self
    }

    /// The name of the fleet.
    pub fn fleet_name(&self) -> &str {
        &self.fleet_name
    }

    /// The region the calls go to.
    pub fn region(&self) -> &str {
        &self.region
    }

    async fn connect_inner(
        fleet_name: &str,
        config: &AwsConfig,
        credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    ) -> Result<Self> {
        config::refuse("AWS", fleet_name, &config.validate())?;
        let fleet_tag_value = config.fleet_tag_value_for(fleet_name).to_owned();
        if fleet_tag_value.is_empty() {
            return Err(AdapterError::invalid(
                "the fleet has no name: set fleet_tag_value".to_string(),
            ));
        }

        let (sdk, region) = load_sdk(fleet_name, config.sdk_settings(), credentials).await?;

        let template = {
            let lt = &config.launch_template;
            let mut spec = LaunchTemplateSpecification::builder().version(lt.version.clone());
            if let Some(id) = &lt.id {
                spec = spec.launch_template_id(id);
            }
            if let Some(name) = &lt.name {
                spec = spec.launch_template_name(name);
            }
            spec.build()
        };
        let mut tags = vec![
            Tag::builder()
                .key(&config.fleet_tag_key)
                .value(&fleet_tag_value)
                .build(),
        ];
        tags.extend(
            config
                .extra_tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build()),
        );

        Ok(Ec2Fleet {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            sts: aws_sdk_sts::Client::new(&sdk),
            fleet_name: fleet_name.to_owned(),
            region,
            fleet_tag_key: config.fleet_tag_key.clone(),
            fleet_tag_value,
            protection_tag_key: config.protection_tag_key.clone(),
            template,
            subnet_ids: config.subnets.clone(),
            tags,
            page_size: DEFAULT_PAGE_SIZE,
            subnets: OnceCell::new(),
        })
    }

    fn fleet_filter(&self) -> Filter {
        Filter::builder()
            .name(format!("tag:{}", self.fleet_tag_key))
            .values(&self.fleet_tag_value)
            .build()
    }

    fn live_state_filter() -> Filter {
        let mut filter = Filter::builder().name("instance-state-name");
        for state in LIVE_STATES {
            filter = filter.values(state);
        }
        filter.build()
    }

    /// The fleet's tags, for the instance and for its volumes.
    fn tag_specifications(&self) -> [TagSpecification; 2] {
        [ResourceType::Instance, ResourceType::Volume].map(|resource| {
            TagSpecification::builder()
                .resource_type(resource)
                .set_tags(Some(self.tags.clone()))
                .build()
        })
    }

    /// Live instances of the fleet, every page.
    async fn describe_fleet(&self) -> Result<Vec<Ec2Instance>> {
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(self.fleet_filter())
            .filters(Self::live_state_filter())
            .into_paginator()
            .page_size(self.page_size)
            .items()
            .send();
        let mut instances = Vec::new();
        while let Some(reservation) = pages.next().await {
            let reservation =
                reservation.map_err(|e| errors::from_sdk("ec2:DescribeInstances", e))?;
            instances.extend(
                reservation
                    .instances()
                    .iter()
                    .filter_map(|i| self.convert(i)),
            );
        }
        Ok(instances)
    }

    /// The named instances in any state, whether in the fleet or not.
    async fn describe_ids(&self, ids: &[InstanceId]) -> Result<Vec<Ec2Instance>> {
        let mut found = Vec::new();
        for chunk in ids.chunks(IDS_PER_CALL) {
            // A filter, unlike InstanceIds, does not fail the call on an unknown id.
            let mut filter = Filter::builder().name("instance-id");
            for id in chunk {
                filter = filter.values(id);
            }
            let mut pages = self
                .ec2
                .describe_instances()
                .filters(filter.build())
                .into_paginator()
                .page_size(self.page_size)
                .items()
                .send();
            while let Some(reservation) = pages.next().await {
                let reservation =
                    reservation.map_err(|e| errors::from_sdk("ec2:DescribeInstances", e))?;
                found.extend(
                    reservation
                        .instances()
                        .iter()
                        .filter_map(|i| self.convert(i)),
                );
            }
        }
        Ok(found)
    }

    fn convert(&self, raw: &aws_sdk_ec2::types::Instance) -> Option<Ec2Instance> {
        let id = raw.instance_id()?.to_owned();
        let state_name = raw.state().and_then(|s| s.name()).cloned()?;
        let state = match state_name {
            InstanceStateName::Pending => InstanceState::Pending,
            InstanceStateName::Running => InstanceState::Running,
            _ => InstanceState::Stopping,
        };
        let tags: HashMap<String, String> = raw
            .tags()
            .iter()
            .filter_map(|t| {
                Some((
                    t.key()?.to_owned(),
                    t.value().unwrap_or_default().to_owned(),
                ))
            })
            .collect();
        let launched_at = raw
            .launch_time()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let zone = raw
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_owned();
        Some(Ec2Instance {
            instance: Instance {
                id,
                state,
                launched_at,
                zone,
                protected: tags.contains_key(&self.protection_tag_key),
                address: raw.private_ip_address().map(str::to_owned),
                draining_since: tags
                    .get(DRAINING_TAG)
                    .and_then(|v| crate::parse_drain_mark(v)),
            },
            state_name: state_name.as_str().to_owned(),
            subnet_id: raw.subnet_id().map(str::to_owned),
            client_token: raw
                .client_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            tags,
        })
    }

    /// The configured subnets and their zones, looked up on first use.
    async fn subnets(&self) -> Result<&[Subnet]> {
        let subnets = self
            .subnets
            .get_or_try_init(|| async {
                let out = self
                    .ec2
                    .describe_subnets()
                    .set_subnet_ids(Some(self.subnet_ids.clone()))
                    .send()
                    .await
                    .map_err(|e| errors::from_sdk("ec2:DescribeSubnets", e))?;
                let zones: HashMap<&str, &str> = out
                    .subnets()
                    .iter()
                    .filter_map(|s| Some((s.subnet_id()?, s.availability_zone()?)))
                    .collect();
                self.subnet_ids
                    .iter()
                    .map(|id| match zones.get(id.as_str()) {
                        Some(zone) => Ok(Subnet {
                            id: id.clone(),
                            zone: (*zone).to_owned(),
                        }),
                        None => Err(AdapterError::not_found(format!(
                            "subnet {id} of fleet {} does not exist in {}",
                            self.fleet_name, self.region
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        Ok(subnets)
    }

    /// Launch up to `count` instances into one subnet.
    async fn launch(
        &self,
        subnet: &Subnet,
        count: u32,
        client_token: &str,
    ) -> Result<Vec<InstanceId>> {
        let [instance_tags, volume_tags] = self.tag_specifications();
        let out = self
            .ec2
            .run_instances()
            .launch_template(self.template.clone())
            .subnet_id(&subnet.id)
            // EC2 launches as many as it can up to MaxCount; a short launch is
            // reported, not an error.
            .min_count(1)
            .max_count(i32::try_from(count).unwrap_or(i32::MAX))
            .client_token(client_token)
            .tag_specifications(instance_tags)
            .tag_specifications(volume_tags)
            .send()
            .await
            .map_err(|e| errors::from_sdk("ec2:RunInstances", e))?;
        Ok(out
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect())
    }
}

/// `i-` and 8 or 17 hexadecimal digits.
fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

#[async_trait]
impl CloudAdapter for Ec2Fleet {
    fn name(&self) -> &str {
        "aws"
    }

    async fn read_fleet(&self) -> Result<Fleet> {
        let mut instances: Vec<Instance> = self
            .describe_fleet()
            .await?
            .into_iter()
            .map(|i| i.instance)
            .collect();
        instances.sort_by(|a, b| {
            a.launched_at
                .cmp(&b.launched_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(Fleet {
            instances,
            target_size: None,
        })
    }

    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        if count == 0 {
            return Ok(GrowOutcome {
                requested: 0,
                launched: Vec::new(),
            });
        }
        let subnets = self.subnets().await?;
        let tokens: Vec<String> = subnets
            .iter()
            .map(|s| placement::client_token(token.as_str(), &s.id))
            .collect();
        let fleet = self.describe_fleet().await?;

        // A grow with this token already launched (a retry, or a repeated decision
        // after a restart): report its instances, launch nothing.
        let earlier: Vec<InstanceId> = fleet
            .iter()
            .filter(|i| i.client_token.as_ref().is_some_and(|t| tokens.contains(t)))
            .map(|i| i.instance.id.clone())
            .collect();
        if !earlier.is_empty() {
            tracing::info!(
                fleet = %self.fleet_name, token = %token, instances = earlier.len(),
                "grow already done with this token; launching nothing"
            );
            return Ok(GrowOutcome {
                requested: count,
                launched: earlier,
            });
        }

        let existing: Vec<(Option<String>, Option<String>)> = fleet
            .iter()
            .map(|i| (i.subnet_id.clone(), Some(i.instance.zone.clone())))
            .collect();
        let mut launched = Vec::new();
        let mut first_error: Option<AdapterError> = None;
        for (index, n) in placement::split_launch(count, subnets, &existing) {
            // split_launch names only indexes of `subnets`, and `tokens` has one per subnet.
            let (Some(subnet), Some(client_token)) = (subnets.get(index), tokens.get(index)) else {
                continue;
            };
            match self.launch(subnet, n, client_token).await {
                Ok(ids) => {
                    if (ids.len() as u32) < n {
                        tracing::warn!(
                            fleet = %self.fleet_name, subnet = %subnet.id, zone = %subnet.zone,
                            requested = n, launched = ids.len(), "EC2 launched fewer instances than asked"
                        );
                    }
                    launched.extend(ids);
                }
                Err(err) => {
                    tracing::warn!(
                        fleet = %self.fleet_name, subnet = %subnet.id, zone = %subnet.zone,
                        requested = n, error = %err, "launch into subnet failed"
                    );
                    let other_zones_may_help = matches!(err, AdapterError::Capacity { .. })
                        || matches!(err, AdapterError::NotFound { .. });
                    first_error.get_or_insert(err);
                    if !other_zones_may_help {
                        break;
                    }
                }
            }
        }
        match first_error {
            Some(err) if launched.is_empty() => Err(err),
            _ => Ok(GrowOutcome {
                requested: count,
                launched,
            }),
        }
    }

    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        if ids.is_empty() {
            return Ok(ShrinkOutcome::default());
        }
        let malformed: Vec<&str> = ids
            .iter()
            .filter(|id| !is_instance_id(id))
            .map(String::as_str)
            .collect();
        if !malformed.is_empty() {
            return Err(AdapterError::invalid(format!(
                "not EC2 instance ids, nothing was terminated: {}",
                malformed.join(", ")
            )));
        }
        let mut wanted: Vec<&InstanceId> = Vec::new();
        for id in ids {
            if !wanted.contains(&id) {
                wanted.push(id);
            }
        }
        let found: HashMap<String, Ec2Instance> = self
            .describe_ids(ids)
            .await?
            .into_iter()
            .map(|i| (i.instance.id.clone(), i))
            .collect();

        let mut refused = Vec::new();
        let mut to_terminate: Vec<String> = Vec::new();
        let mut already_going = Vec::new();
        for id in wanted {
            let Some(instance) = found.get(id) else {
                continue; // gone already
            };
            if instance.tags.get(&self.fleet_tag_key) != Some(&self.fleet_tag_value) {
                refused.push(format!(
                    "{id} is not in fleet {} (no tag {}={})",
                    self.fleet_name, self.fleet_tag_key, self.fleet_tag_value
                ));
            } else if instance.instance.protected {
                refused.push(format!(
                    "{id} is protected (tag {})",
                    self.protection_tag_key
                ));
            } else if instance.state_name == "terminated" {
                continue;
            } else if instance.state_name == "shutting-down" {
                already_going.push(id.clone());
            } else {
                to_terminate.push(id.clone());
            }
        }
        if !refused.is_empty() {
            return Err(AdapterError::invalid(format!(
                "refusing to terminate, nothing was terminated: {}",
                refused.join("; ")
            )));
        }

        let mut removed = already_going;
        for chunk in to_terminate.chunks(IDS_PER_CALL) {
            let out = self
                .ec2
                .terminate_instances()
                .set_instance_ids(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| errors::from_sdk("ec2:TerminateInstances", e))?;
            removed.extend(
                out.terminating_instances()
                    .iter()
                    .filter_map(|c| c.instance_id().map(str::to_owned)),
            );
        }
        Ok(ShrinkOutcome { removed })
    }

    async fn verify_access(&self) -> Result<AccessReport> {
        access::verify(self).await
    }

    /// Tags each instance of this fleet with [`DRAINING_TAG`] (the time, in Unix
    /// seconds) unless it has the tag already; instances gone, or not this fleet's, are
    /// left alone.
    async fn mark_draining(&self, ids: &[InstanceId], since: SystemTime) -> Result<()> {
        let ids: Vec<InstanceId> = ids
            .iter()
            .filter(|id| is_instance_id(id))
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let untagged: Vec<String> = self
            .describe_ids(&ids)
            .await?
            .into_iter()
            .filter(|i| i.tags.get(&self.fleet_tag_key) == Some(&self.fleet_tag_value))
            .filter(|i| i.state_name != "terminated" && !i.tags.contains_key(DRAINING_TAG))
            .map(|i| i.instance.id)
            .collect();
        let value = crate::render_drain_mark(since);
        for chunk in untagged.chunks(IDS_PER_CALL) {
            self.ec2
                .create_tags()
                .set_resources(Some(chunk.to_vec()))
                .tags(Tag::builder().key(DRAINING_TAG).value(&value).build())
                .send()
                .await
                .map_err(|e| errors::from_sdk("ec2:CreateTags", e))?;
        }
        Ok(())
    }
}

/// The tag that marks an instance as draining before its removal; its value is the time
/// the drain began, in Unix seconds.
pub const DRAINING_TAG: &str = "fleetscale:draining";
