data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394: only the first zone_count zones by name are used (local.zones); a zone AWS adds later sorts after them and changes nothing.
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

data "aws_caller_identity" "current" {}

# The newest official Debian 12 image (Debian's own AWS account).
data "aws_ami" "debian" {
  most_recent = true
  owners      = ["136693071363"]

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  zones  = slice(data.aws_availability_zones.available.names, 0, var.zone_count)
  ami_id = coalesce(var.ami_id, data.aws_ami.debian.id)

  # The tag that makes an instance part of the fleet, as the agent's policy expects it.
  fleet_tag_key = "fleetscale:fleet"

  # Fixed addresses in the first private subnet: Prometheus and the agent each need the
  # other's address in their config.
  monitor_ip = cidrhost(aws_subnet.private[0].cidr_block, 10)
  agent_ip   = cidrhost(aws_subnet.private[0].cidr_block, 11)

  # Session Manager needs its agent on the VM; Debian's images do not ship it, so it is
  # installed at first boot from AWS's regional download bucket.
  install_ssm_agent = "curl -fsSL --retry 5 -o /tmp/amazon-ssm-agent.deb https://s3.${var.region}.amazonaws.com/amazon-ssm-${var.region}/latest/debian_amd64/amazon-ssm-agent.deb && dpkg -i /tmp/amazon-ssm-agent.deb"

  prometheus_port = 9090
  grafana_port    = 3000
  agent_port      = 9910
  exporter_port   = 9113
}
