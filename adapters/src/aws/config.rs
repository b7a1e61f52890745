//! The settings of one EC2 fleet, as written in the agent's config file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default key of the tag that marks an instance as a member of the fleet.
pub const DEFAULT_FLEET_TAG_KEY: &str = "fleetscale:fleet";
/// Default key of the tag that protects an instance from scale-in.
pub const DEFAULT_PROTECTION_TAG_KEY: &str = "fleetscale:protected";
/// Default launch template version: whatever the template's latest version is.
pub const DEFAULT_LAUNCH_TEMPLATE_VERSION: &str = "$Latest";

/// EC2 accepts at most 50 tags on one resource.
const MAX_TAGS: usize = 50;

/// How fleetscale finds, launches and removes the instances of one EC2 fleet.
///
/// A fleet is the set of instances carrying the fleet tag (`fleet_tag_key` =
/// `fleet_tag_value`). New instances are launched from `launch_template` into `subnets`,
/// keeping the fleet balanced across the subnets' availability zones.
///
/// Region, profile and endpoint are optional: when absent, the standard AWS settings
/// apply (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_EC2`, and
/// the shared config files). Credentials always come from the AWS default chain
/// (environment, shared files and profiles, SSO, web identity, instance metadata); they
/// never appear in this file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// AWS region of the fleet, e.g. `eu-west-1`. Default: the AWS default chain
    /// (`AWS_REGION`, then the profile's `region`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// Named profile of the shared AWS config files. Default: `AWS_PROFILE`, else
    /// `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,

    /// Endpoint for the EC2 and STS calls (an emulator, a proxy). Default: AWS's own,
    /// or `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,

    /// Key of the tag that marks the fleet's instances. Default: `fleetscale:fleet`.
    #[serde(default = "default_fleet_tag_key")]
    pub fleet_tag_key: String,

    /// Value of the fleet tag. Default: the fleet's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_tag_value: Option<String>,

    /// The launch template new instances are launched from.
    pub launch_template: LaunchTemplateRef,

    /// Subnets to launch into (at least one); launches keep the fleet balanced across
    /// their availability zones.
    pub subnets: Vec<String>,

    /// Key of the tag that protects an instance from scale-in: an instance carrying
    /// this tag, whatever its value, is never terminated. Default: `fleetscale:protected`.
    #[serde(default = "default_protection_tag_key")]
    pub protection_tag_key: String,

    /// Further tags put on every launched instance and its volumes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_tags: BTreeMap<String, String>,
}

/// A launch template, by id or by name (exactly one of the two), and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateRef {
    /// Template id, e.g. `lt-0abcd1234ef567890`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Template name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `$Latest`, `$Default` or a version number. Default: `$Latest`.
    #[serde(default = "default_launch_template_version")]
    pub version: String,
}

fn default_fleet_tag_key() -> String {
    DEFAULT_FLEET_TAG_KEY.to_owned()
}

fn default_protection_tag_key() -> String {
    DEFAULT_PROTECTION_TAG_KEY.to_owned()
}

fn default_launch_template_version() -> String {
    DEFAULT_LAUNCH_TEMPLATE_VERSION.to_owned()
}

