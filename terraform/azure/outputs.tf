locals {
  rg           = azurerm_resource_group.demo.name
  run_monitor  = "az vm run-command invoke --resource-group ${azurerm_resource_group.demo.name} --name ${azurerm_linux_virtual_machine.monitor.name} --command-id RunShellScript --query 'value[0].message' --output tsv --scripts"
  run_agent    = "az vm run-command invoke --resource-group ${azurerm_resource_group.demo.name} --name ${azurerm_linux_virtual_machine.agent[0].name} --command-id RunShellScript --query 'value[0].message' --output tsv --scripts"
  bastion_to   = var.enable_bastion ? "az network bastion tunnel --resource-group ${azurerm_resource_group.demo.name} --name ${azurerm_bastion_host.demo[0].name} --target-resource-id ${azurerm_linux_virtual_machine.monitor.id}" : null
  monitor_host = local.monitor_public_ip ? azurerm_public_ip.monitor[0].ip_address : (var.enable_bastion ? "localhost" : null)
}

output "prometheus_url" {
  description = "Prometheus: on the monitoring VM's public IP when operator_cidr is set (from that address only), else on localhost while `prometheus_tunnel_command` runs (enable_bastion), else only inside the network (null)."
  value       = local.monitor_host == null ? null : "http://${local.monitor_host}:${local.prometheus_port}"
}

output "prometheus_tunnel_command" {
  description = "Forwards localhost:9090 to Prometheus through Azure Bastion (enable_bastion)."
  value       = var.enable_bastion ? "${local.bastion_to} --resource-port ${local.prometheus_port} --port ${local.prometheus_port}" : null
}

output "grafana_url" {
  description = "Grafana with the fleetscale dashboard, reached like Prometheus (enable_grafana)."
  value       = var.enable_grafana && local.monitor_host != null ? "http://${local.monitor_host}:${local.grafana_port}" : null
}

output "grafana_tunnel_command" {
  description = "Forwards localhost:3000 to Grafana through Azure Bastion (enable_bastion)."
  value       = var.enable_bastion && var.enable_grafana ? "${local.bastion_to} --resource-port ${local.grafana_port} --port ${local.grafana_port}" : null
}

output "prometheus_query_command" {
  description = "Asks Prometheus for the fleet's request rate through the VM agent's run-command, with no network path to it."
  value       = "${local.run_monitor} \"curl -s 'http://localhost:${local.prometheus_port}/api/v1/query?query=sum(rate(nginx_http_requests_total%7Bjob%3D%22fleet%22%7D%5B2m%5D))'\""
}

output "agent_status_url" {
  description = "The (first) agent's health (each fleet's state as JSON) inside the network; only Prometheus's VM may reach it. `agent_status_command` prints it from your machine."
  value       = "http://${local.agent_ips[0]}:${local.agent_port}/healthz"
}

output "agent_addresses" {
  description = "Each agent's metrics, health and API address inside the network (two with `high_availability`)."
  value       = local.agent_targets
}

output "agent_vm_names" {
  description = "Each agent VM's name, for `az vm run-command invoke --name`."
  value       = azurerm_linux_virtual_machine.agent[*].name
}

output "etcd_address" {
  description = "The etcd the agents coordinate through, inside the network (null without `high_availability`)."
  value       = var.high_availability ? "http://${local.etcd_ip}:${local.etcd_port}" : null
}

output "agent_status_command" {
  description = "Prints the agent's /healthz, from the agent's VM, through the VM agent's run-command."
  value       = "${local.run_agent} \"curl -s http://127.0.0.1:${local.agent_port}/healthz\""
}

output "agent_journal_command" {
  description = "Prints the agent's latest journal lines (one per decision) through the VM agent's run-command."
  value       = "${local.run_agent} \"journalctl -u fleetscale -n 60 --no-pager\""
}

output "agent_check_command" {
  description = "Runs `fleetscale check` on the agent's VM: the managed identity it authenticates as, and whether its role grants each action the adapter needs."
  value       = "${local.run_agent} \"fleetscale check --config /etc/fleetscale/fleetscale.toml\""
}

output "load_start_command" {
  description = "Starts the load generator on the monitoring VM: the demo trace's shape, replayed against the load balancer (arguments in /etc/default/fleetscale-load there)."
  value       = "${local.run_monitor} \"systemctl start fleetscale-load\""
}

output "load_stop_command" {
  description = "Stops the load generator."
  value       = "${local.run_monitor} \"systemctl stop fleetscale-load\""
}

output "load_balancer_url" {
  description = "The fleet's internal load balancer (reachable from the monitoring VM)."
  value       = "http://${local.load_balancer_ip}/"
}

output "fleet_instances_command" {
  description = "Lists the scale set's instances as Azure sees them."
  value       = "az vmss list-instances --resource-group ${local.rg} --name ${azurerm_linux_virtual_machine_scale_set.fleet.name} --query '[].{id:instanceId, zone:zones[0], state:provisioningState, protected:protectionPolicy.protectFromScaleIn}' --output table"
}

output "agent_config" {
  description = "The agent's config as rendered into /etc/fleetscale/fleetscale.toml."
  value       = local.agent_config
}

output "admin_ssh_private_key" {
  description = "Private key of the VMs' admin user when it was generated here (no admin_ssh_public_key); for SSH through Bastion only."
  value       = var.admin_ssh_public_key == null ? tls_private_key.admin.private_key_openssh : null
  sensitive   = true
}
