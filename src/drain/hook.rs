//! A drain hook: an HTTP POST or a command, once per instance, whose success (a 2xx
//! answer, exit status 0) means the instance is drained.
//!
//! Each call runs in a task of its own, bounded by the hook timeout, so a slow hook never
//! holds a tick; its answer is kept in memory until the instance is removed. A restarted
//! agent does not call the hook again for a drain its predecessor began (it cannot know
//! whether the call was answered): that drain ends at the timeout.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fleetscale_adapters::{Instance, InstanceId};

/// Where the hook is.
#[derive(Debug, Clone)]
pub enum HookTarget {
    Url(String),
    Command(Vec<String>),
}

/// What became of one hook call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Waiting,
    Drained,
    Failed,
}

#[derive(Debug)]
pub struct HookDrain {
    fleet: String,
    target: HookTarget,
    timeout: Duration,
    client: reqwest::Client,
    answers: Arc<Mutex<HashMap<InstanceId, Answer>>>,
}

impl HookDrain {
    pub fn new(fleet: &str, target: HookTarget, timeout: Duration) -> Self {
        HookDrain {
            fleet: fleet.to_string(),
            target,
            timeout,
            client: reqwest::Client::new(),
            answers: Arc::default(),
        }
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Answer>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The instance's fields a hook is given.
fn fields<'a>(fleet: &'a str, instance: &'a Instance) -> [(&'static str, &'a str); 5] {
    [
        ("fleet", fleet),
        ("id", instance.id.as_str()),
        // Providers name instances by their ids here (EC2 ids, scale-set instance ids).
        ("name", instance.id.as_str()),
        ("address", instance.address.as_deref().unwrap_or("")),
        ("zone", instance.zone.as_str()),
    ]
}

async fn call(
    client: reqwest::Client,
    target: HookTarget,
    fleet: String,
    instance: Instance,
) -> Result<(), String> {
    let fields = fields(&fleet, &instance);
    match target {
        HookTarget::Url(url) => {
            let body: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(*v)))
                .collect();
            let answer = client
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            if answer.status().is_success() {
                Ok(())
            } else {
                Err(format!("POST {url}: answered {}", answer.status()))
            }
        }
        HookTarget::Command(argv) => {
            let Some((program, args)) = argv.split_first() else {
                return Err("the drain command is empty".into());
            };
            let substitute = |arg: &str| {
                fields.iter().fold(arg.to_string(), |a, (k, v)| {
                    a.replace(&format!("{{{k}}}"), v)
                })
            };
            let mut command = tokio::process::Command::new(substitute(program));
            command
                .args(args.iter().map(|a| substitute(a)))
                .envs(
                    fields
                        .iter()
                        .map(|(k, v)| (format!("FLEETSCALE_{}", k.to_uppercase()), *v)),
                )
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let status = command
                .status()
                .await
                .map_err(|e| format!("{program}: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{program}: {status}"))
            }
        }
    }
}

#[async_trait::async_trait]
impl super::Drain for HookDrain {
    fn name(&self) -> &str {
        "hook"
    }

    async fn begin(&self, instances: &[Instance]) -> Result<(), String> {
        for instance in instances {
            {
                let mut answers = self.answers();
                if answers.contains_key(&instance.id) {
                    continue;
                }
                answers.insert(instance.id.clone(), Answer::Waiting);
            }
            let answers = self.answers.clone();
            let (client, target, fleet) =
                (self.client.clone(), self.target.clone(), self.fleet.clone());
            let (instance, timeout) = (instance.clone(), self.timeout);
            tokio::spawn(async move {
                let id = instance.id.clone();
                let outcome =
                    tokio::time::timeout(timeout, call(client, target, fleet.clone(), instance))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!(
                                "no answer within {}",
                                humantime::format_duration(timeout)
                            ))
                        });
                let answer = match outcome {
                    Ok(()) => {
                        tracing::info!(fleet = %fleet, instance = %id, "the drain hook says the instance is drained");
                        Answer::Drained
                    }
                    Err(e) => {
                        tracing::warn!(fleet = %fleet, instance = %id, error = %e, "the drain hook failed; the removal waits for the drain's timeout");
                        Answer::Failed
                    }
                };
                answers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, answer);
            });
        }
        Ok(())
    }

    async fn drained(&self, instances: &[Instance]) -> Result<HashSet<InstanceId>, String> {
        let mut answers = self.answers();
        // Forget instances no longer draining (removed).
        let draining: HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        answers.retain(|id, _| draining.contains(id.as_str()));
        Ok(answers
            .iter()
            .filter(|(_, a)| **a == Answer::Drained)
            .map(|(id, _)| id.clone())
            .collect())
    }
}
