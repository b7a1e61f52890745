//! A local AWS for tests: `moto_server` (PyPI `moto[server]`) on a free loopback port,
//! with IAM authentication enforced after setup, and a recording proxy in front of it.
//!
//! [`Moto::start`] launches the server, then (through boto3, as an unchecked setup
//! identity) creates:
//! - an IAM user `fleetscale-agent` holding exactly `terraform/aws/fleetscale-agent-policy.json`
//!   (or another policy, [`MotoBuilder::policy`]) and tagged with the fleet, and its keys;
//! - an IAM user `admin` allowed everything, whose keys the tests use to arrange and
//!   inspect the emulator (instances outside the fleet, protection tags);
//! - a VPC with one subnet in each of two zones, and a launch template.
//!
//! It then tells the server to check every request from now on: signatures against
//! the IAM users' keys, and actions against their policies (moto does not evaluate
//! IAM conditions or resource ARNs; see the static policy test). The server is killed
//! when the [`Moto`] is dropped.
//!
//! moto does not implement Auto Scaling's instance refreshes; the same module answers
//! DescribeInstanceRefreshes with the refreshes StartInstanceRefresh started, each
//! InProgress (API_DescribeInstanceRefreshes, API_StartInstanceRefresh of the API
//! Reference), and authorises group actions against the group's ARN. moto reports a
//! deregistered ELBv2 target `unused` at once; the module keeps it `draining` for the
//! group's deregistration delay, as the Elastic Load Balancing User Guide ("Deregistration
//! delay") describes, and authorises target group actions against the group's ARN.
//!
//! moto launches `MinCount` instances where EC2 launches as many as it can up to
//! `MaxCount`; a `sitecustomize` module given to the server teaches it EC2's rule, and
//! optionally a capacity ([`MotoBuilder::capacity`]) beyond which launches fall short
//! or fail with `InsufficientInstanceCapacity`, as EC2 does.
//!
//! Reuse it from another test crate with
//! `#[path = "<relative path>/adapters/tests/support/moto.rs"] mod moto;`
//! (it needs tokio, serde_json and `fleetscale_adapters` with the `aws` feature).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetscale_adapters::aws::{AwsConfig, Credentials, Ec2Fleet, LaunchTemplateRef};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The region every emulator runs in.
pub const REGION: &str = "us-east-1";
/// The zones of the two subnets.
pub const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];
/// The fleet the agent user is tagged for, and the tests' default fleet.
pub const FLEET: &str = "web";
/// The launch template's name.
pub const LAUNCH_TEMPLATE: &str = "fleetscale-web";

const INSTALL_HINT: &str = "install the local AWS emulator with: pip install 'moto[server]'";

/// An IAM user's access key.
#[derive(Clone)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub arn: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key_id", &self.access_key_id)
            .field("arn", &self.arn)
            .finish()
    }
}

impl Keys {
    /// Give `command` these keys as an operator's environment does, and nothing else of
    /// AWS's: empty shared files under `dir`, no profile, no session, no endpoint override.
    pub fn operator_env(&self, command: &mut Command, dir: &Path) {
        for file in ["empty-config", "empty-credentials"] {
            std::fs::write(dir.join(file), "").expect("write empty AWS files");
        }
        command
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", dir.join("empty-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("empty-credentials"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_EC2");
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "moto-test",
        )
    }

    /// The same access key id with a wrong secret.
    pub fn with_wrong_secret(&self) -> Keys {
        Keys {
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYWRONGSECRET".into(),
            ..self.clone()
        }
    }
}

/// Options for [`Moto`].
pub struct MotoBuilder {
    policy: String,
    capacity: Option<u32>,
}

impl MotoBuilder {
    /// The agent user's policy document (default: the repository's least-privilege
    /// policy, terraform/aws/fleetscale-agent-policy.json).
    pub fn policy(mut self, policy_json: impl Into<String>) -> Self {
        self.policy = policy_json.into();
        self
    }

