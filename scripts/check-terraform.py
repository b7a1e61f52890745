#!/usr/bin/env python3
"""Checks the demo environments in terraform/ without a cloud and without `terraform init`.

    python3 scripts/check-terraform.py --fleetscale target/release/fleetscale

- every .tf file parses (python-hcl2), each environment pins Terraform >= 1.5 and its
  providers, uses no external module, and describes every variable and output;
- checkov reports no failed check on terraform/, and every skipped check says why beside
  the resource it skips;
- every templatefile() call is rendered the way Terraform would, from the .tf's own
  locals: variables take their defaults, file()/indent()/jsonencode() are evaluated, and
  what only exists after `apply` (ids, addresses) takes the sample values below. The
  templates use only `${name}` substitutions so that this renderer stays small. Then:
  the agent config passes `fleetscale check --offline`; each cloud-init document is YAML
  whose files are the rendered config and examples/fleetscale.service; each Prometheus
  config passes `promtool check config`; the load generator accepts its arguments;
- the AWS agent's instance profile holds exactly terraform/aws/fleetscale-asg-policy.json
  and fleetscale-drain-policy.json, the files the adapter's tests load, and its role
  carries the tag the policies compare; the rendered agent config scales the
  environment's Auto Scaling group (`kind = "aws-asg"`) and drains through the target
  group attached to that group; the group carries the compared tag with the role's
  value, propagated to its instances where an EC2 condition reads it, and so does the
  target group;
- examples/fleetscale.service is hardened and examples/grafana-dashboard.json graphs
  every metric of README.md's Metrics table.

Exit 0 when everything holds; 1 listing every problem; 3 when a tool is missing.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "pip install -r scripts/test-requirements.txt"

# Values that exist only after `terraform apply`, by the expression that yields them.
SAMPLES = {
    "aws": {
        # What the group's name renders to with the defaults; the check compares them.
        "aws_autoscaling_group.fleet.name": "fleetscale-demo-web",
        "aws_vpc.demo.id": "vpc-0a1b2c3d4e5f60718",
        "aws_lb.fleet.dns_name": "internal-fleetscale-demo-fleet-1234567890.eu-west-1.elb.amazonaws.com",
        "local.monitor_ip": "10.42.10.10",
        "local.agent_ips": ["10.42.10.11"],
        "local.agent_targets": ["10.42.10.11:9910"],
        "local.etcd_ip": "10.42.10.20",
        "aws_lb_target_group.fleet.arn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/fleetscale-demo-fleet/0123456789abcdef",
    },
    "azure": {
        "data.azurerm_subscription.current.subscription_id": "00000000-0000-4000-8000-000000000000",
        "azurerm_resource_group.demo.name": "fleetscale-demo",
        "azurerm_linux_virtual_machine_scale_set.fleet.name": "fleetscale-demo-web",
        "azurerm_user_assigned_identity.agent.client_id": "11111111-2222-4333-8444-555555555555",
        "azurerm_lb.fleet.frontend_ip_configuration[0].private_ip_address": "10.43.1.250",
        "local.monitor_ip": "10.43.2.10",
        "local.agent_ips": ["10.43.2.11"],
        "local.agent_targets": ["10.43.2.11:9910"],
        "local.etcd_ip": "10.43.2.20",
    },
}

# The same with `high_availability = true`: two agents and an etcd.
HIGH_AVAILABILITY = {
    "aws": {
        "local.agent_ips": ["10.42.10.11", "10.42.10.12"],
        "local.agent_targets": ["10.42.10.11:9910", "10.42.10.12:9910"],
    },
    "azure": {
        "local.agent_ips": ["10.43.2.11", "10.43.2.12"],
        "local.agent_targets": ["10.43.2.11:9910", "10.43.2.12:9910"],
    },
}

# Where each environment's rendered files are checked.
AGENT_CONFIG_TEMPLATE = "templates/fleetscale.toml.tftpl"
PROMETHEUS_TEMPLATE = "templates/prometheus.yml.tftpl"
AGENT_CLOUD_INIT = "../shared/cloud-init/agent.yaml.tftpl"
MONITOR_CLOUD_INIT = "../shared/cloud-init/monitor.yaml.tftpl"
FLEET_CLOUD_INIT = "../shared/cloud-init/fleet.yaml.tftpl"
ETCD_CLOUD_INIT = "../shared/cloud-init/etcd.yaml.tftpl"

UNIT_DIRECTIVES = [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("Restart", "on-failure"),
]

# The AWS agent's role holds exactly these policy files: scaling the Auto Scaling group
# (kind = "aws-asg"), and draining through the group's target group.
AWS_POLICY = "fleetscale-asg-policy.json"
AWS_DRAIN_POLICY = "fleetscale-drain-policy.json"
# Managed policies the agent's role may hold besides them.
AWS_AGENT_EXTRA_POLICIES = {"arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")

    def ok(self, message):
        print(f"ok    {message}", flush=True)


def need(module):
    try:
        return __import__(module)
    except ImportError:
        print(f"check-terraform: the Python module {module!r} is missing: {INSTALL_HINT}",
              file=sys.stderr)
        sys.exit(3)


# --- HCL -----------------------------------------------------------------------------------


def unquote(text):
    """python-hcl2 versions differ in whether keys and strings keep their quotes."""
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def unwrap(value):
    """Attributes come as one-element lists from some python-hcl2 versions."""
    while isinstance(value, list) and len(value) == 1 and isinstance(value[0], (dict, str, int, float)):
        value = value[0]
    return value


def parse_module(hcl2, module_dir, problems):
    """Every .tf of a module, parsed; None when one fails."""
    docs = {}
    for path in sorted(module_dir.glob("*.tf")):
        try:
            with open(path, encoding="utf-8") as handle:
                docs[path.name] = hcl2.load(handle)
        except Exception as error:  # the parsers raise lark's many error types
            problems.add(path, f"does not parse: {str(error).strip().splitlines()[0]}")
    return docs


def blocks(docs, kind):
    for doc in docs.values():
        for block in doc.get(kind, []) or []:
            yield block


def resources(docs, rtype):
    """{name: attributes} of every resource of a type."""
    found = {}
    for block in blocks(docs, "resource"):
        for kind, named in block.items():
            if unquote(kind) == rtype:
                for name, attrs in named.items():
                    found[unquote(name)] = attrs
    return found


def attr(attrs, name):
    return unquote(unwrap(attrs.get(name))) if isinstance(attrs, dict) else None


class Module:
    """An environment's parsed .tf files, and an evaluator for the expressions its
    templatefile() calls depend on."""

    def __init__(self, name, directory, docs, samples, variables=None):
        self.name = name
        # Variables set (as with -var) on top of their defaults; named in every report.
        self.variables = variables or {}
        self.variant = "".join(f" ({k} = {json.dumps(v)})" for k, v in self.variables.items())
        self.dir = directory
        self.docs = docs
        self.samples = samples
        self.locals = {}
        for block in blocks(docs, "locals"):
            for key, value in block.items():
                if not key.startswith("__"):
                    self.locals[key] = unwrap(value)
        self.defaults = {}
        for block in blocks(docs, "variable"):
            for name, spec in block.items():
                spec = unwrap(spec) if isinstance(spec, list) else spec
                if isinstance(spec, dict) and "default" in spec:
                    self.defaults[unquote(name)] = unwrap(spec["default"])
        self.defaults.update(self.variables)

    def path(self, literal):
        match = re.fullmatch(r'"\$\{path\.module\}/([^"]+)"', literal.strip())
        if not match:
            raise ValueError(f"a path must be written \"${{path.module}}/...\", not {literal}")
        return (self.dir / match.group(1)).resolve()

    def evaluate(self, expression):
        """The value of one HCL expression (the inside of `${...}`)."""
        expression = expression.strip()
        compact = re.sub(r"\s+", "", expression)
        if compact in self.samples:
            return self.samples[compact]
        # `var.flag ? a : b`, with a and b references or plain strings.
        choice = re.fullmatch(r'(var\.[A-Za-z0-9_]+)\s*\?\s*((?:local|var)\.[A-Za-z0-9_]+|"[^"$:]*")'
                              r'\s*:\s*((?:local|var)\.[A-Za-z0-9_]+|"[^"$:]*")', expression)
        if choice:
            flag = self.evaluate(choice.group(1))
            if not isinstance(flag, bool):
                raise ValueError(f"{choice.group(1)} is not a bool")
            return self.evaluate(choice.group(2) if flag else choice.group(3))
        call = re.fullmatch(r"([a-z0-9_]+)\((.*)\)", expression, re.S)
        if call:
            function, args = call.group(1), split_args(call.group(2))
            if function == "file" and len(args) == 1:
                return self.path(args[0]).read_text(encoding="utf-8")
            if function == "indent" and len(args) == 2:
                return self.evaluate(args[1]).replace("\n", "\n" + " " * int(args[0]))
            if function == "jsonencode" and len(args) == 1:
                return json.dumps(self.evaluate(args[0]), separators=(",", ":"))
            if function == "templatefile" and len(args) == 2:
                return self.templatefile(args[0], args[1])[0]
        ref = re.fullmatch(r"(var|local)\.([A-Za-z0-9_]+)", compact)
        if ref:
            table = self.defaults if ref.group(1) == "var" else self.locals
            if ref.group(2) not in table:
                raise ValueError(f"{compact}: no default and no sample value for it")
            return self.value(table[ref.group(2)])
        if re.fullmatch(r'"[^"$]*"', expression):
            return expression[1:-1]
        if re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", compact):
            return json.loads(compact)
        raise ValueError(f"cannot evaluate {expression!r}: add a sample value for it")

    def value(self, raw):
        """The value of an attribute as python-hcl2 gives it."""
        if isinstance(raw, bool) or isinstance(raw, (int, float)):
            return raw
        if isinstance(raw, dict):
            return {unquote(k): self.value(unwrap(v)) for k, v in raw.items()
                    if not k.startswith("__")}
        if isinstance(raw, list):
            return [self.value(v) for v in raw]
        if raw is None:
            return None
        text = unquote(raw)
        whole = re.fullmatch(r"\$\{(.*)\}", text, re.S)
        if whole and balanced(whole.group(1)):
            return self.evaluate(whole.group(1))
        return interpolate(text, lambda e: template_text(self.evaluate(e), e))

    def templatefile(self, path_literal, vars_expression):
        path = self.path(path_literal)
        variables = self.evaluate(vars_expression)
        if not isinstance(variables, dict):
            raise ValueError(f"templatefile({path.name}): its variables must be a map")
        return render(path.read_text(encoding="utf-8"), variables, path), path, variables


def balanced(text):
    """Whether `${...}`'s inside is one expression (braces balanced, no second `${`)."""
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def split_args(text):
    """Top-level comma-separated arguments of a call."""
    args, depth, quoted, current = [], 0, False, ""
    for i, char in enumerate(text):
        if char == '"' and (i == 0 or text[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and char in "([{":
            depth += 1
        elif not quoted and char in ")]}":
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            args.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        args.append(current.strip())
    return args


def interpolate(text, evaluate):
    """Replaces each `${...}` of an HCL string (whose expressions may hold strings)."""
    out, i = "", 0
    while i < len(text):
        if text.startswith("$${", i):
            out += "${"
            i += 3
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            out += evaluate(text[i + 2 : j - 1])
            i = j
        else:
            out += text[i]
            i += 1
    return out


def template_text(value, name):
    """A value as Terraform writes it into a template: strings, numbers and bools only."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"{name}: a {type(value).__name__} cannot be written into a template")


def render(template, variables, path):
    """Terraform's template syntax, restricted to `${name}` (and the `$${`, `%%{` escapes)."""
    out, i, used = [], 0, set()
    while i < len(template):
        if template.startswith("$${", i) or template.startswith("%%{", i):
            out.append(template[i + 1 : i + 3])
            i += 3
        elif template.startswith("${", i):
            end = template.find("}", i)
            name = template[i + 2 : end].strip()
            line = template.count("\n", 0, i) + 1
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{path.name}:{line}: only ${{name}} is supported, not ${{{name}}}")
            if name not in variables:
                raise ValueError(f"{path.name}:{line}: ${{{name}}} is not among the variables "
                                 f"Terraform passes ({', '.join(sorted(variables))})")
            out.append(template_text(variables[name], name))
            used.add(name)
            i = end + 1
        elif template.startswith("%{", i):
            line = template.count("\n", 0, i) + 1
            raise ValueError(f"{path.name}:{line}: template directives (%{{...}}) are not "
                             "used here; pass prepared values instead")
        else:
            out.append(template[i])
            i += 1
    unused = sorted(set(variables) - used)
    if unused:
        raise ValueError(f"{path.name}: variables passed but never used: {', '.join(unused)}")
    return "".join(out)


def templatefile_calls(module):
    """(path literal, variables expression) of every templatefile() in the module."""
    calls = []
    for name in sorted(module.docs):
        text = (module.dir / name).read_text(encoding="utf-8")
        for match in re.finditer(r"templatefile\(\s*(\"[^\"]+\")\s*,\s*([A-Za-z0-9_.]+)\s*\)", text):
            calls.append((name, match.group(1), match.group(2)))
    return calls


# --- Checks ----------------------------------------------------------------------------------


def check_module_shape(module, problems):
    where = f"terraform/{module.name}"
    versions = list(blocks(module.docs, "terraform"))
    required = [unwrap(b.get("required_version")) for b in versions if b.get("required_version")]
    if not any(isinstance(r, str) and re.search(r">=\s*1\.([5-9]|\d\d)", r) for r in required):
        problems.add(where, "terraform { required_version } must ask for >= 1.5")
    providers = {}
    for block in versions:
        for entry in block.get("required_providers", []) or []:
            providers.update(unwrap(entry))
    if not providers:
        problems.add(where, "no required_providers")
    for name, spec in providers.items():
        if name.startswith("__"):
            continue
        spec = unwrap(spec)
        if not (isinstance(spec, dict) and unwrap(spec.get("version"))):
            problems.add(where, f"provider {name} has no version constraint")
    for block in blocks(module.docs, "module"):
        problems.add(where, f"uses a module ({', '.join(block)}): keep the environment self-contained")
    for kind in ("variable", "output"):
        for block in blocks(module.docs, kind):
            for name, spec in block.items():
                spec = unwrap(spec) if isinstance(spec, list) else spec
                if not (isinstance(spec, dict) and unwrap(spec.get("description"))):
                    problems.add(where, f"{kind} {unquote(name)} has no description")
    problems.ok(f"{where}: Terraform >= 1.5, providers pinned ({', '.join(sorted(k for k in providers if not k.startswith('__')))}), "
                "no external modules, every variable and output described")


def check_templates(module, fleetscale, problems):
    """Renders every templatefile() and checks what each rendered file is for."""
    rendered, before = {}, len(problems.items)
    for tf, path_literal, vars_expression in templatefile_calls(module):
        where = f"terraform/{module.name}/{tf}"
        try:
            text, path, variables = module.templatefile(path_literal, vars_expression)
        except (OSError, ValueError) as error:
            problems.add(where, f"templatefile({path_literal}, {vars_expression}): {error}")
            continue
        rendered[os.path.relpath(path, module.dir.resolve())] = text
    for needed in (AGENT_CONFIG_TEMPLATE, PROMETHEUS_TEMPLATE, AGENT_CLOUD_INIT, MONITOR_CLOUD_INIT,
                   FLEET_CLOUD_INIT):
        if needed not in rendered:
            problems.add(f"terraform/{module.name}", f"no templatefile() renders {needed}")
    if len(problems.items) > before:
        return
    problems.ok(f"terraform/{module.name}: {len(templatefile_calls(module))} templatefile() calls render")

    check_agent_config(module, rendered[AGENT_CONFIG_TEMPLATE], fleetscale, problems)
    check_prometheus(module, rendered[PROMETHEUS_TEMPLATE], problems)
    check_cloud_init(module, rendered, problems)
    check_etcd(module, rendered, problems)


def check_etcd(module, rendered, problems):
    """The etcd VM's cloud-init: YAML, installing etcd-server, listening where the agents'
    config points; and the agents' config names that address (high availability)."""
    where = f"terraform/{module.name} -> {ETCD_CLOUD_INIT.replace('../', 'terraform/')}"
    if ETCD_CLOUD_INIT not in rendered:
        problems.add(where, "no templatefile() renders it")
        return
    parsed = cloud_init_files(need("yaml"), rendered[ETCD_CLOUD_INIT], where, problems)
    if parsed is None:
        return
    files, doc = parsed
    if "etcd-server" not in doc.get("packages", []):
        problems.add(where, "does not install etcd-server")
    settings = dict(re.findall(r'^(ETCD_[A-Z_]+)="([^"]*)"', files.get("/etc/default/etcd", ""), re.M))
    advertised = settings.get("ETCD_ADVERTISE_CLIENT_URLS", "")
    if not advertised or advertised not in settings.get("ETCD_LISTEN_CLIENT_URLS", ""):
        problems.add(where, f"/etc/default/etcd does not listen where it advertises: {settings}")
        return
    config = rendered[AGENT_CONFIG_TEMPLATE]
    if module.variables.get("high_availability") and f'endpoints = ["{advertised}"]' not in config:
        problems.add(where, f"the agents' config does not point at {advertised}:\n{config}")
        return
    targets = yaml_targets(rendered[PROMETHEUS_TEMPLATE])
    agents = len(module.samples["local.agent_ips"])
    if len(targets) != agents:
        problems.add(f"terraform/{module.name}/{PROMETHEUS_TEMPLATE}",
                     f"scrapes {targets} for {agents} agent(s)")
        return
    problems.ok(f"{where}{module.variant}: YAML, etcd-server listening on {advertised}; "
                f"Prometheus scrapes {agents} agent(s)")


def yaml_targets(prometheus_config):
    """The targets of the `fleetscale` scrape job."""
    doc = need("yaml").safe_load(prometheus_config)
    for job in doc.get("scrape_configs", []):
        if job.get("job_name") == "fleetscale":
            return [t for static in job.get("static_configs", []) for t in static.get("targets", [])]
    return []


def check_agent_config(module, config, fleetscale, problems):
    where = f"terraform/{module.name}/{AGENT_CONFIG_TEMPLATE}"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "fleetscale.toml"
        path.write_text(config, encoding="utf-8")
        result = subprocess.run([fleetscale, "check", "--offline", "--config", str(path)],
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().replace(str(path), "rendered config")
        problems.add(where, f"the rendered config fails `fleetscale check --offline` "
                            f"(exit {result.returncode}):\n{output}\n--- rendered config ---\n{config}")
        return
    coordinated = "[agent.coordination]" in config
    if coordinated != bool(module.variables.get("high_availability")):
        problems.add(where, f"the rendered config {'has' if coordinated else 'lacks'} [agent.coordination]"
                            f"{module.variant or ' with the defaults'}")
        return
    problems.ok(f"{where}{module.variant}: rendered with sample values, passes `fleetscale check --offline`")


def check_prometheus(module, config, problems):
    where = f"terraform/{module.name}/{PROMETHEUS_TEMPLATE}"
    promtool = shutil.which("promtool")
    if promtool is None:
        problems.add(where, "promtool is missing (Debian package prometheus; scripts/test.sh installs it)")
        return
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "prometheus.yml"
        path.write_text(config, encoding="utf-8")
        result = subprocess.run([promtool, "check", "config", str(path)],
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        problems.add(where, f"`promtool check config` fails:\n{(result.stdout + result.stderr).strip()}")
        return
    problems.ok(f"{where}: rendered, passes `promtool check config`")


def cloud_init_files(yaml, text, where, problems):
    if not text.startswith("#cloud-config\n"):
        problems.add(where, "does not start with #cloud-config")
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as error:
        problems.add(where, f"rendered, is not YAML: {error}")
        return None
    return {f["path"]: f.get("content", "") for f in doc.get("write_files", [])}, doc


def check_cloud_init(module, rendered, problems):
    yaml = need("yaml")
    repo = module.dir.parent.parent
    for template in (AGENT_CLOUD_INIT, MONITOR_CLOUD_INIT, FLEET_CLOUD_INIT):
        where = f"terraform/{module.name} -> {template.replace('../', 'terraform/')}"
        parsed = cloud_init_files(yaml, rendered[template], where, problems)
        if parsed is None:
            continue
        files, doc = parsed
        expected = {}
        if template == AGENT_CLOUD_INIT:
            expected = {
                "/etc/fleetscale/fleetscale.toml": rendered[AGENT_CONFIG_TEMPLATE],
                "/etc/systemd/system/fleetscale.service":
                    (repo / "examples/fleetscale.service").read_text(encoding="utf-8"),
                "/usr/local/sbin/fleetscale-install":
                    (repo / "terraform/shared/fleetscale-install.sh").read_text(encoding="utf-8"),
            }
        elif template == MONITOR_CLOUD_INIT:
            expected = {
                "/etc/prometheus/prometheus.yml": rendered[PROMETHEUS_TEMPLATE],
                "/usr/local/bin/fleetscale-load":
                    (repo / "terraform/shared/fleetscale-load.py").read_text(encoding="utf-8"),
                "/opt/fleetscale/demo-trace.csv":
                    (repo / "terraform/shared/demo-trace.csv").read_text(encoding="utf-8"),
                "/opt/fleetscale/grafana/fleetscale.json":
                    (repo / "examples/grafana-dashboard.json").read_text(encoding="utf-8"),
            }
        for path, content in expected.items():
            if path not in files:
                problems.add(where, f"writes no {path}")
            elif files[path].rstrip("\n") != content.rstrip("\n"):
                problems.add(where, f"{path} is not the file it should hold, byte for byte "
                                    "(indentation of the embedded file?)")
        if template == MONITOR_CLOUD_INIT:
            check_load_args(module, files.get("/etc/default/fleetscale-load", ""), where, problems)
        if not doc.get("runcmd"):
            problems.add(where, "has no runcmd")
    problems.ok(f"terraform/{module.name}: cloud-init documents are YAML and embed the rendered "
                "config, the unit, the install and load scripts, the trace and the dashboard")


def check_load_args(module, defaults_file, where, problems):
    match = re.search(r'^LOAD_ARGS="([^"]*)"', defaults_file, re.M)
    if not match:
        problems.add(where, "/etc/default/fleetscale-load sets no LOAD_ARGS")
        return
    repo = module.dir.parent.parent
    args = match.group(1).replace("/opt/fleetscale/demo-trace.csv",
                                  str(repo / "terraform/shared/demo-trace.csv")).split()
    result = subprocess.run(
        [sys.executable, str(repo / "terraform/shared/fleetscale-load.py"), *args, "--dry-run"],
        capture_output=True, text=True, check=False)
    rows = result.stdout.strip().splitlines()[1:]
    if result.returncode != 0 or not rows:
        problems.add(where, f"fleetscale-load refuses its arguments {match.group(1)!r}: "
                            f"{result.stderr.strip()}")
        return
    peak = max(float(r.split(",")[2]) for r in rows)
    problems.ok(f"terraform/{module.name}: load generator plans {len(rows)} rows, peak {peak:.0f} rps")


def flat(value):
    """A list attribute's items, however python-hcl2 nests them."""
    if isinstance(value, list):
        return [item for v in value for item in flat(v)]
    return [value]


def policy_tag_keys(policy, condition_key):
    """The tag keys a policy's conditions read as `<condition_key>/<key>`."""
    keys = set()
    for statement in policy.get("Statement", []):
        for operator in (statement.get("Condition") or {}).values():
            for key in operator:
                if key.startswith(condition_key + "/"):
                    keys.add(key[len(condition_key) + 1:])
    return keys


def role_of(attrs):
    match = re.fullmatch(r"\$\{aws_iam_role\.([a-z0-9_]+)\.(id|name)\}", attr(attrs, "role") or "")
    return match.group(1) if match else None


def check_aws_policy(module, problems):
    """The agent's instance profile holds exactly the policy files the adapter's tests
    load, and what their conditions compare is there: the role's tag, and the same tag
    on the group the agent scales (on its instances too) and the target group it drains
    through."""
    where = "terraform/aws"
    repo = module.dir.parent.parent
    before = len(problems.items)
    policies = {}
    for name in (AWS_POLICY, AWS_DRAIN_POLICY):
        try:
            policies[name] = json.loads((module.dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problems.add(f"{where}/{name}", f"unreadable: {error}")
    if len(policies) != 2:
        return

    role_policies = resources(module.docs, "aws_iam_role_policy")
    holders = {}
    for name in policies:
        expression = f'${{file("${{path.module}}/{name}")}}'
        users = [n for n, attrs in role_policies.items() if attr(attrs, "policy") == expression]
        if len(users) != 1:
            problems.add(where, f"exactly one aws_iam_role_policy must have policy = "
                                f"file(\"${{path.module}}/{name}\"); found {users}")
            return
        holders[name] = users[0]
    roles = {role_of(role_policies[user]) for user in holders.values()}
    if None in roles or len(roles) != 1:
        problems.add(where, f"aws_iam_role_policy {', '.join(holders.values())} must each name "
                            f"the same role of this module; they name {sorted(map(str, roles))}")
        return
    role = roles.pop()
    profiles = [name for name, attrs in resources(module.docs, "aws_iam_instance_profile").items()
                if re.fullmatch(rf"\$\{{aws_iam_role\.{role}\.(name|id)\}}", attr(attrs, "role") or "")]
    agents = [name for name, attrs in resources(module.docs, "aws_instance").items()
              if any(re.fullmatch(rf"\$\{{aws_iam_instance_profile\.{p}\.(name|id)\}}",
                                  attr(attrs, "iam_instance_profile") or "") for p in profiles)]
    if agents != ["agent"]:
        problems.add(where, f"the instance profile of role {role} must be the agent VM's "
                            f"(aws_instance.agent); used by {agents}")
    # Nothing else grants the role permissions, beyond Session Manager's.
    for rtype in ("aws_iam_role_policy", "aws_iam_role_policy_attachment"):
        for name, attrs in resources(module.docs, rtype).items():
            if role_of(attrs) != role or (rtype == "aws_iam_role_policy" and name in holders.values()):
                continue
            if rtype == "aws_iam_role_policy" or attr(attrs, "policy_arn") not in AWS_AGENT_EXTRA_POLICIES:
                problems.add(where, f"{rtype}.{name} adds permissions to the agent's role")
    # The policies compare request and resource tags with the role's own tags.
    role_tags = {unquote(k): module.value(unwrap(v)) for k, v in
                 (attr(resources(module.docs, "aws_iam_role")[role], "tags") or {}).items()
                 if not k.startswith("__")}
    principal_tags = set()
    for policy in policies.values():
        principal_tags |= set(re.findall(r"aws:PrincipalTag/([^}]+)\}", json.dumps(policy)))
    for key in sorted(principal_tags):
        if key not in role_tags:
            problems.add(where, f"the policies compare tags with aws:PrincipalTag/{key}, "
                                f"but aws_iam_role.{role} has no tag {key}")
    # The adapter's tests load the same files.
    sources = {p: p.read_text(encoding="utf-8")
               for d in ("adapters/tests", "tests") for p in (repo / d).rglob("*.rs")}
    tests = set()
    for name in policies:
        loading = {p.name for p, text in sources.items()
                   if f"terraform/aws/{name}" in text or f'"{name}"' in text}
        if not loading:
            problems.add(where, f"no test under adapters/tests or tests/ loads terraform/aws/{name}")
        tests |= loading
    if len(problems.items) != before:
        return
    problems.ok(f"{where}: the agent's instance profile (role {role}, tagged "
                f"{', '.join(sorted(principal_tags))}) holds exactly {AWS_POLICY} and "
                f"{AWS_DRAIN_POLICY}, which {', '.join(sorted(tests))} load too")
    check_aws_fleet(module, policies, role_tags, problems)


def check_aws_fleet(module, policies, role_tags, problems):
    """The rendered config scales this module's Auto Scaling group and drains through the
    target group attached to it; both carry the tags the policies compare, with the
    role's values, the group's propagated to the instances where EC2 conditions read them."""
    where = "terraform/aws"
    before = len(problems.items)
    calls = [(p, v) for _, p, v in templatefile_calls(module)
             if module.path(p) == (module.dir / AGENT_CONFIG_TEMPLATE).resolve()]
    if len(calls) != 1:
        problems.add(where, f"{len(calls)} templatefile() calls render {AGENT_CONFIG_TEMPLATE}, not one")
        return
    try:
        text = module.templatefile(*calls[0])[0]
        config = need("tomllib").loads(text)
    except (OSError, ValueError) as error:
        problems.add(f"{where}/{AGENT_CONFIG_TEMPLATE}", f"cannot render or read it: {error}")
        return
    groups = resources(module.docs, "aws_autoscaling_group")
    target_groups = resources(module.docs, "aws_lb_target_group")
    fleets = config.get("fleets", [])
    if not fleets:
        problems.add(f"{where}/{AGENT_CONFIG_TEMPLATE}", "configures no fleet")
    described = []
    for fleet in fleets:
        adapter, drain = fleet.get("adapter", {}), fleet.get("drain", {})
        name = f"fleet {fleet.get('name')!r}"
        if adapter.get("kind") != "aws-asg":
            problems.add(where, f"{name} has kind = {adapter.get('kind')!r}: the demo's fleet is "
                                "its Auto Scaling group (kind = \"aws-asg\")")
            continue
        group = [n for n, attrs in groups.items()
                 if module.value(unwrap(attrs.get("name"))) == adapter.get("group")]
        if len(group) != 1:
            problems.add(where, f"{name}'s group {adapter.get('group')!r} is not the name of one "
                                f"aws_autoscaling_group (those render to "
                                f"{[module.value(unwrap(a.get('name'))) for a in groups.values()]})")
            continue
        group = group[0]
        attrs = groups[group]
        tags = {}
        for block in flat(attrs.get("tag")):
            if isinstance(block, dict):
                key = module.value(unwrap(block.get("key")))
                tags[key] = (module.value(unwrap(block.get("value"))),
                             unwrap(block.get("propagate_at_launch")) is True)
        compared = {"autoscaling:ResourceTag": False, "ec2:ResourceTag": True}
        for condition, propagated in compared.items():
            for key in sorted(policy_tag_keys(policies[AWS_POLICY], condition)):
                value, propagates = tags.get(key, (None, False))
                if value != role_tags.get(key):
                    problems.add(where, f"aws_autoscaling_group.{group} must carry the tag {key} = "
                                        f"{role_tags.get(key)!r} (as the role does; {AWS_POLICY} "
                                        f"compares {condition}/{key}); it has {value!r}")
                elif propagated and not propagates:
                    problems.add(where, f"aws_autoscaling_group.{group}'s tag {key} needs "
                                        f"propagate_at_launch = true: {AWS_POLICY} compares "
                                        f"{condition}/{key} on its instances")
        arn = drain.get("target_group_arn")
        if arn is None:
            problems.add(where, f"{name} has no [fleets.drain] target_group_arn")
            continue
        target_group = [n for n in target_groups if module.samples.get(f"aws_lb_target_group.{n}.arn") == arn]
        if len(target_group) != 1:
            problems.add(where, f"{name} drains through {arn!r}, which is not the ARN of one "
                                "aws_lb_target_group here (by the sample values)")
            continue
        target_group = target_group[0]
        attached = flat(attrs.get("target_group_arns"))
        if f"${{aws_lb_target_group.{target_group}.arn}}" not in attached:
            problems.add(where, f"aws_autoscaling_group.{group} must list aws_lb_target_group."
                                f"{target_group}.arn in target_group_arns (the group registers its "
                                f"instances there, where {name} drains them); it lists {attached}")
        tg_tags = {unquote(k): module.value(unwrap(v)) for k, v in
                   (attr(target_groups[target_group], "tags") or {}).items() if not k.startswith("__")}
        for key in sorted(policy_tag_keys(policies[AWS_DRAIN_POLICY], "aws:ResourceTag")):
            if tg_tags.get(key) != role_tags.get(key):
                problems.add(where, f"aws_lb_target_group.{target_group} must carry the tag {key} = "
                                    f"{role_tags.get(key)!r} (as the role does; {AWS_DRAIN_POLICY} "
                                    f"compares aws:ResourceTag/{key}); it has {tg_tags.get(key)!r}")
        described.append(f"{name}: group aws_autoscaling_group.{group} "
                         f"(tagged {', '.join(sorted(tags))}), drained through "
                         f"aws_lb_target_group.{target_group} attached to it")
    if len(problems.items) == before:
        problems.ok(f"{where}: {'; '.join(described)}; both carry the tags the policies compare")


README_SECTIONS = ["## Cost", "## Prerequisites", "## Apply", "## Watch it scale", "## Destroy"]


def check_readme(module, problems):
    """The README walks through prerequisites, apply, watching and destroy, prices its
    assumptions with a date, and names only outputs that exist."""
    where = f"terraform/{module.name}/README.md"
    path = module.dir / "README.md"
    if not path.is_file():
        problems.add(where, "missing")
        return
    text = path.read_text(encoding="utf-8")
    for section in README_SECTIONS:
        if not re.search(rf"^{re.escape(section)}\b", text, re.M):
            problems.add(where, f"has no {section!r} section")
    if not re.search(r"\b20\d\d-\d\d-\d\d\b", text):
        problems.add(where, "the cost estimate must say when its prices were assumed (a date)")
    outputs = {unquote(name) for block in blocks(module.docs, "output") for name in block}
    named = set(re.findall(r"terraform output (?:-raw )?([a-z_]+)", text))
    for name in sorted(named - outputs):
        problems.add(where, f"names `terraform output {name}`, which is not an output")
    problems.ok(f"{where}: {', '.join(s[3:] for s in README_SECTIONS)}; "
                f"the {len(named)} outputs it names exist")


def check_checkov(repo, problems):
    checkov = shutil.which("checkov")
    if checkov is None:
        print(f"check-terraform: checkov is missing: {INSTALL_HINT}", file=sys.stderr)
        sys.exit(3)
    started = time.monotonic()
    result = subprocess.run(
        [checkov, "-d", "terraform", "--output", "json", "--skip-download", "--compact"],
        cwd=repo, capture_output=True, text=True, check=False)
    try:
        reports = json.loads(result.stdout)
    except ValueError:
        problems.add("checkov", f"no JSON report (exit {result.returncode}): "
                                f"{(result.stderr or result.stdout).strip()[-2000:]}")
        return
    reports = reports if isinstance(reports, list) else [reports]
    passed = failed = skipped = 0
    for report in reports:
        summary = report.get("summary", {})
        if summary.get("parsing_errors"):
            problems.add("checkov", f"{report.get('check_type')}: {summary['parsing_errors']} files did not parse")
        results = report.get("results", {})
        passed += len(results.get("passed_checks", []))
        for check in results.get("failed_checks", []):
            failed += 1
            problems.add("checkov", f"{check['check_id']} failed on {check['resource']} "
                                    f"(terraform{check['file_path']}:{check['file_line_range'][0]}): {check['check_name']}")
        for check in results.get("skipped_checks", []):
            skipped += 1
            why = (check.get("check_result", {}).get("suppress_comment") or "").strip()
            if not why or why.lower() == "no comment provided":
                problems.add("checkov", f"{check['check_id']} is skipped on {check['resource']} "
                                        "without a reason: write #checkov:skip=ID: why")
    if result.returncode not in (0, 1):
        problems.add("checkov", f"exit {result.returncode}: {result.stderr.strip()[-2000:]}")
    if not passed:
        problems.add("checkov", "ran no check at all")
    problems.ok(f"checkov: {passed} passed, {failed} failed, {skipped} skipped with a reason "
                f"({time.monotonic() - started:.1f}s)")


def check_unit(repo, problems):
    where = "examples/fleetscale.service"
    text = (repo / where).read_text(encoding="utf-8")
    settings = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line.strip())
        if match:
            settings.setdefault(match.group(1), []).append(match.group(2).strip())
    for key, value in UNIT_DIRECTIVES:
        if value not in settings.get(key, []):
            problems.add(where, f"needs {key}={value}")
    if "yes" not in settings.get("DynamicUser", []) and not settings.get("User"):
        problems.add(where, "needs DynamicUser=yes or a dedicated User=")
    if "/etc/fleetscale/fleetscale.toml" not in " ".join(settings.get("ExecStart", [])):
        problems.add(where, "ExecStart must run the config the demos render, /etc/fleetscale/fleetscale.toml")
    analyze = shutil.which("systemd-analyze")
    if analyze:
        with tempfile.TemporaryDirectory() as scratch:
            stub = Path(scratch) / "fleetscale"
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
            unit = Path(scratch) / "fleetscale.service"
            unit.write_text(text.replace("/usr/local/bin/fleetscale", str(stub)))
            result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                                    check=False)
        if result.returncode != 0 or result.stderr.strip():
            problems.add(where, f"systemd-analyze verify: {(result.stdout + result.stderr).strip()}")
    problems.ok(f"{where}: hardened (DynamicUser, ProtectSystem=strict, NoNewPrivileges, "
                f"Restart=on-failure){', verified by systemd-analyze' if analyze else ''}")


def check_dashboard(repo, problems):
    where = "examples/grafana-dashboard.json"
    try:
        dashboard = json.loads((repo / where).read_text(encoding="utf-8"))
    except ValueError as error:
        problems.add(where, f"not JSON: {error}")
        return
    queried = set()
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            queried.update(re.findall(r"\b(fleetscale_[a-z_]+?)(?:_bucket|_sum|_count)?\b",
                                      target.get("expr", "")))
    readme = (repo / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(fleetscale_[a-z_]+)` \|", readme, re.M))
    if not documented:
        problems.add("README.md", "no Metrics table rows (| `fleetscale_...` |) found")
    for name in sorted(documented - queried):
        problems.add(where, f"no panel graphs {name} (README.md's Metrics table)")
    for name in sorted(queried - documented):
        problems.add(where, f"queries {name}, which README.md's Metrics table does not list")
    problems.ok(f"{where}: graphs all {len(documented)} metrics of README.md's Metrics table")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleetscale", required=True, help="the fleetscale binary (with the aws and azure features)")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    hcl2 = need("hcl2")
    problems = Problems()
    fleetscale = str(Path(args.fleetscale).resolve())
    if not os.access(fleetscale, os.X_OK):
        print(f"check-terraform: {fleetscale} is not an executable fleetscale", file=sys.stderr)
        return 3

    started = time.monotonic()
    tf_files = sorted((repo / "terraform").rglob("*.tf"))
    modules = {}
    for name in ("aws", "azure"):
        directory = repo / "terraform" / name
        if not directory.is_dir():
            problems.add("terraform", f"no {name}/ environment")
            continue
        docs = parse_module(hcl2, directory, problems)
        modules[name] = Module(name, directory, docs, SAMPLES[name])
    stray = [p for p in tf_files if p.parent.name not in modules]
    for path in stray:
        problems.add(path.relative_to(repo), "a .tf outside terraform/aws and terraform/azure")
    if problems.items:
        return report(problems, started)
    problems.ok(f"terraform/: {len(tf_files)} .tf files parse")

    for module in modules.values():
        check_module_shape(module, problems)
        check_templates(module, fleetscale, problems)
        check_readme(module, problems)
        # The same environment with its second agent and its etcd.
        if "high_availability" not in module.defaults:
            problems.add(f"terraform/{module.name}", "has no high_availability variable")
            continue
        two = Module(module.name, module.dir, module.docs,
                     {**SAMPLES[module.name], **HIGH_AVAILABILITY[module.name]},
                     {"high_availability": True})
        check_templates(two, fleetscale, problems)
    check_aws_policy(modules["aws"], problems)
    check_unit(repo, problems)
    check_dashboard(repo, problems)
    check_checkov(repo, problems)
    return report(problems, started)


def report(problems, started):
    elapsed = time.monotonic() - started
    if problems.items:
        print(f"\n{len(problems.items)} problem{'s' if len(problems.items) != 1 else ''} "
              f"({elapsed:.1f}s):", file=sys.stderr)
        for item in problems.items:
            print(f"  - {item}", file=sys.stderr)
        return 1
    print(f"\nterraform checks passed ({elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
