locals {
  ssm_forward = "aws ssm start-session --region ${var.region} --target ${aws_instance.monitor.id} --document-name AWS-StartPortForwardingSession"
  ssm_run     = "aws ssm send-command --region ${var.region} --instance-ids ${aws_instance.monitor.id} --document-name AWS-RunShellScript --query Command.CommandId --output text"
  ssm_agent   = "aws ssm start-session --region ${var.region} --target ${aws_instance.agent[0].id} --document-name AWS-StartInteractiveCommand"
}

output "prometheus_url" {
  description = "Prometheus, on your machine while `prometheus_tunnel_command` runs (nothing is exposed to the internet)."
  value       = "http://localhost:${local.prometheus_port}"
}

output "prometheus_tunnel_command" {
  description = "Forwards localhost:9090 to Prometheus through SSM Session Manager."
  value       = "${local.ssm_forward} --parameters '{\"portNumber\":[\"${local.prometheus_port}\"],\"localPortNumber\":[\"${local.prometheus_port}\"]}'"
}

output "grafana_url" {
  description = "Grafana with the fleetscale dashboard, on your machine while `grafana_tunnel_command` runs (enable_grafana)."
  value       = var.enable_grafana ? "http://localhost:${local.grafana_port}" : null
}

output "grafana_tunnel_command" {
  description = "Forwards localhost:3000 to Grafana through SSM Session Manager."
  value       = var.enable_grafana ? "${local.ssm_forward} --parameters '{\"portNumber\":[\"${local.grafana_port}\"],\"localPortNumber\":[\"${local.grafana_port}\"]}'" : null
}

output "agent_status_url" {
  description = "The (first) agent's health (each fleet's state as JSON) inside the VPC; only Prometheus's VM may reach it. `agent_status_command` prints it from your machine."
  value       = "http://${local.agent_ips[0]}:${local.agent_port}/healthz"
}

output "agent_addresses" {
  description = "Each agent's metrics, health and API address inside the VPC (two with `high_availability`)."
  value       = local.agent_targets
}

output "agent_instance_ids" {
  description = "Each agent VM's instance id, for `aws ssm start-session --target`."
  value       = aws_instance.agent[*].id
}

output "etcd_address" {
  description = "The etcd the agents coordinate through, inside the VPC (null without `high_availability`)."
  value       = var.high_availability ? "http://${local.etcd_ip}:${local.etcd_port}" : null
}

output "agent_status_command" {
  description = "Prints the agent's /healthz, from the agent's VM, through SSM Session Manager."
  value       = "${local.ssm_agent} --parameters '{\"command\":[\"curl -s http://127.0.0.1:${local.agent_port}/healthz\"]}'"
}

output "agent_journal_command" {
  description = "Follows the agent's journal (one line per decision) through SSM Session Manager."
  value       = "${local.ssm_agent} --parameters '{\"command\":[\"sudo journalctl -u fleetscale -f\"]}'"
}

output "agent_check_command" {
  description = "Runs `fleetscale check` on the agent's VM: the identity its instance profile authenticates as, and its reads of the Auto Scaling group and of its instances' drain marks (Auto Scaling has no DryRun: a refused change shows at the first one)."
  value       = "${local.ssm_agent} --parameters '{\"command\":[\"fleetscale check --config /etc/fleetscale/fleetscale.toml\"]}'"
}

output "load_start_command" {
  description = "Starts the load generator on the monitoring VM: the demo trace's shape, replayed against the load balancer (arguments in /etc/default/fleetscale-load there)."
  value       = "${local.ssm_run} --parameters '{\"commands\":[\"systemctl start fleetscale-load\"]}'"
}

output "load_stop_command" {
  description = "Stops the load generator."
  value       = "${local.ssm_run} --parameters '{\"commands\":[\"systemctl stop fleetscale-load\"]}'"
}

output "load_balancer_url" {
  description = "The fleet's internal load balancer (reachable from the monitoring VM)."
  value       = "http://${aws_lb.fleet.dns_name}/"
}

output "fleet_group_name" {
  description = "The fleet's Auto Scaling group, whose desired capacity fleetscale sets (`group` in the agent's config)."
  value       = aws_autoscaling_group.fleet.name
}

output "fleet_instances_command" {
  description = "Lists the fleet's instances as its Auto Scaling group sees them: lifecycle state, health, zone."
  value       = "aws autoscaling describe-auto-scaling-groups --region ${var.region} --auto-scaling-group-names ${aws_autoscaling_group.fleet.name} --query 'AutoScalingGroups[0].Instances[].[InstanceId,LifecycleState,HealthStatus,AvailabilityZone]' --output table"
}

output "fleet_targets_command" {
  description = "Lists the load balancer's targets and their states (`draining` while fleetscale drains an instance)."
  value       = "aws elbv2 describe-target-health --region ${var.region} --target-group-arn ${aws_lb_target_group.fleet.arn} --query 'TargetHealthDescriptions[].[Target.Id,TargetHealth.State,TargetHealth.Reason]' --output table"
}

output "agent_config" {
  description = "The agent's config as rendered into /etc/fleetscale/fleetscale.toml."
  value       = local.agent_config
}