/// One problem in an [`AwsConfig`], with the path of the field at fault relative to
/// the config (prefix it with the config's own path, e.g. `fleets[2].adapter.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl AwsConfig {
    /// A config with the defaults, for the given template and subnets.
    pub fn new(launch_template: LaunchTemplateRef, subnets: Vec<String>) -> Self {
        AwsConfig {
            region: None,
            profile: None,
            endpoint_url: None,
            fleet_tag_key: default_fleet_tag_key(),
            fleet_tag_value: None,
            launch_template,
            subnets,
            protection_tag_key: default_protection_tag_key(),
            extra_tags: BTreeMap::new(),
        }
    }

    /// The fleet tag's value for a fleet of this name.
    pub fn fleet_tag_value_for<'a>(&'a self, fleet_name: &'a str) -> &'a str {
        self.fleet_tag_value.as_deref().unwrap_or(fleet_name)
    }

    /// Every problem in the config, each naming its field; empty when valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |field: String, message: String| {
            problems.push(ConfigProblem { field, message });
        };

        connection_problems(
            self.region.as_deref(),
            self.profile.as_deref(),
            self.endpoint_url.as_deref(),
            &mut problem,
        );
        if let Err(why) = check_tag_key(&self.fleet_tag_key) {
            problem("fleet_tag_key".into(), why);
        }
        if let Some(value) = &self.fleet_tag_value
            && let Err(why) = check_tag_value(value, true)
        {
            problem("fleet_tag_value".into(), why);
        }
        if let Err(why) = check_tag_key(&self.protection_tag_key) {
            problem("protection_tag_key".into(), why);
        } else if self.protection_tag_key == self.fleet_tag_key {
            problem(
                "protection_tag_key".into(),
                "must differ from fleet_tag_key".into(),
            );
        }

        let template = &self.launch_template;
        match (&template.id, &template.name) {
            (Some(_), Some(_)) => problem(
                "launch_template".into(),
                "give either id or name, not both".into(),
            ),
            (None, None) => problem(
                "launch_template".into(),
                "give the template's id or its name".into(),
            ),
            (Some(id), None) if !is_aws_id(id, "lt-") => problem(
                "launch_template.id".into(),
                format!("{id:?} is not a launch template id (like \"lt-0abcd1234ef567890\")"),
            ),
            (None, Some(name)) if name.trim().is_empty() || name.len() > 128 => problem(
                "launch_template.name".into(),
                "must be 1 to 128 characters".into(),
            ),
            _ => {}
        }
        if !is_template_version(&template.version) {
            problem(
                "launch_template.version".into(),
                format!(
                    "{:?} is not a template version: use \"$Latest\", \"$Default\" or a version number",
                    template.version
                ),
            );
        }

        if self.subnets.is_empty() {
            problem("subnets".into(), "list at least one subnet".into());
        }
        for (index, subnet) in self.subnets.iter().enumerate() {
            if !is_aws_id(subnet, "subnet-") {
                problem(
                    format!("subnets[{index}]"),
                    format!("{subnet:?} is not a subnet id (like \"subnet-0abcd1234ef567890\")"),
                );
            } else if self
                .subnets
                .iter()
                .take(index)
                .any(|earlier| earlier == subnet)
            {
                problem(
                    format!("subnets[{index}]"),
                    format!("{subnet} is listed twice"),
                );
            }
        }

        for (key, value) in &self.extra_tags {
            let field = format!("extra_tags.{key:?}");
            if let Err(why) = check_tag_key(key) {
                problem(field, why);
            } else if key == &self.fleet_tag_key || key == &self.protection_tag_key {
                problem(
                    field,
                    "is set by fleetscale itself (the fleet or protection tag)".into(),
                );
            } else if let Err(why) = check_tag_value(value, false) {
                problem(field, why);
            }
        }
        if self.extra_tags.len() + 1 > MAX_TAGS {
            problem(
                "extra_tags".into(),
                format!(
                    "EC2 allows {MAX_TAGS} tags per instance; with the fleet tag this makes {}",
                    self.extra_tags.len() + 1
                ),
            );
        }

        problems
    }
}

fn is_region_name(region: &str) -> bool {
    // partition-style names: us-east-1, eu-central-2, us-gov-west-1, cn-north-1…
    let parts: Vec<&str> = region.split('-').collect();
    let Some((number, names)) = parts.split_last() else {
        return false;
    };
    names.len() >= 2
        && names
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && number.parse::<u32>().is_ok()
}

fn check_endpoint_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

fn check_tag_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.chars().count() > 128 {
        return Err("a tag key must be 1 to 128 characters".into());
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err("tag keys starting with \"aws:\" are reserved by AWS".into());
    }
    Ok(())
}

fn check_tag_value(value: &str, required: bool) -> Result<(), String> {
    if required && value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.chars().count() > 256 {
        return Err("a tag value must be at most 256 characters".into());
    }
    Ok(())
}

fn is_aws_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        (8..=17).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