    /// At most this many live instances in the emulator; launches beyond fall short.
    pub fn capacity(mut self, instances: u32) -> Self {
        self.capacity = Some(instances);
        self
    }

    pub fn start(self) -> Moto {
        Moto::launch(self)
    }
}

/// A running emulator, set up for one fleet.
pub struct Moto {
    child: Child,
    dir: PathBuf,
    python: PathBuf,
    pub endpoint: String,
    /// The agent's user, holding the policy under test.
    pub agent: Keys,
    /// An administrator for arranging and inspecting the emulator.
    pub admin: Keys,
    pub vpc_id: String,
    /// (subnet id, zone), one per zone of [`ZONES`].
    pub subnets: Vec<(String, String)>,
    pub launch_template_id: String,
}

impl Moto {
    pub fn builder() -> MotoBuilder {
        MotoBuilder {
            policy: repo_policy(),
            capacity: None,
        }
    }

    /// An emulator whose agent user holds the repository's policy.
    pub fn start() -> Moto {
        Self::builder().start()
    }

    fn launch(options: MotoBuilder) -> Moto {
        let moto_server = find_on_path("moto_server")
            .unwrap_or_else(|| panic!("`moto_server` was not found on PATH: {INSTALL_HINT}"));
        let python = python_of(&moto_server);
        let dir = std::env::temp_dir().join(format!(
            "fleetscale-moto-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).expect("create the emulator's temp dir");
        std::fs::write(dir.join("sitecustomize.py"), SITECUSTOMIZE).expect("write sitecustomize");
        std::fs::write(dir.join("policy.json"), &options.policy).expect("write policy");
        for file in ["empty-config", "empty-credentials"] {
            std::fs::write(dir.join(file), "").expect("write empty AWS files");
        }

        let mut attempt = 0;
        let (child, endpoint) = loop {
            attempt += 1;
            let port = free_port();
            let log = std::fs::File::create(dir.join("moto.log")).expect("create moto.log");
            let mut command = Command::new(&moto_server);
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("PYTHONPATH", python_path(&dir))
                // Setup runs unchecked; `reset-auth` below turns checking on for good.
                .env("INITIAL_NO_AUTH_ACTION_COUNT", "1000000")
                .env("MOTO_ALLOW_NONEXISTENT_REGION", "false")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log);
            if let Some(capacity) = options.capacity {
                command.env("FLEETSCALE_MOTO_CAPACITY", capacity.to_string());
            }
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| panic!("could not start moto_server ({e}): {INSTALL_HINT}"));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut ready = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    ready = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if ready {
                break (child, format!("http://127.0.0.1:{port}"));
            }
            let _ = child.kill();
            let _ = child.wait();
            if attempt >= 3 {
                panic!(
                    "moto_server did not start on 127.0.0.1:{port}; its log:\n{}",
                    std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
                );
            }
        };

        let mut moto = Moto {
            child,
            dir,
            python,
            endpoint,
            agent: Keys {
                access_key_id: String::new(),
                secret_access_key: String::new(),
                arn: String::new(),
            },
            admin: Keys {
                access_key_id: String::new(),
                secret_access_key: String::new(),
                arn: String::new(),
            },
            vpc_id: String::new(),
            subnets: Vec::new(),
            launch_template_id: String::new(),
        };
        let setup = moto.run_python(
            SETUP,
            &[(
                "POLICY_FILE",
                moto.dir.join("policy.json").display().to_string(),
            )],
        );
        let keys = |v: &Value| Keys {
            access_key_id: v["AccessKeyId"].as_str().expect("key id").to_owned(),
            secret_access_key: v["SecretAccessKey"].as_str().expect("secret").to_owned(),
            arn: v["Arn"].as_str().expect("arn").to_owned(),
        };
        moto.agent = keys(&setup["agent"]);
        moto.admin = keys(&setup["admin"]);
        moto.vpc_id = setup["vpc"].as_str().expect("vpc").to_owned();
        moto.subnets = setup["subnets"]
            .as_array()
            .expect("subnets")
            .iter()
            .map(|s| {
                (
                    s[0].as_str().unwrap().to_owned(),
                    s[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        moto.launch_template_id = setup["launch_template"]
            .as_str()
            .expect("template")
            .to_owned();

        // From here on every request is checked.
        let answer = http_post(&moto.endpoint, "/moto-api/reset-auth", "0");
        assert!(
            answer.contains("\"ok\""),
            "moto did not turn IAM checks on: {answer}"
        );
        let probe = moto.python_as(
            &moto.agent.with_wrong_secret(),
            "try:\n    ec2.describe_instances()\n    result = 'accepted'\nexcept Exception as e:\n    result = str(e)",
        );
        assert!(
            probe.as_str().is_some_and(|s| s != "accepted"),
            "moto accepted a wrong secret after setup: IAM checks are off"
        );
        moto
    }

    /// The fleet's adapter config: the emulator's endpoint and region, the launch
    /// template by name, both subnets.
    pub fn config(&self) -> AwsConfig {
        self.config_via(&self.endpoint)
    }

    /// The same config with calls going through another endpoint (a proxy).
    pub fn config_via(&self, endpoint: &str) -> AwsConfig {
        let mut config = AwsConfig::new(
            LaunchTemplateRef {
                id: None,
                name: Some(LAUNCH_TEMPLATE.into()),
                version: "$Latest".into(),
            },
            self.subnets.iter().map(|(id, _)| id.clone()).collect(),
        );
        config.region = Some(REGION.into());
        config.endpoint_url = Some(endpoint.to_owned());
        config
    }

    /// The adapter for `fleet`, as the agent user, through `endpoint` (the emulator or
    /// a proxy in front of it).
    pub async fn fleet(&self, fleet: &str, config: &AwsConfig, keys: &Keys) -> Ec2Fleet {
        Ec2Fleet::connect_with_credentials(fleet, config, keys.credentials())
            .await
            .expect("connect to the emulator")
    }

    /// The agent's adapter for the default fleet, straight to the emulator.
    pub async fn agent_fleet(&self) -> Ec2Fleet {
        self.fleet(FLEET, &self.config(), &self.agent).await
    }

    /// Run boto3 code as `keys`, with `ec2`, `iam`, `sts`, `autoscaling` and `elbv2` clients bound to the
    /// emulator; the JSON of the variable `result` is returned.
    pub fn python_as(&self, keys: &Keys, code: &str) -> Value {
        let script =
            format!("{CLIENTS}\n{code}\nprint('RESULT=' + json.dumps(result, default=str))\n");
        self.run_python(
            &script,
            &[
                ("AWS_ACCESS_KEY_ID", keys.access_key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY", keys.secret_access_key.clone()),
            ],
        )
    }

    /// Run boto3 code as the administrator.
    pub fn admin(&self, code: &str) -> Value {
        self.python_as(&self.admin.clone(), code)
    }

    /// Every instance in the emulator, in any state: id, state, tags, client token,
    /// subnet, zone.
    pub fn instances(&self) -> Vec<Value> {
        let value = self.admin(
            "result = [dict(id=i['InstanceId'], state=i['State']['Name'], tags={t['Key']: t['Value'] for t in i.get('Tags', [])}, client_token=i.get('ClientToken'), subnet=i.get('SubnetId'), zone=i['Placement']['AvailabilityZone']) for r in ec2.describe_instances()['Reservations'] for i in r['Instances']]",
        );
        value.as_array().cloned().unwrap_or_default()
    }

    /// Everything a test may want to compare before and after a call that must
    /// change nothing: instances with states and tags, volumes with tags, all tags.
    pub fn snapshot(&self) -> Value {
        self.admin(
            "result = dict(instances=sorted([(i['InstanceId'], i['State']['Name'], sorted((t['Key'], t['Value']) for t in i.get('Tags', []))) for r in ec2.describe_instances()['Reservations'] for i in r['Instances']]), volumes=sorted([(v['VolumeId'], v['State'], sorted((t['Key'], t['Value']) for t in v.get('Tags', []))) for v in ec2.describe_volumes()['Volumes']]), tags=sorted([(t['ResourceId'], t['Key'], t['Value']) for t in ec2.describe_tags()['Tags']]))",
        )
    }

    /// Launch `count` instances as the administrator, with these instance tags
    /// (`None` for untagged), into the first subnet; their ids.
    pub fn launch_outside(&self, count: u32, tags: &[(&str, &str)]) -> Vec<String> {
        let tags: Vec<String> = tags
            .iter()
            .map(|(k, v)| format!("{{'Key': {k:?}, 'Value': {v:?}}}"))
            .collect();
        let spec = if tags.is_empty() {
            String::new()
        } else {
            format!(
                ", TagSpecifications=[{{'ResourceType': 'instance', 'Tags': [{}]}}]",
                tags.join(", ")
            )
        };
        let code = format!(
            "out = ec2.run_instances(LaunchTemplate={{'LaunchTemplateName': {LAUNCH_TEMPLATE:?}}}, SubnetId={:?}, MinCount={count}, MaxCount={count}{spec})\nresult = [i['InstanceId'] for i in out['Instances']]",
            self.subnets[0].0
        );
        self.admin(&code)
            .as_array()
            .expect("instance ids")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Put a tag on an instance, as the administrator.
    pub fn tag(&self, instance_id: &str, key: &str, value: &str) {
        self.admin(&format!(
            "ec2.create_tags(Resources=[{instance_id:?}], Tags=[{{'Key': {key:?}, 'Value': {value:?}}}])\nresult = True"
        ));
    }

    /// The state of one instance (`running`, `terminated`…).
    pub fn state_of(&self, instance_id: &str) -> String {
        self.instances()
            .iter()
            .find(|i| i["id"] == instance_id)
            .and_then(|i| i["state"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("{instance_id} is not in the emulator"))
    }

    fn run_python(&self, script: &str, env: &[(&str, String)]) -> Value {
        let mut command = Command::new(&self.python);
        command
            .arg("-c")
            .arg(script)
            .env("MOTO_ENDPOINT", &self.endpoint)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.dir.join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-credentials"),
            )
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_ACCESS_KEY_ID", "setup")
            .env("AWS_SECRET_ACCESS_KEY", "setup");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap_or_else(|e| {
            panic!(
                "could not run {} ({e}): {INSTALL_HINT}",
                self.python.display()
            )
        });
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named 'boto3'") {
            panic!(
                "boto3 is missing for {}: {INSTALL_HINT}",
                self.python.display()
            );
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT="))
            .unwrap_or_else(|| panic!("emulator script failed:\n{stderr}\n{stdout}"));
        serde_json::from_str(line).expect("script result is JSON")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The repository's policy document.
pub fn repo_policy() -> String {
    let path = repo_root().join("terraform/aws/fleetscale-agent-policy.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The workspace root: the nearest ancestor of this crate holding terraform/aws.
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        if dir.join("terraform/aws").is_dir() {
            return dir;
        }
        if !dir.pop() {
            panic!(
                "terraform/aws not found above {}",
                env!("CARGO_MANIFEST_DIR")
            );
        }
    }
}

fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The interpreter that runs `moto_server` (and so has boto3), from its `#!` line.
fn python_of(moto_server: &Path) -> PathBuf {
    let first_line = std::fs::File::open(moto_server)
        .ok()
        .and_then(|f| BufReader::new(f).lines().next())
        .and_then(|l| l.ok())
        .unwrap_or_default();
    first_line
        .strip_prefix("#!")
        .map(str::trim)
        .filter(|interpreter| interpreter.contains("python") && !interpreter.contains(' '))
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn python_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(paths).expect("PYTHONPATH")
}

/// A one-shot HTTP POST over a plain socket (the moto control API).
fn http_post(endpoint: &str, path: &str, body: &str) -> String {
    let host = endpoint.trim_start_matches("http://");
    let mut stream = StdTcpStream::connect(host).expect("connect to moto");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send to moto");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("read moto's answer");
    answer
}

const CLIENTS: &str = r#"
import json, os, boto3
_kw = dict(endpoint_url=os.environ["MOTO_ENDPOINT"], region_name=os.environ["AWS_DEFAULT_REGION"])
ec2 = boto3.client("ec2", **_kw)
iam = boto3.client("iam", **_kw)
sts = boto3.client("sts", **_kw)
autoscaling = boto3.client("autoscaling", **_kw)
elbv2 = boto3.client("elbv2", **_kw)
"#;

const SETUP: &str = r#"
import json, os, boto3
kw = dict(endpoint_url=os.environ["MOTO_ENDPOINT"], region_name=os.environ["AWS_DEFAULT_REGION"])
iam = boto3.client("iam", **kw)
ec2 = boto3.client("ec2", **kw)

policy = open(os.environ["POLICY_FILE"]).read()
policy_arn = iam.create_policy(PolicyName="fleetscale-agent", PolicyDocument=policy)["Policy"]["Arn"]
agent = iam.create_user(UserName="fleetscale-agent", Tags=[{"Key": "fleetscale:fleet", "Value": "web"}])["User"]
iam.attach_user_policy(UserName="fleetscale-agent", PolicyArn=policy_arn)
agent_key = iam.create_access_key(UserName="fleetscale-agent")["AccessKey"]

admin = iam.create_user(UserName="admin")["User"]
iam.put_user_policy(UserName="admin", PolicyName="everything", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
admin_key = iam.create_access_key(UserName="admin")["AccessKey"]

vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
subnets = []
for n, zone in enumerate(["us-east-1a", "us-east-1b"]):
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.%d.0/24" % n, AvailabilityZone=zone)["Subnet"]
    subnets.append([subnet["SubnetId"], subnet["AvailabilityZone"]])
template = ec2.create_launch_template(
    LaunchTemplateName="fleetscale-web",
    LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
)["LaunchTemplate"]["LaunchTemplateId"]

result = dict(
    agent=dict(AccessKeyId=agent_key["AccessKeyId"], SecretAccessKey=agent_key["SecretAccessKey"], Arn=agent["Arn"]),
    admin=dict(AccessKeyId=admin_key["AccessKeyId"], SecretAccessKey=admin_key["SecretAccessKey"], Arn=admin["Arn"]),
    vpc=vpc, subnets=subnets, launch_template=template,
)
print("RESULT=" + json.dumps(result))
"#;

/// Loaded by the emulator's Python at start-up: EC2's launch-count rule, and an
/// optional capacity.
const SITECUSTOMIZE: &str = r#"
import os

def _teach_moto_ec2_launch_counts():
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.responses.instances import InstanceResponse

    class InsufficientInstanceCapacity(EC2ClientError):
        code = "InsufficientInstanceCapacity"
        message = "We currently do not have sufficient capacity in the Availability Zone you requested."

    original = InstanceResponse.run_instances
    capacity = os.environ.get("FLEETSCALE_MOTO_CAPACITY")

    def run_instances(self):
        get = self._get_param
        if get("DryRun"):
            return original(self)
        min_count = int(get("MinCount") or 1)
        count = int(get("MaxCount") or min_count)
        if capacity is not None:
            live = sum(1 for i in self.ec2_backend.all_instances() if i.state in ("pending", "running"))
            count = min(count, int(capacity) - live)
            if count < min_count:
                raise InsufficientInstanceCapacity()

        def patched(name, if_none=None):
            return str(count) if name == "MinCount" else get(name, if_none)

        self._get_param = patched
        try:
            return original(self)
        finally:
            del self._get_param

    InstanceResponse.run_instances = run_instances

_teach_moto_ec2_launch_counts()

def _teach_moto_instance_refreshes():
    # moto does not implement DescribeInstanceRefreshes (it answers 500). Modelled on the
    # Amazon EC2 Auto Scaling API Reference, API_DescribeInstanceRefreshes: a group on
    # which no refresh was ever started has an empty InstanceRefreshes list. IAM is still
    # checked before this runs.
    # StartInstanceRefresh (API_StartInstanceRefresh) is modelled only as far as the
    # adapter reads it: the refresh is listed as InProgress until the group is deleted.
    import uuid
    from moto.autoscaling.responses import AutoScalingResponse

    refreshes = {}  # group name -> [(id, status)]
    xmlns = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
    metadata = "<ResponseMetadata><RequestId>7c6e177f-f082-11e1-ac58-3714bEXAMPLE</RequestId></ResponseMetadata>"

    def describe_instance_refreshes(self):
        group = self._get_param("AutoScalingGroupName")
        members = "".join(
            "<member><InstanceRefreshId>%s</InstanceRefreshId><AutoScalingGroupName>%s</AutoScalingGroupName>"
            "<Status>%s</Status></member>" % (rid, group, status)
            for rid, status in refreshes.get(group, []))
        return ('<DescribeInstanceRefreshesResponse xmlns="%s"><DescribeInstanceRefreshesResult>'
                "<InstanceRefreshes>%s</InstanceRefreshes></DescribeInstanceRefreshesResult>%s"
                "</DescribeInstanceRefreshesResponse>" % (xmlns, members, metadata))

    def start_instance_refresh(self):
        rid = str(uuid.uuid4())
        refreshes.setdefault(self._get_param("AutoScalingGroupName"), []).append((rid, "InProgress"))
        return ('<StartInstanceRefreshResponse xmlns="%s"><StartInstanceRefreshResult>'
                "<InstanceRefreshId>%s</InstanceRefreshId></StartInstanceRefreshResult>%s"
                "</StartInstanceRefreshResponse>" % (xmlns, rid, metadata))

    AutoScalingResponse.describe_instance_refreshes = describe_instance_refreshes
    AutoScalingResponse.start_instance_refresh = start_instance_refresh

    # moto authorises every Auto Scaling action against the resource "*", so a policy
    # statement scoped to groups' ARNs never applies. As the Service Authorization
    # Reference (Amazon EC2 Auto Scaling, resource type autoScalingGroup) has it, the
    # group's ARN is the resource of the actions on one group.
    def _determine_resource(self):
        tags = self._get_param("Tags") or [{}]
        name = self._get_param("AutoScalingGroupName") or tags[0].get("ResourceId")
        instance = self._get_param("InstanceId")
        if not name and instance:
            for group in self.autoscaling_backend.autoscaling_groups.values():
                if any(i.instance.id == instance for i in group.instance_states):
                    name = group.name
        if not name:
            return "*"
        return "arn:aws:autoscaling:%s:%s:autoScalingGroup:*:autoScalingGroupName/%s" % (
            self.region, self.current_account, name)

    AutoScalingResponse._determine_resource = _determine_resource

_teach_moto_instance_refreshes()

def _teach_moto_deregistration_delay():
    # moto reports a deregistered target `unused` at once. As the Elastic Load Balancing
    # User Guide for Application Load Balancers has it ("Deregistration delay"), a
    # deregistered target is `draining` (reason Target.DeregistrationInProgress) until the
    # group's deregistration_delay.timeout_seconds has passed, then `unused`.
    import time
    from moto.elbv2.models import FakeHealthStatus, FakeTargetGroup

    original_register = FakeTargetGroup.register
    original_deregister = FakeTargetGroup.deregister
    original_health = FakeTargetGroup.health_for

    def register(self, targets):
        original_register(self, targets)
        for target in targets:
            getattr(self, "_fleetscale_deregistered_at", {}).pop(target["Id"], None)

    def deregister(self, targets):
        original_deregister(self, targets)
        since = getattr(self, "_fleetscale_deregistered_at", {})
        for target in targets:
            since.setdefault(target["Id"], time.monotonic())
        self._fleetscale_deregistered_at = since

    def health_for(self, target, ec2_backend):
        since = getattr(self, "_fleetscale_deregistered_at", {}).get(target["Id"])
        delay = float(self.attributes.get("deregistration_delay.timeout_seconds", 300))
        if target["Id"] not in self.targets and since is not None and time.monotonic() - since < delay:
            return FakeHealthStatus(target["Id"], target.get("Port", self.port), self.health_check_port,
                                    "draining", "Target.DeregistrationInProgress",
                                    "Target deregistration is in progress")
        return original_health(self, target, ec2_backend)

    FakeTargetGroup.register = register
    FakeTargetGroup.deregister = deregister
    FakeTargetGroup.health_for = health_for

_teach_moto_deregistration_delay()

def _teach_moto_target_group_resources():
    # moto authorises every ELBv2 action against the resource "*". As the Service
    # Authorization Reference (Elastic Load Balancing V2, resource type targetgroup) has
    # it, the target group's ARN is the resource of the actions on one group
    # (DeregisterTargets, DescribeTargetHealth).
    from moto.elbv2.responses import ELBV2Response

    def _determine_resource(self):
        return self._get_param("TargetGroupArn") or "*"

    ELBV2Response._determine_resource = _determine_resource

_teach_moto_target_group_resources()
"#;

/// One request seen by a [`Proxy`].
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The API action (`RunInstances`, `GetCallerIdentity`…).
    pub action: String,
    /// Its form parameters, decoded.
    pub params: Vec<(String, String)>,
    /// The status answered to the client.
    pub status: u16,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct ProxyState {
    recorded: Mutex<Vec<Recorded>>,
    /// Requests still to be answered with RequestLimitExceeded.
    throttle: AtomicU32,
}

/// A recording HTTP proxy in front of the emulator, which can also throttle: it
/// answers `RequestLimitExceeded` to the next N requests, as EC2 does under load.
pub struct Proxy {
    pub endpoint: String,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &state).await;
                });
            }
        });
        Proxy {
            endpoint,
            state,
            task,
        }
    }

    /// Answer the next `n` requests with RequestLimitExceeded.
    pub fn throttle_next(&self, n: u32) {
        self.state.throttle.store(n, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap().clone()
    }

    /// Requests so far for one action.
    pub fn calls(&self, action: &str) -> Vec<Recorded> {
        self.recorded()
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }

    pub fn clear(&self) {
        self.state.recorded.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve one client connection: one request, forwarded (or throttled), then close.
async fn serve(mut client: TcpStream, upstream: &str, state: &ProxyState) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..]).into_owned();
    let params = decode_form(&body);
    let action = params
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();

    let throttled = state
        .throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let response = if throttled {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>";
        format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )
        .into_bytes()
    } else {
        // Forward unchanged except for Connection (not signed), and close after one
        // exchange so framing stays trivial.
        let mut request = Vec::new();
        for line in head.split("\r\n").filter(|l| !l.is_empty()) {
            if !line.to_ascii_lowercase().starts_with("connection:") {
                request.extend_from_slice(line.as_bytes());
                request.extend_from_slice(b"\r\n");
            }
        }
        request.extend_from_slice(b"Connection: close\r\n\r\n");
        request.extend_from_slice(&buffer[head_end..]);
        let mut server = TcpStream::connect(upstream).await?;
        server.write_all(&request).await?;
        let mut answer = Vec::new();
        server.read_to_end(&mut answer).await?;
        close_after(answer)
    };
    let status = String::from_utf8_lossy(&response[..response.len().min(32)])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    state.recorded.lock().unwrap().push(Recorded {
        action,
        params,
        status,
    });
    client.write_all(&response).await?;
    client.shutdown().await
}

/// The upstream answer, with `Connection: close` so the client does not reuse the
/// connection, and a Content-Length when the upstream only closed the connection.
fn close_after(answer: Vec<u8>) -> Vec<u8> {
    let Some(end) = find(&answer, b"\r\n\r\n") else {
        return answer;
    };
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let body = &answer[end + 4..];
    let mut out = Vec::new();
    let mut has_length = false;
    for line in head.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("transfer-encoding:") {
            continue;
        }
        has_length |= lower.starts_with("content-length:");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_length {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn decode_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
