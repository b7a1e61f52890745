data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# The agent's identity: an instance profile. Its scaling permissions are exactly the
# least-privilege policy in fleetscale-asg-policy.json (the file the adapter's tests
# load). That policy compares the fleet tag of the group it resizes, and of the instances
# it marks as draining, with the role's own `fleetscale:fleet` tag, so the role carries
# the fleet's name as that tag.
resource "aws_iam_role" "agent" {
  name               = "${var.name}-agent"
  description        = "fleetscale agent: scales the ${var.fleet_name} fleet"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json

  tags = {
    "fleetscale:fleet" = var.fleet_name
  }
}

resource "aws_iam_role_policy" "agent_scaling" {
  name   = "fleetscale-asg"
  role   = aws_iam_role.agent.id
  policy = file("${path.module}/fleetscale-asg-policy.json")
}

# Draining on scale-in: read target health, deregister from the fleet's target groups
# (tagged with the fleet, as the group is).
resource "aws_iam_role_policy" "agent_draining" {
  name   = "fleetscale-drain"
  role   = aws_iam_role.agent.id
  policy = file("${path.module}/fleetscale-drain-policy.json")
}

# Session Manager: shells and port forwarding without SSH or open ports.
resource "aws_iam_role_policy_attachment" "agent_ssm" {
  role       = aws_iam_role.agent.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "agent" {
  name = "${var.name}-agent"
  role = aws_iam_role.agent.name
}

# Prometheus's identity: EC2 service discovery reads instances and zones.
resource "aws_iam_role" "monitor" {
  name               = "${var.name}-monitor"
  description        = "Prometheus of the fleetscale demo: EC2 service discovery"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "ec2_discovery" {
  statement {
    sid = "PrometheusEc2ServiceDiscovery"
    # Describe calls have no resource-level permissions.
    actions   = ["ec2:DescribeInstances", "ec2:DescribeAvailabilityZones"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "monitor_discovery" {
  name   = "prometheus-ec2-discovery"
  role   = aws_iam_role.monitor.id
  policy = data.aws_iam_policy_document.ec2_discovery.json
}

resource "aws_iam_role_policy_attachment" "monitor_ssm" {
  role       = aws_iam_role.monitor.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "monitor" {
  name = "${var.name}-monitor"
  role = aws_iam_role.monitor.name
}
