//! [`ScaleSetFleet`]: one VM Scale Set behind the [`CloudAdapter`] trait.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::auth::TokenCredential;
use azure_core::{ClientOptions, Pipeline, RetryOptions, TransportOptions, Url};
use azure_mgmt_compute::package_2024_07_01 as compute;
use compute::models::{
    Sku, VirtualMachineScaleSet, VirtualMachineScaleSetUpdate, VirtualMachineScaleSetVm,
    VirtualMachineScaleSetVmInstanceRequiredIDs,
};
use futures::StreamExt;

use super::config::AzureConfig;
use super::credential::{AzureEnvironment, FleetCredential, identity_from_token};
use super::errors::{ArmErrorPolicy, to_adapter_error};
use super::operation::{ArmHttp, Ended, Follow, Operation};
use super::permissions::{
    self, DELETE_INSTANCES, PERMISSIONS_API_VERSION, PermissionsPage, READ, READ_VMS,
    TRACK_OPERATIONS, WRITE, WRITE_VMS,
};
use crate::{
    AccessReport, AdapterError, CloudAdapter, ErrorKind, Fleet, GrowOutcome, IdempotencyToken,
    Instance, InstanceId, InstanceState, PermissionCheck, Result, ShrinkOutcome,
};

/// The scale set tag that records the last grow: `token;capacity;highest instance id
/// before;RFC 3339 time`. It makes a repeated grow idempotent across agent restarts: the
/// agent remembers nothing that it cannot read again, and this it can.
pub const GROW_TAG: &str = "fleetscale-grow";

/// The VM tag that marks a drain, as EC2's `fleetscale:draining` does: the Unix second
/// it began. A VM of a Uniform scale set keeps tags of its own (Virtual Machine Scale
/// Set VMs - Update: the request body's `tags`), so a restarted agent reads it back.
pub const DRAINING_TAG: &str = "fleetscale-draining";

/// The Compute API version of `azure_mgmt_compute`'s `package_2024_07_01`, for the
/// requests the adapter sends itself.
const COMPUTE_API_VERSION: &str = "2024-07-01";

/// How many grows are remembered in memory (with the instances that existed before
/// each), for exact answers to repeated calls.
const REMEMBERED_GROWS: usize = 32;

/// An Azure VM Scale Set managed as a fleet.
///
/// - read: the scale set's `sku.capacity` (the target size) and its VMs, with their
///   provisioning and power states, zones and scale-in protection;
/// - grow: `sku.capacity` raised by N in one PATCH (guarded by the scale set's etag and
///   marked with the grow's token in the [`GROW_TAG`] tag), the long-running operation
///   followed to its end or `operation_timeout`; the new instances are the VMs that were
///   not there before;
/// - shrink: `deleteInstances` with the named ids (Azure lowers the capacity with them),
///   after refusing any protected one;
/// - verify: reads proving access, Azure's permissions check for the write and delete
///   actions, and the identity the token speaks for.
pub struct ScaleSetFleet {
    config: AzureConfig,
    compute: compute::Client,
    http: ArmHttp,
    credential: Arc<FleetCredential>,
    endpoint: Url,
    grows: Mutex<VecDeque<GrowRecord>>,
}

impl std::fmt::Debug for ScaleSetFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScaleSetFleet")
            .field("scale_set", &self.config.resource_id())
            .field("arm_endpoint", &self.config.arm_endpoint)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

/// What this process knows of a grow it sent.
#[derive(Debug, Clone)]
struct GrowRecord {
    token: String,
    target: u32,
    before: HashSet<String>,
    operation: Option<Operation>,
    finished: bool,
}

/// The parsed [`GROW_TAG`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct GrowMark {
    token: String,
    target: u32,
    /// The highest numeric instance id before the grow (Uniform scale sets number their
    /// instances upwards), when there was one.
    highest_before: Option<u64>,
    at: SystemTime,
}

impl GrowMark {
    fn parse(value: &str) -> Option<GrowMark> {
        // The token may hold `;`; the other fields cannot.
        let mut fields = value.rsplitn(4, ';');
        let at = humantime::parse_rfc3339(fields.next()?).ok()?;
        let highest_before = match fields.next()? {
            "-" => None,
            id => Some(id.parse().ok()?),
        };
        let target = fields.next()?.parse().ok()?;
        let token = fields.next()?.to_owned();
        Some(GrowMark {
            token,
            target,
            highest_before,
            at,
        })
    }

    fn render(&self) -> String {
        let highest = self
            .highest_before
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        format!(
            "{};{};{highest};{}",
            self.token,
            self.target,
            humantime::format_rfc3339_seconds(self.at)
        )
    }
}