fn is_template_version(version: &str) -> bool {
    version == "$Latest" || version == "$Default" || version.parse::<u64>().is_ok_and(|n| n >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> AwsConfig {
        AwsConfig::new(
            LaunchTemplateRef {
                id: None,
                name: Some("web".into()),
                version: DEFAULT_LAUNCH_TEMPLATE_VERSION.into(),
            },
            vec!["subnet-0123456789abcdef0".into(), "subnet-89abcdef".into()],
        )
    }

    fn fields(config: &AwsConfig) -> Vec<String> {
        config.validate().into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn defaults_apply_and_valid_config_has_no_problem() {
        let config: AwsConfig = toml_like(
            r#"{"launch_template": {"name": "web"}, "subnets": ["subnet-0123456789abcdef0"]}"#,
        );
        assert_eq!(config.fleet_tag_key, "fleetscale:fleet");
        assert_eq!(config.protection_tag_key, "fleetscale:protected");
        assert_eq!(config.launch_template.version, "$Latest");
        assert_eq!(config.fleet_tag_value_for("web"), "web");
        assert_eq!(config.validate(), vec![]);
        assert_eq!(valid().validate(), vec![]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<AwsConfig>(
            r#"{"launch_template": {"name": "web"}, "subnets": [], "subnet": "x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `subnet`"), "{err}");
        let err = serde_json::from_str::<AwsConfig>(
            r#"{"launch_template": {"name": "web", "verison": "1"}, "subnets": []}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `verison`"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut config = valid();
        config.region = Some("Europe".into());
        config.profile = Some(" ".into());
        config.endpoint_url = Some("localhost:5000".into());
        config.fleet_tag_key = "aws:fleet".into();
        config.fleet_tag_value = Some(String::new());
        config.protection_tag_key = String::new();
        config.launch_template = LaunchTemplateRef {
            id: Some("lt-0abc12345".into()),
            name: Some("web".into()),
            version: "latest".into(),
        };
        config.subnets = vec![
            "subnet-0abc12345".into(),
            "sn-1".into(),
            "subnet-0abc12345".into(),
        ];
        config.extra_tags.insert("aws:x".into(), "1".into());
        config.extra_tags.insert("team".into(), "x".repeat(300));
        assert_eq!(
            fields(&config),
            [
                "region",
                "profile",
                "endpoint_url",
                "fleet_tag_key",
                "fleet_tag_value",
                "protection_tag_key",
                "launch_template",
                "launch_template.version",
                "subnets[1]",
                "subnets[2]",
                "extra_tags.\"aws:x\"",
                "extra_tags.\"team\"",
            ]
        );
    }

    #[test]
    fn launch_template_needs_exactly_one_well_formed_reference() {
        let mut config = valid();
        config.launch_template.name = None;
        assert_eq!(fields(&config), ["launch_template"]);
        config.launch_template.id = Some("web".into());
        assert_eq!(fields(&config), ["launch_template.id"]);
        config.launch_template.id = Some("lt-0abcd1234ef567890".into());
        config.launch_template.version = "7".into();
        assert_eq!(fields(&config), Vec::<String>::new());
        config.launch_template.version = "0".into();
        assert_eq!(fields(&config), ["launch_template.version"]);
    }

    #[test]
    fn tags_set_by_fleetscale_cannot_be_overridden() {
        let mut config = valid();
        config
            .extra_tags
            .insert("fleetscale:fleet".into(), "other".into());
        config
            .extra_tags
            .insert("fleetscale:protected".into(), "yes".into());
        assert_eq!(
            fields(&config),
            [
                "extra_tags.\"fleetscale:fleet\"",
                "extra_tags.\"fleetscale:protected\""
            ]
        );
        let mut config = valid();
        config.protection_tag_key = config.fleet_tag_key.clone();
        assert_eq!(fields(&config), ["protection_tag_key"]);
        let mut config = valid();
        config.subnets.clear();
        assert_eq!(fields(&config), ["subnets"]);
        for n in 0..50 {
            config.extra_tags.insert(format!("k{n}"), "v".into());
        }
        config.subnets.push("subnet-0abc12345".into());
        assert_eq!(fields(&config), ["extra_tags"]);
    }

    #[test]
    fn endpoint_and_region_forms() {
        assert!(check_endpoint_url("http://127.0.0.1:5000").is_ok());
        assert!(check_endpoint_url("https://ec2.eu-west-1.amazonaws.com/").is_ok());
        assert!(check_endpoint_url("http:///path").is_err());
        assert!(is_region_name("us-gov-west-1"));
        assert!(is_region_name("eu-west-1"));
        assert!(!is_region_name("eu-west"));
        assert!(!is_region_name("EU-west-1"));
    }

    fn toml_like(json: &str) -> AwsConfig {
        serde_json::from_str(json).expect("config parses")
    }
}

/// How fleetscale finds one Auto Scaling group (`kind = "aws-asg"`). The group's own
/// launch template, subnets, min and max stay the group's: fleetscale sets only its
/// desired capacity and terminates the instances it chose. Region, profile, endpoint
/// and credentials as for [`AwsConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsgConfig {
    /// The Auto Scaling group's name.
    pub group: String,
    /// AWS region of the group. Default: the AWS default chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Named profile of the shared AWS config files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Endpoint for the Auto Scaling and STS calls (an emulator, a proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
}

impl AsgConfig {
    /// Every problem in the config, each naming its field; empty when valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let group = self.group.trim();
        // API_CreateAutoScalingGroup: a name of 1 to 255 characters.
        if group.is_empty() || self.group.chars().count() > 255 {
            problems.push(ConfigProblem {
                field: "group".into(),
                message: "must name the Auto Scaling group (1 to 255 characters)".into(),
            });
        }
        connection_problems(
            self.region.as_deref(),
            self.profile.as_deref(),
            self.endpoint_url.as_deref(),
            &mut |field, message| problems.push(ConfigProblem { field, message }),
        );
        problems
    }
}

/// Problems with the settings every AWS backend shares: region, profile, endpoint.
fn connection_problems(
    region: Option<&str>,
    profile: Option<&str>,
    endpoint_url: Option<&str>,
    problem: &mut impl FnMut(String, String),
) {
    if let Some(region) = region
        && !is_region_name(region)
    {
        problem(
            "region".into(),
            format!("{region:?} is not an AWS region name (like \"eu-west-1\")"),
        );
    }
    if let Some(profile) = profile
        && profile.trim().is_empty()
    {
        problem("profile".into(), "must not be empty".into());
    }
    if let Some(url) = endpoint_url
        && let Err(why) = check_endpoint_url(url)
    {
        problem("endpoint_url".into(), why);
    }
}

/// The error for a config with `problems`, or none.
pub(crate) fn refuse(
    what: &str,
    fleet_name: &str,
    problems: &[ConfigProblem],
) -> Result<(), crate::AdapterError> {
    if problems.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Err(crate::AdapterError::invalid(format!(
        "{what} config of fleet {fleet_name}: {}",
        list.join("; ")
    )))
}
