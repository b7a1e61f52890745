# Who may reach what. Nothing accepts SSH: shells and tunnels go through SSM Session
# Manager. The agent's metrics port accepts only Prometheus's VM; the fleet's exporter too.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Internal load balancer in front of the fleet"
  vpc_id      = aws_vpc.demo.id

  tags = { Name = "${var.name}-alb" }
}

resource "aws_security_group" "fleet" {
  name        = "${var.name}-fleet"
  description = "Fleet instances: web service behind the load balancer, exporter for Prometheus"
  vpc_id      = aws_vpc.demo.id

  tags = { Name = "${var.name}-fleet" }
}

resource "aws_security_group" "monitor" {
  name        = "${var.name}-monitor"
  description = "Prometheus, Grafana and the load generator"
  vpc_id      = aws_vpc.demo.id

  tags = { Name = "${var.name}-monitor" }
}

resource "aws_security_group" "agent" {
  name        = "${var.name}-agent"
  description = "The fleetscale agent"
  vpc_id      = aws_vpc.demo.id

  tags = { Name = "${var.name}-agent" }
}

# Load balancer: requests from the load generator in, to the fleet out.

resource "aws_vpc_security_group_ingress_rule" "alb_from_load_generator" {
  #checkov:skip=CKV_AWS_260: the source is a security group (referenced_security_group_id), not 0.0.0.0/0; the check reads only CIDR sources for this resource type.
  security_group_id            = aws_security_group.alb.id
  description                  = "HTTP from the load generator"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.monitor.id
}

resource "aws_vpc_security_group_egress_rule" "alb_to_fleet" {
  security_group_id            = aws_security_group.alb.id
  description                  = "HTTP to the fleet"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.fleet.id
}

# Fleet.

resource "aws_vpc_security_group_ingress_rule" "fleet_from_alb" {
  #checkov:skip=CKV_AWS_260: the source is a security group (referenced_security_group_id), not 0.0.0.0/0; the check reads only CIDR sources for this resource type.
  security_group_id            = aws_security_group.fleet.id
  description                  = "HTTP and health checks from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.alb.id
}

resource "aws_vpc_security_group_ingress_rule" "fleet_exporter_from_prometheus" {
  security_group_id            = aws_security_group.fleet.id
  description                  = "Request counter scraped by Prometheus"
  ip_protocol                  = "tcp"
  from_port                    = local.exporter_port
  to_port                      = local.exporter_port
  referenced_security_group_id = aws_security_group.monitor.id
}

# Agent.

resource "aws_vpc_security_group_ingress_rule" "agent_metrics_from_prometheus" {
  security_group_id            = aws_security_group.agent.id
  description                  = "Agent metrics and health, scraped by Prometheus only"
  ip_protocol                  = "tcp"
  from_port                    = local.agent_port
  to_port                      = local.agent_port
  referenced_security_group_id = aws_security_group.monitor.id
}

resource "aws_vpc_security_group_egress_rule" "agent_to_prometheus" {
  security_group_id            = aws_security_group.agent.id
  description                  = "Signal queries to Prometheus"
  ip_protocol                  = "tcp"
  from_port                    = local.prometheus_port
  to_port                      = local.prometheus_port
  referenced_security_group_id = aws_security_group.monitor.id
}

# Monitor.

resource "aws_vpc_security_group_ingress_rule" "prometheus_from_agent" {
  security_group_id            = aws_security_group.monitor.id
  description                  = "Signal queries from the agent"
  ip_protocol                  = "tcp"
  from_port                    = local.prometheus_port
  to_port                      = local.prometheus_port
  referenced_security_group_id = aws_security_group.agent.id
}

resource "aws_vpc_security_group_egress_rule" "prometheus_to_exporters" {
  security_group_id            = aws_security_group.monitor.id
  description                  = "Scrapes of the fleet's exporters"
  ip_protocol                  = "tcp"
  from_port                    = local.exporter_port
  to_port                      = local.exporter_port
  referenced_security_group_id = aws_security_group.fleet.id
}

resource "aws_vpc_security_group_egress_rule" "prometheus_to_agent" {
  security_group_id            = aws_security_group.monitor.id
  description                  = "Scrapes of the agent's metrics"
  ip_protocol                  = "tcp"
  from_port                    = local.agent_port
  to_port                      = local.agent_port
  referenced_security_group_id = aws_security_group.agent.id
}

resource "aws_vpc_security_group_egress_rule" "load_to_alb" {
  security_group_id            = aws_security_group.monitor.id
  description                  = "Load generator to the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = 80
  to_port                      = 80
  referenced_security_group_id = aws_security_group.alb.id
}

# Outbound web access through the NAT gateway: Debian packages (HTTP), AWS APIs, SSM,
# Grafana's repository and, when the agent is built from git, rustup, crates.io and git.
locals {
  outbound_web = {
    for pair in setproduct(concat(["fleet", "monitor", "agent"], var.high_availability ? ["etcd"] : []), [80, 443]) :
    "${pair[0]}-${pair[1]}" => { group = pair[0], port = pair[1] }
  }
  security_group_ids = {
    fleet   = aws_security_group.fleet.id
    monitor = aws_security_group.monitor.id
    agent   = aws_security_group.agent.id
    etcd    = one(aws_security_group.etcd[*].id)
  }
}

resource "aws_vpc_security_group_egress_rule" "outbound_web" {
  for_each = local.outbound_web

  security_group_id = local.security_group_ids[each.value.group]
  description       = "Outbound ${each.value.port == 80 ? "HTTP (Debian packages)" : "HTTPS (AWS APIs, SSM, packages)"} through the NAT gateway"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = "0.0.0.0/0"
}