impl ScaleSetFleet {
    /// A fleet on `config`, with credentials looked up in the process's environment.
    /// Fails only on an invalid config; credentials are first used (and their problems
    /// reported) by the first call.
    pub fn new(config: AzureConfig) -> Result<Self> {
        Self::with_environment(config, AzureEnvironment::from_process())
    }

    /// A fleet whose credentials are looked up in `env`.
    pub fn with_environment(config: AzureConfig, env: AzureEnvironment) -> Result<Self> {
        config.validate().map_err(|problems| {
            AdapterError::invalid(format!(
                "Azure adapter config: {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        let http_client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            // As azure_core's own client: idle pooled connections can hang hyper.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| AdapterError::invalid(format!("cannot build the HTTP client: {e}")))?;
        let http_client: Arc<dyn azure_core::HttpClient> = Arc::new(http_client);

        let endpoint = Url::parse(&config.arm_endpoint)
            .map_err(|e| AdapterError::invalid(format!("arm_endpoint: {e}")))?;
        let scope = endpoint
            .join(azure_core::auth::DEFAULT_SCOPE_SUFFIX)
            .map_err(|e| AdapterError::invalid(format!("arm_endpoint: {e}")))?
            .to_string();
        let credential = Arc::new(FleetCredential::new(&config, &env, http_client.clone())?);

        // Retrying is the Retry decorator's job, deciding on the error's kind: the client
        // sends each request once, and every failure is read by ArmErrorPolicy.
        let mut options =
            ClientOptions::new(TransportOptions::new(http_client)).retry(RetryOptions::none());
        // A 401 drops the tokens held, so the next request fetches a fresh one.
        options
            .per_retry_policies_mut()
            .push(credential.unauthorized_policy());
        options
            .per_retry_policies_mut()
            .push(Arc::new(ArmErrorPolicy::default()));
        let as_token_credential: Arc<dyn TokenCredential> = credential.clone();
        let compute = compute::Client::new(
            endpoint.clone(),
            as_token_credential.clone(),
            vec![scope.clone()],
            options.clone(),
        );
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            Vec::new(),
        );
        Ok(ScaleSetFleet {
            http: ArmHttp {
                pipeline,
                credential: as_token_credential,
                scopes: vec![scope],
            },
            config,
            compute,
            credential,
            endpoint,
            grows: Mutex::new(VecDeque::new()),
        })
    }

    /// The config the fleet runs on.
    pub fn config(&self) -> &AzureConfig {
        &self.config
    }

    /// The scale set, refused if it is one the adapter cannot manage.
    async fn scale_set(&self) -> Result<VirtualMachineScaleSet> {
        let c = &self.config;
        let set = self
            .compute
            .virtual_machine_scale_sets_client()
            .get(&c.resource_group, &c.scale_set, &c.subscription_id)
            .await
            .map_err(|e| to_adapter_error(&e, READ))?;
        refuse_flexible(&set, &c.scale_set)?;
        Ok(set)
    }

    async fn vms(&self) -> Result<Vec<VirtualMachineScaleSetVm>> {
        let c = &self.config;
        let mut pages = self
            .compute
            .virtual_machine_scale_set_v_ms_client()
            .list(&c.resource_group, &c.scale_set, &c.subscription_id)
            .expand("instanceView")
            .into_stream();
        let mut vms = Vec::new();
        while let Some(page) = pages.next().await {
            vms.extend(page.map_err(|e| to_adapter_error(&e, READ_VMS))?.value);
        }
        Ok(vms)
    }

    fn follow<'a>(&'a self, what: &'a str, action: &'a str) -> Follow<'a> {
        Follow {
            http: &self.http,
            poll_interval: self.config.poll_interval,
            timeout: self.config.operation_timeout,
            what,
            action,
            resource: self
                .url(&self.config.resource_id(), COMPUTE_API_VERSION)
                .ok(),
        }
    }

    /// `path` on the Resource Manager endpoint, with `api-version`.
    fn url(&self, path: &str, api_version: &str) -> Result<Url> {
        let mut url = self
            .endpoint
            .join(path)
            .map_err(|e| AdapterError::invalid(format!("URL of {path}: {e}")))?;
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        Ok(url)
    }

    /// Writes one VM's model back (Virtual Machine Scale Set VMs - Update, a PUT of the
    /// whole VM), following the operation to its end.
    async fn update_vm(&self, mut vm: VirtualMachineScaleSetVm, what: &str) -> Result<()> {
        let c = &self.config;
        let Some(id) = vm.instance_id.clone() else {
            return Ok(());
        };
        // Read-only: the instance view is what Azure reports, not part of the model.
        if let Some(properties) = vm.properties.as_mut() {
            properties.instance_view = None;
        }
        let mut request = self.compute.virtual_machine_scale_set_v_ms_client().update(
            &c.resource_group,
            &c.scale_set,
            &id,
            vm.clone(),
            &c.subscription_id,
        );
        if let Some(etag) = &vm.etag {
            request = request.if_match(etag);
        }
        let response = request
            .send()
            .await
            .map_err(|e| to_adapter_error(&e, WRITE_VMS))?;
        let raw = response.as_raw_response();
        let operation = Operation::from_acceptance(raw.status() as u16, raw.headers());
        let what = format!("{what} (instance {id} of scale set {})", c.scale_set);
        self.follow(&what, WRITE_VMS).run(&operation).await?;
        Ok(())
    }

    /// The listed VMs named in `ids` that are not being deleted.
    async fn vms_named(&self, ids: &[InstanceId]) -> Result<Vec<VirtualMachineScaleSetVm>> {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        Ok(self
            .vms()
            .await?
            .into_iter()
            .filter(|vm| {
                vm.instance_id
                    .as_deref()
                    .is_some_and(|id| wanted.contains(id))
                    && !is_deleting(vm)
            })
            .collect())
    }

    /// Takes the VMs `ids` out of the load balancer backend pool `pool` (its ARM id), so
    /// that the load balancer sends them no new flows, and returns those still in it: VMs
    /// whose model named it (updated now; read again at the next call) and VMs whose
    /// update out of it has not been applied yet (provisioning other than `Succeeded`).
    /// VMs gone are not. One list of the scale set's VMs per call.
    pub async fn leave_backend_pool(
        &self,
        ids: &[InstanceId],
        pool: &str,
    ) -> Result<HashSet<InstanceId>> {
        let mut still = HashSet::new();
        for mut vm in self.vms_named(ids).await? {
            let Some(id) = vm.instance_id.clone() else {
                continue;
            };
            if in_pool(&vm, pool) {
                leave_pool(&mut vm, pool);
                self.update_vm(vm, "leaving the backend pool").await?;
                still.insert(id);
            } else if provisioning_state(&vm) != "succeeded" {
                still.insert(id);
            }
        }
        Ok(still)
    }

    fn remembered(&self, token: &str) -> Option<GrowRecord> {
        let grows = self.grows.lock().unwrap_or_else(PoisonError::into_inner);
        grows.iter().rev().find(|g| g.token == token).cloned()
    }

    fn remember(&self, record: GrowRecord) {
        let mut grows = self.grows.lock().unwrap_or_else(PoisonError::into_inner);
        grows.retain(|g| g.token != record.token);
        grows.push_back(record);
        while grows.len() > REMEMBERED_GROWS {
            grows.pop_front();
        }
    }

    fn update_remembered(&self, token: &str, update: impl FnOnce(&mut GrowRecord)) {
        let mut grows = self.grows.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = grows.iter_mut().find(|g| g.token == token) {
            update(record);
        }
    }

    /// A grow whose token the scale set already carries: nothing is sent again. Its
    /// operation is followed if this process started it and has not seen it end.
    async fn repeated_grow(&self, count: u32, mark: GrowMark) -> Result<GrowOutcome> {
        let launched_since = match self.remembered(&mark.token) {
            Some(record) => {
                if !record.finished
                    && let Some(operation) = &record.operation
                {
                    let what = format!(
                        "changing the capacity of scale set {} to {}",
                        self.config.scale_set, record.target
                    );
                    if matches!(
                        self.follow(&what, WRITE).run(operation).await?,
                        Ended::Succeeded | Ended::Superseded
                    ) {
                        self.update_remembered(&mark.token, |r| r.finished = true);
                    }
                }
                Since::Instances(record.before)
            }
            // Started by an earlier run of the agent: only the tag is known.
            None => match mark.highest_before {
                Some(highest) => Since::AfterId(highest),
                None => Since::Time(mark.at),
            },
        };
        let vms = self.vms().await?;
        Ok(GrowOutcome {
            requested: count,
            launched: at_most(launched_since.new_ids(&vms), count),
        })
    }
}

/// How the instances of a grow are told from the ones before it.
enum Since {
    Instances(HashSet<String>),
    /// Numeric ids above this one (Uniform scale sets).
    AfterId(u64),
    /// Created at or after this time, less a second for clock skew (when ids are names).
    Time(SystemTime),
}

impl Since {
    fn new_ids(&self, vms: &[VirtualMachineScaleSetVm]) -> Vec<InstanceId> {
        let mut ids: Vec<InstanceId> = vms
            .iter()
            .filter(|vm| !is_deleting(vm))
            .filter(|vm| match self {
                Since::Instances(before) => !vm
                    .instance_id
                    .as_ref()
                    .is_some_and(|id| before.contains(id)),
                Since::AfterId(highest) => vm
                    .instance_id
                    .as_ref()
                    .and_then(|id| id.parse::<u64>().ok())
                    .is_some_and(|id| id > *highest),
                // A second of slack for the difference between our clock and Azure's.
                Since::Time(at) => {
                    created_at(vm).is_some_and(|t| t + Duration::from_secs(1) >= *at)
                }
            })
            .filter_map(|vm| vm.instance_id.clone())
            .collect();
        sort_ids(&mut ids);
        ids
    }
}

/// The first `count` of the new VMs. With overprovisioning (the default of Uniform scale
/// sets) Azure creates more VMs than asked and deletes the extra ones when the asked-for
/// ones are provisioned: until then they are listed, but they are not the grow's, and
/// they are not billed ("Design considerations for scale sets: Overprovisioning").
fn at_most(mut ids: Vec<InstanceId>, count: u32) -> Vec<InstanceId> {
    ids.truncate(count as usize);
    ids
}

/// Numeric ids in numeric order (Uniform scale sets), others after them by name.
fn sort_ids(ids: &mut [InstanceId]) {
    ids.sort_by_key(|id| id.parse::<u64>().map_err(|_| id.clone()));
}

fn provisioning_state(vm: &VirtualMachineScaleSetVm) -> String {
    vm.properties
        .as_ref()
        .and_then(|p| p.provisioning_state.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn power_state(vm: &VirtualMachineScaleSetVm) -> Option<String> {
    vm.properties
        .as_ref()?
        .instance_view
        .as_ref()?
        .statuses
        .iter()
        .filter_map(|s| s.code.as_deref())
        .find_map(|code| code.strip_prefix("PowerState/"))
        .map(str::to_ascii_lowercase)
}

fn is_deleting(vm: &VirtualMachineScaleSetVm) -> bool {
    provisioning_state(vm) == "deleting"
}

fn is_protected(vm: &VirtualMachineScaleSetVm) -> bool {
    vm.properties
        .as_ref()
        .and_then(|p| p.protection_policy.as_ref())
        .is_some_and(|p| {
            p.protect_from_scale_in.unwrap_or(false)
                || p.protect_from_scale_set_actions.unwrap_or(false)
        })
}

fn created_at(vm: &VirtualMachineScaleSetVm) -> Option<SystemTime> {
    let properties = vm.properties.as_ref()?;
    let created = properties.time_created.or_else(|| {
        // Older scale sets: the earliest status time in the instance view.
        properties
            .instance_view
            .as_ref()?
            .statuses
            .iter()
            .filter_map(|s| s.time)
            .min()
    })?;
    Some(SystemTime::from(created))
}

/// The controller's view of a VM: provisioning state first (a VM being created or
/// deleted is pending or stopping whatever its power), then power.
fn state_of(vm: &VirtualMachineScaleSetVm) -> InstanceState {
    let provisioning = provisioning_state(vm);
    let power = power_state(vm);
    match (provisioning.as_str(), power.as_deref()) {
        ("deleting", _) => InstanceState::Stopping,
        (_, Some("stopping" | "stopped" | "deallocating" | "deallocated")) => {
            InstanceState::Stopping
        }
        // A failed VM never started serving: pending, so the controller's stuck-instance
        // guard replaces it.
        ("creating" | "failed", _) => InstanceState::Pending,
        (_, Some("running")) => InstanceState::Running,
        ("succeeded", None) => InstanceState::Running,
        _ => InstanceState::Pending,
    }
}

fn instance_of(vm: &VirtualMachineScaleSetVm, location: &str) -> Option<Instance> {
    Some(Instance {
        id: vm.instance_id.clone()?,
        state: state_of(vm),
        launched_at: created_at(vm).unwrap_or_else(SystemTime::now),
        zone: vm
            .zones
            .first()
            .cloned()
            .unwrap_or_else(|| location.to_owned()),
        protected: is_protected(vm),
        address: None,
        draining_since: vm
            .resource
            .tags
            .as_ref()
            .and_then(|t| t.get(DRAINING_TAG))
            .and_then(|v| v.as_str())
            .and_then(crate::parse_drain_mark),
    })
}

/// The load balancer backend pools the VM's network interfaces are in (ids as ARM
/// gives them).
fn backend_pools(vm: &VirtualMachineScaleSetVm) -> Vec<&str> {
    let Some(network) = vm
        .properties
        .as_ref()
        .and_then(|p| p.network_profile_configuration.as_ref())
    else {
        return Vec::new();
    };
    network
        .network_interface_configurations
        .iter()
        .filter_map(|nic| nic.properties.as_ref())
        .flat_map(|nic| &nic.ip_configurations)
        .filter_map(|ip| ip.properties.as_ref())
        .flat_map(|ip| &ip.load_balancer_backend_address_pools)
        .filter_map(|pool| pool.id.as_deref())
        .collect()
}

/// Whether the VM's model puts it in `pool` (ARM ids compare case-insensitively).
fn in_pool(vm: &VirtualMachineScaleSetVm, pool: &str) -> bool {
    backend_pools(vm)
        .iter()
        .any(|id| id.eq_ignore_ascii_case(pool))
}

/// Takes `pool` out of the VM's network interfaces' IP configurations.
fn leave_pool(vm: &mut VirtualMachineScaleSetVm, pool: &str) {
    let Some(network) = vm
        .properties
        .as_mut()
        .and_then(|p| p.network_profile_configuration.as_mut())
    else {
        return;
    };
    for ip in network
        .network_interface_configurations
        .iter_mut()
        .filter_map(|nic| nic.properties.as_mut())
        .flat_map(|nic| nic.ip_configurations.iter_mut())
        .filter_map(|ip| ip.properties.as_mut())
    {
        ip.load_balancer_backend_address_pools.retain(|p| {
            !p.id
                .as_deref()
                .is_some_and(|id| id.eq_ignore_ascii_case(pool))
        });
    }
}

/// Flexible orchestration lists its instances as ordinary VMs (`virtualMachines` filtered
/// by scale set), not through the scale set's VM list this adapter reads, and names them
/// by VM name: the adapter would see an empty fleet and grow it without end. It is refused,
/// at `check` and at start, until it is supported ("Orchestration modes for Virtual
/// Machine Scale Sets", learn.microsoft.com/azure/virtual-machine-scale-sets/
/// virtual-machine-scale-sets-orchestration-modes).
fn refuse_flexible(set: &VirtualMachineScaleSet, name: &str) -> Result<()> {
    match set
        .properties
        .as_ref()
        .and_then(|p| p.orchestration_mode.as_ref())
    {
        None | Some(compute::models::OrchestrationMode::Uniform) => Ok(()),
        Some(mode) => {
            let mode = match mode {
                compute::models::OrchestrationMode::UnknownValue(other) => other.clone(),
                _ => "Flexible".to_owned(),
            };
            Err(AdapterError::invalid(format!(
                "scale set {name} uses {mode} orchestration; fleetscale manages Uniform scale \
                 sets only (Flexible scale sets list and name their instances as separate \
                 VMs, which this adapter does not read): use a Uniform scale set"
            )))
        }
    }
}

fn capacity_of(set: &VirtualMachineScaleSet) -> u32 {
    let capacity = set.sku.as_ref().and_then(|s| s.capacity).unwrap_or(0);
    u32::try_from(capacity.max(0)).unwrap_or(u32::MAX)
}

fn tags_of(set: &VirtualMachineScaleSet) -> serde_json::Map<String, serde_json::Value> {
    match &set.resource.tags {
        Some(serde_json::Value::Object(tags)) => tags.clone(),
        _ => serde_json::Map::new(),
    }
}

#[async_trait]
impl CloudAdapter for ScaleSetFleet {
    fn name(&self) -> &str {
        "azure"
    }

    async fn read_fleet(&self) -> Result<Fleet> {
        let set = self.scale_set().await?;
        let vms = self.vms().await?;
        let location = &set.resource.location;
        let mut instances: Vec<Instance> = vms
            .iter()
            .filter_map(|vm| instance_of(vm, location))
            .collect();
        instances.sort_by_key(|i| i.id.parse::<u64>().map_err(|_| i.id.clone()));
        Ok(Fleet {
            instances,
            target_size: Some(capacity_of(&set)),
        })
    }

    async fn grow(&self, count: u32, token: &IdempotencyToken) -> Result<GrowOutcome> {
        if count == 0 {
            return Ok(GrowOutcome {
                requested: 0,
                launched: Vec::new(),
            });
        }
        let set = self.scale_set().await?;
        let mut tags = tags_of(&set);
        if let Some(mark) = tags
            .get(GROW_TAG)
            .and_then(|v| v.as_str())
            .and_then(GrowMark::parse)
            .filter(|mark| mark.token == token.as_str())
        {
            tracing::info!(scale_set = %self.config.scale_set, %token, "grow already applied; not growing again");
            return self.repeated_grow(count, mark).await;
        }

        let current = capacity_of(&set);
        let target = current.checked_add(count).ok_or_else(|| {
            AdapterError::invalid(format!("growing capacity {current} by {count} overflows"))
        })?;
        let before: HashSet<String> = self
            .vms()
            .await?
            .into_iter()
            .filter_map(|vm| vm.instance_id)
            .collect();
        let mark = GrowMark {
            token: token.as_str().to_owned(),
            target,
            highest_before: before.iter().filter_map(|id| id.parse::<u64>().ok()).max(),
            at: SystemTime::now(),
        };
        tags.insert(
            GROW_TAG.to_owned(),
            serde_json::Value::String(mark.render()),
        );

        let mut update = VirtualMachineScaleSetUpdate::new();
        update.sku = Some(Sku {
            capacity: Some(i64::from(target)),
            ..Sku::new()
        });
        update.update_resource.tags = Some(serde_json::Value::Object(tags));
        let c = &self.config;
        let mut request = self.compute.virtual_machine_scale_sets_client().update(
            &c.resource_group,
            &c.scale_set,
            update,
            &c.subscription_id,
        );
        // Another writer between our read and this write fails the PATCH (412) instead
        // of being overwritten.
        if let Some(etag) = &set.etag {
            request = request.if_match(etag);
        }
        // Remembered before sending: if the answer is lost, a retry finds the tag and
        // this record, and does not grow again.
        self.remember(GrowRecord {
            token: mark.token.clone(),
            target,
            before: before.clone(),
            operation: None,
            finished: false,
        });
        let response = request
            .send()
            .await
            .map_err(|e| to_adapter_error(&e, WRITE))?;
        let raw = response.as_raw_response();
        let operation = Operation::from_acceptance(raw.status() as u16, raw.headers());
        self.update_remembered(&mark.token, |r| r.operation = Some(operation.clone()));
        tracing::info!(
            scale_set = %c.scale_set, from = current, to = target, %token,
            operation = operation.url().map(|u| u.as_str()).unwrap_or("none"),
            "capacity change accepted"
        );

        let what = format!(
            "changing the capacity of scale set {} from {current} to {target}",
            c.scale_set
        );
        if matches!(
            self.follow(&what, WRITE).run(&operation).await?,
            Ended::Succeeded | Ended::Superseded
        ) {
            self.update_remembered(&mark.token, |r| r.finished = true);
        }

        let vms = self.vms().await?;
        Ok(GrowOutcome {
            requested: count,
            launched: at_most(Since::Instances(before).new_ids(&vms), count),
        })
    }

    async fn shrink(&self, ids: &[InstanceId]) -> Result<ShrinkOutcome> {
        if ids.is_empty() {
            return Ok(ShrinkOutcome::default());
        }
        let vms = self.vms().await?;
        let by_id: HashMap<&str, &VirtualMachineScaleSetVm> = vms
            .iter()
            .filter_map(|vm| vm.instance_id.as_deref().map(|id| (id, vm)))
            .collect();

        let mut protected: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| by_id.get(id).is_some_and(|vm| is_protected(vm)))
            .collect();
        if !protected.is_empty() {
            protected.sort_unstable();
            protected.dedup();
            return Err(AdapterError::invalid(format!(
                "instance{} {} of scale set {} {} protected from scale-in; nothing was removed",
                if protected.len() == 1 { "" } else { "s" },
                protected.join(", "),
                self.config.scale_set,
                if protected.len() == 1 { "is" } else { "are" },
            )));
        }

        let mut seen = HashSet::new();
        let mut to_delete = Vec::new();
        let mut already_leaving = Vec::new();
        for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
            match by_id.get(id.as_str()) {
                // Already gone: nothing to do, and not an error.
                None => {}
                Some(vm) if is_deleting(vm) => already_leaving.push(id.clone()),
                Some(_) => to_delete.push(id.clone()),
            }
        }

        if !to_delete.is_empty() {
            let c = &self.config;
            let response = self
                .compute
                .virtual_machine_scale_sets_client()
                .delete_instances(
                    &c.resource_group,
                    &c.scale_set,
                    VirtualMachineScaleSetVmInstanceRequiredIDs::new(to_delete.clone()),
                    &c.subscription_id,
                )
                .send()
                .await
                .map_err(|e| to_adapter_error(&e, DELETE_INSTANCES))?;
            let raw = response.as_raw_response();
            let operation = Operation::from_acceptance(raw.status() as u16, raw.headers());
            tracing::info!(
                scale_set = %c.scale_set, instances = ?to_delete,
                operation = operation.url().map(|u| u.as_str()).unwrap_or("none"),
                "deletion accepted"
            );
            let what = format!(
                "deleting instances {} of scale set {}",
                to_delete.join(", "),
                c.scale_set
            );
            self.follow(&what, DELETE_INSTANCES).run(&operation).await?;
        }

        let mut removed = to_delete;
        removed.extend(already_leaving);
        sort_ids(&mut removed);
        Ok(ShrinkOutcome { removed })
    }

    /// Tags each VM with [`DRAINING_TAG`] (one Update of the VM each) unless it has the
    /// tag already; VMs gone or being deleted are left alone.
    async fn mark_draining(&self, ids: &[InstanceId], since: SystemTime) -> Result<()> {
        let value = crate::render_drain_mark(since);
        for mut vm in self.vms_named(ids).await? {
            let mut tags = match vm.resource.tags.take() {
                Some(serde_json::Value::Object(tags)) => tags,
                _ => serde_json::Map::new(),
            };
            if tags.contains_key(DRAINING_TAG) {
                continue;
            }
            tags.insert(
                DRAINING_TAG.to_owned(),
                serde_json::Value::String(value.clone()),
            );
            vm.resource.tags = Some(serde_json::Value::Object(tags));
            self.update_vm(vm, "marking a drain").await?;
        }
        Ok(())
    }

    async fn verify_access(&self) -> Result<AccessReport> {
        let scopes: Vec<&str> = self.http.scopes.iter().map(String::as_str).collect();
        let token = self
            .credential
            .get_token(&scopes)
            .await
            .map_err(|e| to_adapter_error(&e, READ))?;
        let source = self
            .credential
            .source_in_use()
            .unwrap_or_else(|| "credential".to_owned());
        let identity = match identity_from_token(token.token.secret()) {
            Some(who) => format!("{who}, via {source}"),
            None => source,
        };

        let mut checks = Vec::new();
        let mut probe = |action: &str, outcome: Result<String>| -> Result<()> {
            match outcome {
                Ok(detail) => {
                    checks.push(PermissionCheck {
                        permission: action.to_owned(),
                        allowed: true,
                        detail,
                    });
                    Ok(())
                }
                Err(e) if e.kind() == ErrorKind::Permission => {
                    checks.push(PermissionCheck {
                        permission: action.to_owned(),
                        allowed: false,
                        detail: e.to_string(),
                    });
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        let name = &self.config.scale_set;
        let set = self.scale_set().await;
        let location = set.as_ref().ok().map(|set| set.resource.location.clone());
        probe(
            READ,
            set.map(|set| format!("read scale set {name} (capacity {})", capacity_of(&set))),
        )?;
        probe(
            READ_VMS,
            self.vms()
                .await
                .map(|vms| format!("listed the {} VMs of scale set {name}", vms.len())),
        )?;
        if let Some(location) = location {
            probe(TRACK_OPERATIONS, self.probe_operation_read(&location).await)?;
        }

        match self.permissions().await {
            Ok(roles) => {
                for action in [WRITE, DELETE_INSTANCES] {
                    let allowed = permissions::allows(&roles, action);
                    checks.push(PermissionCheck {
                        permission: action.to_owned(),
                        allowed,
                        detail: if allowed {
                            format!("granted on scale set {name} (Azure's permissions check)")
                        } else {
                            format!(
                                "not granted on scale set {name} by any role of this identity (Azure's permissions check); add it to the identity's role"
                            )
                        },
                    });
                }
            }
            Err(e) if e.kind() == ErrorKind::Permission => {
                for action in [WRITE, DELETE_INSTANCES] {
                    checks.push(PermissionCheck {
                        permission: action.to_owned(),
                        allowed: false,
                        detail: format!(
                            "not checked: Azure refused the permissions check ({e}); grant \
                             Microsoft.Authorization/permissions/read to let fleetscale check"
                        ),
                    });
                }
            }
            Err(e) => return Err(e),
        }
        Ok(AccessReport { identity, checks })
    }
}

impl ScaleSetFleet {
    /// Reads the status of an operation that does not exist, in the scale set's region:
    /// Resource Manager authorizes the read before Compute looks the operation up, so a
    /// 404 proves the identity may follow the operations its grows and shrinks start, and
    /// a 403 that it may not (its role is assigned on the scale set alone).
    async fn probe_operation_read(&self, location: &str) -> Result<String> {
        let path = format!(
            "/subscriptions/{}/providers/Microsoft.Compute/locations/{location}/operations/00000000-0000-0000-0000-000000000000",
            self.config.subscription_id
        );
        let done = "read the status of operations in the subscription (grows and shrinks are followed to their end)".to_owned();
        match self.http.get(self.url(&path, COMPUTE_API_VERSION)?).await {
            Ok(_) => Ok(done),
            Err(error) => {
                let mapped = to_adapter_error(&error, TRACK_OPERATIONS);
                match mapped.kind() {
                    ErrorKind::NotFound => Ok(done),
                    ErrorKind::Permission => Err(AdapterError::permission(
                        TRACK_OPERATIONS,
                        format!(
                            "{mapped}; the status URL of an operation is outside the scale set, so assign a role with {TRACK_OPERATIONS} on resource group {} (without it, grows and shrinks are followed by the scale set's provisioning state)",
                            self.config.resource_group
                        ),
                    )),
                    _ => Err(mapped),
                }
            }
        }
    }

    /// The caller's effective permissions on the scale set.
    async fn permissions(&self) -> Result<Vec<permissions::RolePermission>> {
        const ACTION: &str = "Microsoft.Authorization/permissions/read";
        let mut url = self
            .endpoint
            .join(&format!(
                "{}/providers/Microsoft.Authorization/permissions",
                self.config.resource_id()
            ))
            .map_err(|e| AdapterError::invalid(format!("permissions URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("api-version", PERMISSIONS_API_VERSION);
        let mut roles = Vec::new();
        let mut next = Some(url);
        let mut pages = 0;
        while let Some(url) = next.take() {
            let answer = self
                .http
                .get(url)
                .await
                .map_err(|e| to_adapter_error(&e, ACTION))?;
            let page: PermissionsPage = serde_json::from_slice(&answer.body).map_err(|e| {
                AdapterError::transient(format!(
                    "unexpected answer from Azure's permissions check: {e}"
                ))
            })?;
            roles.extend(page.value);
            pages += 1;
            next = page
                .next_link
                .filter(|_| pages < 20)
                .and_then(|link| Url::parse(&link).ok());
        }
        Ok(roles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_mgmt_compute::package_2024_07_01 as compute;
    use compute::models::{
        InstanceViewStatus, Resource, VirtualMachineScaleSetVmInstanceView,
        VirtualMachineScaleSetVmProperties,
    };

    fn vm(id: &str, provisioning: &str, power: Option<&str>) -> VirtualMachineScaleSetVm {
        let mut vm = VirtualMachineScaleSetVm::new(Resource::new("westeurope".to_owned()));
        vm.instance_id = Some(id.to_owned());
        let mut properties = VirtualMachineScaleSetVmProperties::new();
        properties.provisioning_state = Some(provisioning.to_owned());
        let mut view = VirtualMachineScaleSetVmInstanceView::default();
        if let Some(power) = power {
            let mut status = InstanceViewStatus::new();
            status.code = Some(format!("PowerState/{power}"));
            view.statuses.push(status);
        }
        properties.instance_view = Some(view);
        vm.properties = Some(properties);
        vm
    }

    #[test]
    fn states_follow_provisioning_then_power() {
        assert_eq!(state_of(&vm("0", "Creating", None)), InstanceState::Pending);
        assert_eq!(
            state_of(&vm("0", "Creating", Some("starting"))),
            InstanceState::Pending
        );
        assert_eq!(
            state_of(&vm("0", "Succeeded", Some("running"))),
            InstanceState::Running
        );
        assert_eq!(
            state_of(&vm("0", "Updating", Some("running"))),
            InstanceState::Running
        );
        assert_eq!(
            state_of(&vm("0", "Succeeded", Some("deallocated"))),
            InstanceState::Stopping
        );
        assert_eq!(
            state_of(&vm("0", "Deleting", Some("running"))),
            InstanceState::Stopping
        );
        assert_eq!(
            state_of(&vm("0", "Failed", Some("running"))),
            InstanceState::Pending
        );
        assert_eq!(
            state_of(&vm("0", "Succeeded", None)),
            InstanceState::Running
        );
        let instance = instance_of(&vm("7", "Succeeded", Some("running")), "westeurope").unwrap();
        assert_eq!(instance.zone, "westeurope");
        assert!(!instance.protected);
    }

    #[test]
    fn grow_marks_round_trip() {
        let mut mark = GrowMark {
            token: "tick-42;retry".to_owned(),
            target: 7,
            highest_before: Some(12),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        assert_eq!(GrowMark::parse(&mark.render()), Some(mark.clone()));
        mark.highest_before = None;
        assert_eq!(GrowMark::parse(&mark.render()), Some(mark));
        assert_eq!(GrowMark::parse("garbage"), None);
    }

    #[test]
    fn ids_sort_numerically() {
        let mut ids = vec![
            "10".to_owned(),
            "9".to_owned(),
            "vm_b".to_owned(),
            "1".to_owned(),
        ];
        sort_ids(&mut ids);
        assert_eq!(ids, ["1", "9", "10", "vm_b"]);
    }
}
