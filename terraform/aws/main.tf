data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394: only the first zone_count zones by name are used (local.zones); a zone AWS adds later sorts after them and changes nothing.
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  zones = slice(data.aws_availability_zones.available.names, 0, var.zone_count)

  # The tag that makes an instance part of the fleet, as the agent's policy expects it.
  fleet_tag_key = "fleetscale:fleet"

  # Fixed addresses in the first private subnet: Prometheus and the agents each need the
  # other's address in their config, the agents etcd's (with `high_availability`).
  monitor_ip  = cidrhost(aws_subnet.private[0].cidr_block, 10)
  agent_count = var.high_availability ? 2 : 1
  agent_ips   = [for i in range(local.agent_count) : cidrhost(aws_subnet.private[0].cidr_block, 11 + i)]
  etcd_ip     = cidrhost(aws_subnet.private[0].cidr_block, 20)

  # Session Manager needs its agent on the VM; Debian's images do not ship it, so it is
  # installed at first boot from AWS's regional download bucket.
  install_ssm_agent = "curl -fsSL --retry 5 -o /tmp/amazon-ssm-agent.deb https://s3.${var.region}.amazonaws.com/amazon-ssm-${var.region}/latest/debian_amd64/amazon-ssm-agent.deb && dpkg -i /tmp/amazon-ssm-agent.deb"

  prometheus_port = 9090
  grafana_port    = 3000
  agent_port      = 9910
  exporter_port   = 9113
  etcd_port       = 2379
}
